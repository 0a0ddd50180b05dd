-- The app's backend bans `me` for a while (server API, ban): the ban is kept
-- (enqueue refuses `me` until it ends), `me` leaves the queue, their match
-- ends (the partner gets partner-left, reason 'removed'), and every process
-- holding a socket of `me` is told on their channel to close it (4403).
-- ARGV[1] me, ARGV[2] ban length ms, ARGV[3] rematch cooldown seconds.
-- Returns JSON {bannedUntil = ms, ended = bool, roomName = room or absent}.
local me, length, cooldown = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local banned_until = now_ms() + length
redis.call('SET', K_BANNED .. me, banned_until, 'PX', length)
dequeue(me)
local room = leave_match(me, 'removed', cooldown, nil)
redis.call(PUBLISH_CMD, K_CHANNEL .. me, cjson.encode({type = 'close', reason = 'banned'}))
return cjson.encode({bannedUntil = banned_until, ended = room ~= nil, roomName = room})
