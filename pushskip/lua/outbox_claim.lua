-- Claims due entries of one outbox target for this process (outbox.py), so
-- that one process at a time delivers an entry: each claimed entry is due
-- again only `lease` ms later (when its process died without settling it).
-- An entry whose predecessor (`after`) is still undelivered is not claimed:
-- it is put right after it, and woken when the predecessor is settled.
-- ARGV[1] target, ARGV[2] most entries, ARGV[3] lease ms.
-- Returns a flat array: in how many ms the next entry is due (-1: none), then
-- id, entry JSON, attempt number, recorded ms for each claimed entry.
local prefix = K_OUTBOX .. ARGV[1] .. ':'
local due, entries = prefix .. 'due', prefix .. 'entries'
local limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local claimed = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)) do
  local raw = redis.call('HGET', entries, id)
  if not raw then
    redis.call('ZREM', due, id)
    redis.call('ZREM', prefix .. 'recorded', id)
  else
    local after = cjson.decode(raw).after
    local before = after and redis.call('ZSCORE', due, after)
    if before then
      redis.call('ZADD', due, tonumber(before) + 1, id)
      redis.call('HSET', prefix .. 'next', after, id)
    else
      redis.call('ZADD', due, now + lease, id)
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = raw
      claimed[#claimed + 1] = redis.call('HINCRBY', prefix .. 'attempts', id, 1)
      claimed[#claimed + 1] = redis.call('ZSCORE', prefix .. 'recorded', id) or tostring(now)
    end
  end
end
local next_due = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
table.insert(claimed, 1, next_due[2] and math.max(0, tonumber(next_due[2]) - now) or -1)
return claimed
