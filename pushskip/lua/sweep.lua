-- Declares gone the users whose presence deadline has passed, once each, in
-- one step (API.md, Presence). Any process may run it, as often as it likes.
-- ARGV[1] grace ms, ARGV[2] most users to look at, ARGV[3] rematch cooldown s.
--
-- A user is present while a live process lists them in its socket set; each
-- HTTP request and each last-socket close push their deadline to now + grace.
-- A process whose lease has expired (it died) no longer keeps anyone present:
-- its users get the deadline lease expiry + grace, and its set is dropped.
-- A due user who is still present just loses the deadline; one who is not is
-- gone: their match ends as a leave ends it, with reason 'disconnected', or
-- they leave the queue. A user whose media room grace ran out (media_presence.lua)
-- is gone the same way. Returns JSON {ended = n, dequeued = n, dead = n}.
local grace, limit, cooldown = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local dead = redis.call('ZRANGEBYSCORE', K_PRESENCE_PROCS, '-inf', now, 'WITHSCORES')
for i = 1, #dead, 2 do
  local proc, expired_at = dead[i], tonumber(dead[i + 1])
  for _, user in ipairs(redis.call('SMEMBERS', K_PRESENCE_SOCKETS .. proc)) do
    redis.call('ZADD', K_PRESENCE_DEADLINES, 'GT', expired_at + grace, user)
  end
  redis.call('DEL', K_PRESENCE_SOCKETS .. proc)
  redis.call('ZREM', K_PRESENCE_PROCS, proc)
  redis.call('HDEL', K_PRESENCE_COUNTS, proc)
end
if #dead > 0 then redis.call('PEXPIRE', K_PRESENCE_DEADLINES, PRESENCE_KEEP_MS) end
local live = redis.call('ZRANGEBYSCORE', K_PRESENCE_PROCS, '(' .. now, '+inf')
local due = redis.call('ZRANGEBYSCORE', K_PRESENCE_DEADLINES, '-inf', now, 'LIMIT', 0, limit)
local ended, dequeued = 0, 0
for _, user in ipairs(due) do
  redis.call('ZREM', K_PRESENCE_DEADLINES, user)
  local present = false
  for _, proc in ipairs(live) do
    if redis.call('SISMEMBER', K_PRESENCE_SOCKETS .. proc, user) == 1 then
      present = true
      break
    end
  end
  if not present then
    if leave_match(user, 'disconnected', cooldown, user) then
      ended = ended + 1
    elseif redis.call('ZSCORE', K_QUEUE, user) then
      dequeue(user)
      dequeued = dequeued + 1
    end
  end
end
-- Users who left their match's media room and did not come back within the grace
-- (media_presence.lua): gone the same way, if they are still in that match.
for _, user in ipairs(redis.call('ZRANGEBYSCORE', K_MEDIA_DEADLINES, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', K_MEDIA_DEADLINES, user)
  local room = redis.call('HGET', K_MEDIA_LEFT_ROOM, user)
  redis.call('HDEL', K_MEDIA_LEFT_ROOM, user)
  local raw = redis.call('GET', K_MATCH .. user)
  if room and raw and cjson.decode(raw).roomName == room then
    leave_match(user, 'disconnected', cooldown, user)
    ended = ended + 1
  end
end
return cjson.encode({ended = ended, dequeued = dequeued, dead = #dead / 2})
