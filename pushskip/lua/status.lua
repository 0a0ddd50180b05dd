-- Where `me` stands, read at one moment (store.py: Store.status), in one call
-- instead of a MULTI of five reads: the app's side of a MULTI costs twice the
-- CPU of a script call, and every socket open and status poll makes one.
-- ARGV[1] me. Returns {match JSON or false, queued 0/1, last seq or false,
-- epoch value or false, banned 0/1} (false arrives as nil).
local me = ARGV[1]
return {
  redis.call('GET', K_MATCH .. me),
  redis.call('ZSCORE', K_QUEUE, me) and 1 or 0,
  redis.call('GET', K_SEQ .. me),
  redis.call('GET', K_EPOCH .. me),
  redis.call('EXISTS', K_BANNED .. me),
}
