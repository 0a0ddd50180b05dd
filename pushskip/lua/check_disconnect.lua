-- Reads and consumes `me`'s disconnect flags in one step, so a flag set
-- between the read and the delete cannot be lost. A flag names the room it
-- was set for; it counts only while `me` is in no room or still in that one,
-- so a flag left from room R never disconnects `me` from a later room (it is
-- consumed as stale instead). ARGV[1] me.
-- Returns JSON {reason = 'force-disconnect'|...} or {} when there is none.
local me = ARGV[1]
local current = nil
local raw = redis.call('GET', K_MATCH .. me)
if raw then current = cjson.decode(raw).roomName end
local reason = nil
for _, f in ipairs({{'force-disconnect', K_FORCE_DISCONNECT},
                    {'skip-in-progress', K_SKIP_IN_PROGRESS},
                    {'pre-skip', K_PRE_SKIP}}) do
  local v = redis.call('GETDEL', f[2] .. me)
  if v and (current == nil or v == current) and reason == nil then
    reason = f[1]
  end
end
if reason == nil and current and redis.call('EXISTS', K_ROOM_DELETED .. current) == 1 then
  reason = 'room-deleted'
end
return cjson.encode({reason = reason})
