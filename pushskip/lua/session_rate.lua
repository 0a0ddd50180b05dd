-- Counts a new session against its client address, per minute (fixed window).
-- ARGV[1] address, ARGV[2] sessions allowed per minute. Returns 1 when allowed
-- (counted), 0 when the address is over its limit (nothing written).
local key, limit = K_SESSION_RATE .. ARGV[1], tonumber(ARGV[2])
local n = tonumber(redis.call('GET', key) or '0')
if n >= limit then return 0 end
redis.call('INCR', key)
if n == 0 then redis.call('EXPIRE', key, 60) end
return 1
