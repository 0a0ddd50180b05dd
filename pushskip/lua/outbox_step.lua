-- One round trip of a process's outbox deliverer for one target (outbox.py):
-- settles the entries it finished, then claims due ones.
--
-- Settling: 'done' (delivered, or given up) forgets an entry and makes the
-- entry that waits for it due now; a delay in ms (not delivered) makes it due
-- again then. An entry already settled (by a process that claimed it after
-- this one's lease ran out) is left alone.
--
-- Claiming: a claimed entry is due again only `lease` ms later (if its
-- process dies without settling it), so one process at a time delivers it.
-- An entry whose predecessor (`after`) is still undelivered is not claimed:
-- it is put right after it, and made due when the predecessor is settled.
--
-- ARGV[1] target, ARGV[2] most entries to claim, ARGV[3] lease ms, then pairs
-- of (id, outcome) to settle first.
-- Returns a flat array: in how many ms the next entry is due (-1: none), then
-- id, entry JSON, attempt number, recorded ms for each claimed entry.
local prefix = K_OUTBOX .. ARGV[1] .. ':'
local due, entries = prefix .. 'due', prefix .. 'entries'
local limit, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()

for i = 4, #ARGV - 1, 2 do
  local id, outcome = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', entries, id) == 1 then
    if outcome ~= 'done' then
      redis.call('ZADD', due, now + tonumber(outcome), id)
    else
      redis.call('HDEL', entries, id)
      redis.call('HDEL', prefix .. 'attempts', id)
      redis.call('ZREM', due, id)
      redis.call('ZREM', prefix .. 'recorded', id)
      local waiting = redis.call('HGET', prefix .. 'next', id)
      if waiting then
        redis.call('HDEL', prefix .. 'next', id)
        redis.call('ZADD', due, 'XX', now, waiting)
      end
    end
  end
end

local claimed = {}
if limit > 0 then
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
end
local next_due = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
table.insert(claimed, 1, next_due[2] and math.max(0, tonumber(next_due[2]) - now) or -1)
return claimed
