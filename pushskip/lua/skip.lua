-- `me` skips their partner, in one atomic step (API.md, Skip).
-- ARGV[1] me, ARGV[2] '1' to requeue me, ARGV[3] room name for a new pair,
-- ARGV[4] stale_ms, ARGV[5] rematch cooldown seconds, ARGV[6] me's client
-- address, ARGV[7] most users one address may have waiting (past it, the skip
-- still ends the match but `me` is not requeued: status 'idle'), ARGV[8]
-- enqueues one address may make a second (past it, likewise not requeued),
-- ARGV[9] the grace (ms) to mark `me` present with, or 0 (presence.py, claim_touch).
-- Returns JSON {skipped = false} with no match, else {skipped = true,
-- roomName, partnerId, status = 'idle'|'waiting'|'matched', match = new match
-- or absent}. Both users skipping at once: the first script ends the match,
-- the second finds no match:{me} and returns skipped = false, so each gets one
-- partner-skipped at most.
local me, requeue, new_room = ARGV[1], ARGV[2] == '1', ARGV[3]
local stale_ms, cooldown = tonumber(ARGV[4]), tonumber(ARGV[5])
local address, max_waiting, rate = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
mark_present(me, tonumber(ARGV[9]) or 0, now)
local room, other = end_match(me, 'skipped', me, now)
if not room then return cjson.encode({skipped = false}) end
redis.call('SET', K_PRE_SKIP .. me, room, 'EX', PRE_SKIP_TTL)
redis.call('SET', K_SKIP_IN_PROGRESS .. me, room, 'EX', SKIP_IN_PROGRESS_TTL)
redis.call('SET', K_SKIP_IN_PROGRESS .. other, room, 'EX', SKIP_IN_PROGRESS_TTL)
redis.call('SET', K_FORCE_DISCONNECT .. other, room, 'EX', FORCE_DISCONNECT_TTL)
redis.call('SET', K_ROOM_DELETED .. room, 'true', 'EX', ROOM_DELETED_TTL)
redis.call('SET', K_SKIP_NOTIFICATION .. other,
  cjson.encode({skippedBy = me, timestamp = now, roomName = room}),
  'EX', SKIP_NOTIFICATION_TTL)
redis.call('SET', cooldown_key(me, other), room, 'EX', cooldown)
append_event(other, {type = 'partner-skipped', roomName = room, skippedBy = me}, now)
local reply = {skipped = true, roomName = room, partnerId = other, status = 'idle'}
if requeue then
  local m = enqueue_and_pair(me, new_room, now, stale_ms, address, max_waiting, rate)
  if m == 'limited' or m == 'banned' or m == 'rate-limited' then
    reply.status = 'idle'
  else
    reply.match = m
    reply.status = m and 'matched' or 'waiting'
  end
end
return cjson.encode(reply)
