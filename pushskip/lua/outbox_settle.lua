-- Settles one claimed outbox entry (outbox.py). ARGV[1] target, ARGV[2] id,
-- ARGV[3] 'done' (delivered, or dropped: it is forgotten and the entry that
-- waits for it is due now) or a delay in ms (not delivered: due again then).
-- Returns 1 when the entry was still there, 0 when it was settled already.
local prefix = K_OUTBOX .. ARGV[1] .. ':'
local id, outcome = ARGV[2], ARGV[3]
local due = prefix .. 'due'
if redis.call('HEXISTS', prefix .. 'entries', id) == 0 then return 0 end
if outcome ~= 'done' then
  redis.call('ZADD', due, now_ms() + tonumber(outcome), id)
  return 1
end
redis.call('HDEL', prefix .. 'entries', id)
redis.call('HDEL', prefix .. 'attempts', id)
redis.call('ZREM', due, id)
redis.call('ZREM', prefix .. 'recorded', id)
local waiting = redis.call('HGET', prefix .. 'next', id)
if waiting then
  redis.call('HDEL', prefix .. 'next', id)
  redis.call('ZADD', due, 'XX', now_ms(), waiting)
end
return 1
