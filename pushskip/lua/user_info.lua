-- Reads where a user stands for the server API (changes nothing).
-- ARGV[1] user. Present: a socket open on a live process, or a deadline not
-- yet due (a request or a socket within the grace).
-- Returns JSON {match = stored match or absent, waiting = bool, present = bool,
-- bannedUntil = ms or absent}.
local user = ARGV[1]
local now = now_ms()
local present = false
for _, proc in ipairs(redis.call('ZRANGEBYSCORE', K_PRESENCE_PROCS, '(' .. now, '+inf')) do
  if redis.call('SISMEMBER', K_PRESENCE_SOCKETS .. proc, user) == 1 then
    present = true
    break
  end
end
if not present then
  local deadline = redis.call('ZSCORE', K_PRESENCE_DEADLINES, user)
  present = deadline ~= false and tonumber(deadline) > now
end
local raw = redis.call('GET', K_MATCH .. user)
local banned = redis.call('GET', K_BANNED .. user)
return cjson.encode({
  match = raw and cjson.decode(raw) or nil,
  waiting = redis.call('ZSCORE', K_QUEUE, user) ~= false,
  present = present,
  bannedUntil = banned and tonumber(banned) or nil,
})
