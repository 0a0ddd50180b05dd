-- The app's backend ends `me`'s match (server API, end-match): as a leave ends
-- it (flags, cooldown), but both users get partner-left with reason
-- 'removed', and match.ended names no user (the backend did it).
-- ARGV[1] me, ARGV[2] rematch cooldown seconds.
-- Returns JSON {ended = false}, or {ended = true, roomName = room, partnerId = other}.
local me, cooldown = ARGV[1], tonumber(ARGV[2])
local room, other = leave_match(me, 'removed', cooldown, nil)
if not room then return cjson.encode({ended = false}) end
append_event(me, {type = 'partner-left', roomName = room, reason = 'removed'}, now_ms())
return cjson.encode({ended = true, roomName = room, partnerId = other})
