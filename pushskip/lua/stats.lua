-- Counts over every process for the server API's stats (changes nothing but
-- the room index's entries older than a match can live).
-- ARGV[1] stale ms (a waiting user not seen for this long is not counted).
-- Returns JSON {waiting, matched, sockets, processes}.
local stale_ms = tonumber(ARGV[1])
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', K_ROOMS, '-inf', now - MATCH_TTL * 1000)
local procs = redis.call('ZRANGEBYSCORE', K_PRESENCE_PROCS, '(' .. now, '+inf')
local sockets = 0
if #procs > 0 then
  for _, n in ipairs(redis.call('HMGET', K_PRESENCE_COUNTS, unpack(procs))) do
    sockets = sockets + (tonumber(n) or 0)
  end
end
return cjson.encode({
  waiting = redis.call('ZCOUNT', K_QUEUE_SEEN, now - stale_ms, '+inf'),
  matched = 2 * redis.call('ZCARD', K_ROOMS),
  sockets = sockets,
  processes = #procs,
})
