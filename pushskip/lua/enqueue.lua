-- Enqueue `me`, pairing them at once when a live candidate waits.
-- ARGV[1] me, ARGV[2] room name to use if a pair is made, ARGV[3] stale_ms.
-- Returns JSON {status = 'matched', match = {...}} or {status = 'waiting'}.
-- Idempotent: a matched user gets their match back, a waiting one keeps their place.
local me, room, stale_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local raw = redis.call('GET', K_MATCH .. me)
if raw then
  return cjson.encode({status = 'matched', match = match_view(cjson.decode(raw), me)})
end
local m = enqueue_and_pair(me, room, now_ms(), stale_ms)
if m then return cjson.encode({status = 'matched', match = m}) end
return cjson.encode({status = 'waiting'})
