-- `me` leaves: out of the queue, and out of their match if they have one, in
-- which case the partner gets partner-left (reason 'left'), the seed's
-- disconnect flags, and the pair a rematch cooldown.
-- ARGV[1] me, ARGV[2] rematch cooldown seconds.
-- Returns JSON {left = false} when there was no match, or
-- {left = true, roomName = room, partnerId = other}.
local me, cooldown = ARGV[1], tonumber(ARGV[2])
dequeue(me)
local room, other = leave_match(me, 'left', cooldown, me)
if not room then return cjson.encode({left = false}) end
return cjson.encode({left = true, roomName = room, partnerId = other})
