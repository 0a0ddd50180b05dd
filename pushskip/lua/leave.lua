-- `me` leaves: out of the queue, and out of their match if they have one, in
-- which case the partner gets partner-left and the seed's disconnect flags.
-- ARGV[1] me. Returns JSON {left = false} when there was no match, or
-- {left = true, roomName = room, partnerId = other}.
local me = ARGV[1]
dequeue(me)
local room, other = end_match(me)
if not room then return cjson.encode({left = false}) end
redis.call('SET', K_ROOM_DELETED .. room, 'true', 'EX', ROOM_DELETED_TTL)
redis.call('SET', K_FORCE_DISCONNECT .. other, room, 'EX', FORCE_DISCONNECT_TTL)
append_event(other, {type = 'partner-left', roomName = room}, now_ms())
return cjson.encode({left = true, roomName = room, partnerId = other})
