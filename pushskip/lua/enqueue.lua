-- Enqueue `me` and pair the two earliest waiting users that may meet (often
-- `me` and whoever waited longest). ARGV[1] me, ARGV[2] room name to use if a
-- pair is made, ARGV[3] stale_ms, ARGV[4] me's client address, ARGV[5] most
-- users one address may have waiting, ARGV[6] enqueues one address may make a
-- second (0: no limit), ARGV[7] the grace (ms) to mark `me` present with, or 0
-- (presence.py, claim_touch; not on a refusal).
-- Returns JSON {status = 'matched', match = {...}}, {status = 'waiting'},
-- {status = 'limited'} (nothing written: the address has too many waiting),
-- {status = 'rate-limited'} (nothing written: it enqueues too fast), or
-- {status = 'banned'} (nothing written: the app's backend banned `me`).
-- Idempotent: a matched user gets their match back, a waiting one keeps their place.
local me, room, stale_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local address, max_waiting, rate = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local present_ms = tonumber(ARGV[7]) or 0
local now = now_ms()
local raw = redis.call('GET', K_MATCH .. me)
if raw then
  mark_present(me, present_ms, now)
  return cjson.encode({status = 'matched', match = match_view(cjson.decode(raw), me)})
end
local m = enqueue_and_pair(me, room, now, stale_ms, address, max_waiting, rate)
if m == 'limited' or m == 'banned' or m == 'rate-limited' then
  return cjson.encode({status = m})
end
mark_present(me, present_ms, now)
if m then return cjson.encode({status = 'matched', match = m}) end
return cjson.encode({status = 'waiting'})
