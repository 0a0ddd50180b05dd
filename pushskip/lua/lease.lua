-- Renews this process's presence lease and lists it among the live ones.
-- ARGV[1] process id, ARGV[2] lease ms, ARGV[3] sockets open on it now (for
-- the server API's stats). Returns 1 when the lease was still known, 0 when
-- it was not (first renewal, or Redis lost it): the process then lists every
-- user it holds a socket for again.
local proc, lease = ARGV[1], tonumber(ARGV[2])
local known = redis.call('ZSCORE', K_PRESENCE_PROCS, proc)
redis.call('ZADD', K_PRESENCE_PROCS, now_ms() + lease, proc)
redis.call('PEXPIRE', K_PRESENCE_PROCS, PRESENCE_KEEP_MS)
redis.call('PEXPIRE', K_PRESENCE_SOCKETS .. proc, PRESENCE_KEEP_MS)
redis.call('HSET', K_PRESENCE_COUNTS, proc, ARGV[3])
redis.call('PEXPIRE', K_PRESENCE_COUNTS, PRESENCE_KEEP_MS)
if known then return 1 end
return 0
