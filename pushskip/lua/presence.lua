-- Writes one process's presence changes (see presence.py), in one step.
-- ARGV[1] process id, ARGV[2] grace ms, ARGV[3] n, then the n users who now
-- have a socket on this process; then m, then the m users who no longer have
-- one here; then the users who made an HTTP request. The m users and the
-- requesters get the deadline now + grace (a deadline never moves earlier).
local proc, grace, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local sockets = K_PRESENCE_SOCKETS .. proc
local deadline = now_ms() + grace
local i = 4
for _ = 1, n do
  redis.call('SADD', sockets, ARGV[i])
  i = i + 1
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  redis.call('SREM', sockets, ARGV[i])
  redis.call('ZADD', K_PRESENCE_DEADLINES, 'GT', deadline, ARGV[i])
  i = i + 1
end
while i <= #ARGV do
  redis.call('ZADD', K_PRESENCE_DEADLINES, 'GT', deadline, ARGV[i])
  i = i + 1
end
redis.call('PEXPIRE', sockets, PRESENCE_KEEP_MS)
redis.call('PEXPIRE', K_PRESENCE_DEADLINES, PRESENCE_KEEP_MS)
return 1
