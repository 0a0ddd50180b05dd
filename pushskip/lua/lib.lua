-- Shared helpers, prepended (after the generated K_* constants) to every
-- script in this folder. Scripts touch keys they derive from a user id, so
-- they need a single Redis (not Cluster); every key they use is listed here.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function cooldown_key(a, b)
  if a < b then return K_COOLDOWN .. a .. ':' .. b end
  return K_COOLDOWN .. b .. ':' .. a
end

-- The match as one user sees it: the stored fields plus partnerId.
local function match_view(m, me)
  local partner = m.user1
  if partner == me then partner = m.user2 end
  return {roomName = m.roomName, user1 = m.user1, user2 = m.user2,
          partnerId = partner, matchedAt = m.matchedAt}
end

-- Appends an event to the user's log and publishes the same bytes on the
-- user's channel. seq rises by one per user within the log's epoch. A log
-- whose epoch or counter is missing (it expired, or Redis lost it) starts
-- anew: a new epoch, an empty stream, seq 1. Every event names its epoch, and
-- the three keys expire together LOG_RETENTION_MS after the last event. The
-- log keeps every event that is among the last LOG_MIN_EVENTS or younger than
-- LOG_MIN_AGE_MS; older ones are dropped a few per append (amortised O(1)).
local function new_epoch(log)
  local t = redis.call('TIME')
  redis.call('DEL', log)
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

local function append_event(user, ev, now)
  local seq_key, log, epoch_key = K_SEQ .. user, K_LOG .. user, K_EPOCH .. user
  local epoch = redis.call('GET', epoch_key)
  local seq = redis.call('GET', seq_key)
  if not epoch or not seq then
    epoch, seq = new_epoch(log), 0
  end
  seq = tonumber(seq) + 1
  ev.seq, ev.at, ev.epoch = seq, now, epoch
  local payload = cjson.encode(ev)
  if type(redis.pcall('XADD', log, seq .. '-0', 'e', payload, 'at', now)) ~= 'string' then
    -- The stream is ahead of its counter (part of the log was lost): start anew.
    epoch, seq = new_epoch(log), 1
    ev.seq, ev.epoch = seq, epoch
    payload = cjson.encode(ev)
    redis.call('XADD', log, seq .. '-0', 'e', payload, 'at', now)
  end
  redis.call('SET', epoch_key, epoch, 'PX', LOG_RETENTION_MS)
  redis.call('SET', seq_key, seq, 'PX', LOG_RETENTION_MS)
  redis.call('PEXPIRE', log, LOG_RETENTION_MS)
  if seq > LOG_MIN_EVENTS then
    local old = redis.call('XRANGE', log, '-', tostring(seq - LOG_MIN_EVENTS), 'COUNT', 8)
    for _, entry in ipairs(old) do
      local fields = entry[2]
      if tonumber(fields[4]) < now - LOG_MIN_AGE_MS then
        redis.call('XDEL', log, entry[1])
      else
        break
      end
    end
  end
  redis.call('PUBLISH', K_CHANNEL .. user, payload)
  return seq
end

local function dequeue(user)
  redis.call('ZREM', K_QUEUE, user)
  redis.call('ZREM', K_QUEUE_SEEN, user)
end

-- Puts `me` in the queue (keeping an earlier place) and pairs them with the
-- longest-waiting live candidate that is not themselves, not already matched
-- and not in a rematch cooldown with them. Entries found matched or not seen
-- for stale_ms are removed on the way. Returns me's match view or nil.
local function enqueue_and_pair(me, room, now, stale_ms)
  redis.call('ZADD', K_QUEUE, 'NX', now, me)
  redis.call('ZADD', K_QUEUE_SEEN, now, me)
  local candidates = redis.call('ZRANGE', K_QUEUE, 0, SCAN_LIMIT - 1)
  for _, c in ipairs(candidates) do
    if c ~= me then
      local seen = tonumber(redis.call('ZSCORE', K_QUEUE_SEEN, c) or '0')
      if seen < now - stale_ms or redis.call('EXISTS', K_MATCH .. c) == 1 then
        dequeue(c)
      elseif redis.call('EXISTS', cooldown_key(me, c)) == 0 then
        local m = {roomName = room, user1 = c, user2 = me, matchedAt = now}
        local stored = cjson.encode(m)
        redis.call('SET', K_MATCH .. c, stored, 'EX', MATCH_TTL)
        redis.call('SET', K_MATCH .. me, stored, 'EX', MATCH_TTL)
        dequeue(c)
        dequeue(me)
        append_event(c, {type = 'matched', match = match_view(m, c)}, now)
        append_event(me, {type = 'matched', match = match_view(m, me)}, now)
        return match_view(m, me)
      end
    end
  end
  return nil
end

-- Ends the match `me` is in, if any: deletes match:{me} and, only when it
-- still names the same room, match:{other} (compare-and-delete). Returns the
-- room and the partner, or nil when `me` has no match.
local function end_match(me)
  local raw = redis.call('GET', K_MATCH .. me)
  if not raw then return nil end
  local m = cjson.decode(raw)
  local other = m.user1
  if other == me then other = m.user2 end
  redis.call('DEL', K_MATCH .. me)
  local other_raw = redis.call('GET', K_MATCH .. other)
  if other_raw and cjson.decode(other_raw).roomName == m.roomName then
    redis.call('DEL', K_MATCH .. other)
  end
  return m.roomName, other
end

-- Ends the match `me` is in as a leave does: both match: keys, the seed's
-- disconnect flags for the partner and the room, the pair's rematch cooldown,
-- and partner-left (with `reason`) in the partner's log. Returns the room and
-- the partner, or nil when `me` has no match.
local function leave_match(me, reason, cooldown)
  local room, other = end_match(me)
  if not room then return nil end
  redis.call('SET', K_ROOM_DELETED .. room, 'true', 'EX', ROOM_DELETED_TTL)
  redis.call('SET', K_FORCE_DISCONNECT .. other, room, 'EX', FORCE_DISCONNECT_TTL)
  redis.call('SET', cooldown_key(me, other), room, 'EX', cooldown)
  append_event(other, {type = 'partner-left', roomName = room, reason = reason}, now_ms())
  return room, other
end
