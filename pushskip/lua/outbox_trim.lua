-- Keeps one outbox target's memory bounded, and reports on it (outbox.py).
-- Drops entries recorded more than `keep` ms ago (never delivered in time,
-- whoever was to deliver them), then the oldest beyond `max` entries.
-- ARGV[1] target, ARGV[2] keep ms, ARGV[3] max entries.
-- Returns {dropped, pending, oldest recorded ms or -1}.
local prefix = K_OUTBOX .. ARGV[1] .. ':'
local keep, max = tonumber(ARGV[2]), tonumber(ARGV[3])
local recorded = prefix .. 'recorded'
local now = now_ms()
local function drop(id)
  redis.call('HDEL', prefix .. 'entries', id)
  redis.call('HDEL', prefix .. 'attempts', id)
  redis.call('HDEL', prefix .. 'next', id)
  redis.call('ZREM', prefix .. 'due', id)
  redis.call('ZREM', recorded, id)
end
local dropped = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', recorded, '-inf', now - keep, 'LIMIT', 0, 1000)) do
  drop(id)
  dropped = dropped + 1
end
local excess = redis.call('ZCARD', recorded) - max
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', recorded, 0, math.min(excess, 1000) - 1)) do
    drop(id)
    dropped = dropped + 1
  end
end
local oldest = redis.call('ZRANGE', recorded, 0, 0, 'WITHSCORES')
return {dropped, redis.call('ZCARD', recorded), oldest[2] and tonumber(oldest[2]) or -1}
