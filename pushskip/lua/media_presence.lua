-- A media server said a user left or joined a room (POST /api/webhooks/livekit).
-- Leaving the room of one's current match starts a grace: if they have not
-- joined it again when it ends, the sweep ends the match as it ends one of a
-- user who is gone (sweep.lua). Joining that room again cancels the grace.
-- Anything about another room than the user's match is ignored.
-- ARGV[1] 'left' | 'joined', ARGV[2] user, ARGV[3] room, ARGV[4] grace ms.
-- Returns JSON {changed = bool}.
local kind, user, room, grace = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local raw = redis.call('GET', K_MATCH .. user)
if not raw or cjson.decode(raw).roomName ~= room then
  return cjson.encode({changed = false})
end
if kind == 'left' then
  redis.call('ZADD', K_MEDIA_DEADLINES, now_ms() + grace, user)
  redis.call('HSET', K_MEDIA_LEFT_ROOM, user, room)
  redis.call('PEXPIRE', K_MEDIA_DEADLINES, PRESENCE_KEEP_MS)
  redis.call('PEXPIRE', K_MEDIA_LEFT_ROOM, PRESENCE_KEEP_MS)
  return cjson.encode({changed = true})
end
local removed = redis.call('ZREM', K_MEDIA_DEADLINES, user)
redis.call('HDEL', K_MEDIA_LEFT_ROOM, user)
return cjson.encode({changed = removed == 1})
