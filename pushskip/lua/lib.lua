-- Shared helpers, prepended (after the generated K_* constants) to every
-- script in this folder. Scripts touch keys they derive from a user id, so
-- they need a single Redis (not Cluster); every key they use is listed here.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An authenticated request of `user` (presence.py, claim_touch): their deadline
-- moves to now + grace_ms (never earlier), in the request's own step.
local function mark_present(user, grace_ms, now)
  if grace_ms <= 0 then return end
  redis.call('ZADD', K_PRESENCE_DEADLINES, 'GT', now + grace_ms, user)
  redis.call('PEXPIRE', K_PRESENCE_DEADLINES, PRESENCE_KEEP_MS)
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
--
-- Lost writes (a failover to a replica that missed the last appends): the
-- epoch key also holds the replication ID of the server the log was last
-- appended on ("<epoch>|<replid>"). A server that took over from another (a
-- replica promoted by Sentinel or a cluster failover: its master_replid2 is
-- set) may lack appends the old primary acknowledged, and nothing in its data
-- can tell which logs lost some: every log last appended under another ID
-- starts a new epoch at its next append, so a client whose seq counted lost
-- events gets a reset, never a new event under an old seq (the others get one
-- reset they did not need). A server restarted from its own data
-- (master_replid2 not set) keeps every epoch and only takes the new ID.
local function new_epoch(log)
  local t = redis.call('TIME')
  redis.call('DEL', log)
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

local NO_REPLID = string.rep('0', 40)
local replication = nil

-- This server's replication ID, and the one it took over from ("000..." if none).
local function replication_ids()
  if not replication then
    local info = redis.call('INFO', 'replication')
    replication = {info:match('master_replid:(%w+)') or '',
                   info:match('master_replid2:(%w+)') or NO_REPLID}
  end
  return replication[1], replication[2]
end

local function append_event(user, ev, now)
  local seq_key, log, epoch_key = K_SEQ .. user, K_LOG .. user, K_EPOCH .. user
  local stored = redis.call('GET', epoch_key)
  local seq = redis.call('GET', seq_key)
  local epoch, stamp = nil, nil
  if stored then epoch, stamp = stored:match('^([^|]+)|?(.*)$') end
  local replid, took_over_from = replication_ids()
  if not epoch or not seq or (stamp ~= replid and took_over_from ~= NO_REPLID) then
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
  redis.call('SET', epoch_key, epoch .. '|' .. replid, 'PX', LOG_RETENTION_MS)
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
  redis.call(PUBLISH_CMD, K_CHANNEL .. user, payload)
  return seq
end

-- Records an entry of the outbox of `target` (outbox.py), in the step that makes
-- the change it reports: any process delivers it afterwards, at least once.
-- `after`: the id of an entry of the same target that must be delivered first.
local function record_outbox(target, id, entry, now, after)
  local prefix = K_OUTBOX .. target .. ':'
  entry.after = after
  redis.call('HSET', prefix .. 'entries', id, cjson.encode(entry))
  redis.call('ZADD', prefix .. 'due', now, id)
  redis.call('ZADD', prefix .. 'recorded', now, id)
end

local function webhook_id(room, kind)
  return 'msg_' .. room .. '_' .. kind
end

local function dequeue(user)
  redis.call('ZREM', K_QUEUE, user)
  redis.call('ZREM', K_QUEUE_SEEN, user)
  local address = redis.call('HGET', K_QUEUE_ADDRESS, user)
  if address then
    redis.call('SREM', K_WAITING_FROM .. address, user)
    redis.call('HDEL', K_QUEUE_ADDRESS, user)
    redis.call('HDEL', K_QUEUED_AT, user)
  end
end

-- The client address's enqueue allowance: `rate` a second, one second's worth
-- saved at most (a token bucket, in thousandths of an enqueue). Returns what
-- is left once this enqueue is taken (for spend_enqueue), or false when there
-- is not one left (nothing written).
local function enqueue_allowance(address, now, rate)
  if rate <= 0 then return -1 end
  local got = redis.call('HMGET', K_ENQUEUE_RATE .. address, 'milli', 'at')
  local full = math.floor(rate * 1000)
  local milli = tonumber(got[1]) or full
  local at = tonumber(got[2]) or now
  milli = math.min(full, milli + math.floor((now - at) * rate))
  if milli < 1000 then return false end
  return milli - 1000
end

local function spend_enqueue(address, now, left)
  if left < 0 then return end
  local key = K_ENQUEUE_RATE .. address
  redis.call('HSET', key, 'milli', left, 'at', now)
  redis.call('PEXPIRE', key, LIMITS_KEEP_MS)
end

-- Puts `me` in the queue unless they are there already (then they keep their
-- place). A place is a time (fair queuing by client address): now, plus
-- FAIR_SLOT_MS for each other user the address has waiting, and for each
-- other user it queued in the last ACTIVITY_WINDOW_MS (at most FAIR_MAX_SLOTS
-- in all). An address that queues many users, or churns through many
-- sessions that come and go, queues its next one far behind everyone else's,
-- and this decays within the window once it stops; a user alone at their
-- address always queues at now, however often they come back. Returns false,
-- writing nothing, when `address` already has max_waiting waiting.
local function join_queue(me, now, address, max_waiting)
  if not redis.call('ZSCORE', K_QUEUE, me) then
    local waiting = K_WAITING_FROM .. address
    local count = redis.call('SCARD', waiting)
    if count >= max_waiting then return false end
    local recent = K_RECENT_FROM .. address
    redis.call('ZREMRANGEBYSCORE', recent, '-inf', now - ACTIVITY_WINDOW_MS)
    redis.call('ZADD', recent, now, me)
    redis.call('PEXPIRE', recent, LIMITS_KEEP_MS)
    local others = redis.call('ZCARD', recent) - 1
    local slots = math.min(FAIR_MAX_SLOTS, count + others)
    redis.call('ZADD', K_QUEUE, now + FAIR_SLOT_MS * slots, me)
    redis.call('SADD', waiting, me)
    redis.call('PEXPIRE', waiting, QUEUE_KEEP_MS)
    redis.call('HSET', K_QUEUE_ADDRESS, me, address)
    redis.call('HSET', K_QUEUED_AT, me, now)
    redis.call('PEXPIRE', K_QUEUE_ADDRESS, QUEUE_KEEP_MS)
    redis.call('PEXPIRE', K_QUEUED_AT, QUEUE_KEEP_MS)
  end
  redis.call('ZADD', K_QUEUE_SEEN, now, me)
  redis.call('PEXPIRE', K_QUEUE, QUEUE_KEEP_MS)
  redis.call('PEXPIRE', K_QUEUE_SEEN, QUEUE_KEEP_MS)
  return true
end

local function make_pair(a, b, room, now)
  local m = {roomName = room, user1 = a, user2 = b, matchedAt = now}
  local stored = cjson.encode(m)
  redis.call('SET', K_MATCH .. a, stored, 'EX', MATCH_TTL)
  redis.call('SET', K_MATCH .. b, stored, 'EX', MATCH_TTL)
  redis.call('ZADD', K_ROOMS, now, room)
  dequeue(a)
  dequeue(b)
  if OUTBOX_WEBHOOK then
    record_outbox('webhook', webhook_id(room, 'created'), {type = 'match.created', at = now,
      data = {roomName = room, users = {a, b}, matchedAt = now}}, now)
  end
  append_event(a, {type = 'matched', match = match_view(m, a)}, now)
  append_event(b, {type = 'matched', match = match_view(m, b)}, now)
  return m
end

-- Pairs the two waiting users with the earliest places that may meet: live
-- (seen within stale_ms, not matched: others are removed on the way), not
-- the same, not in a rematch cooldown, and, when they come from different
-- addresses, the later place at most FAIR_WINDOW_MS ahead of the earlier one
-- (or of now, if that is later) unless the earlier one has waited
-- FAIR_PATIENCE_MS already: a user from a quiet address waits a
-- moment for another rather than being handed to an address that queues
-- users far ahead (a bot pool), but never long.
-- Looks at the first SCAN_LIMIT places and tries at most PAIR_TRIES first
-- users. Returns the match made, or nil.
local function pair_earliest(room, now, stale_ms)
  local entries = redis.call('ZRANGE', K_QUEUE, 0, SCAN_LIMIT - 1, 'WITHSCORES')
  local places = {}
  for k = 2, #entries, 2 do places[k / 2] = tonumber(entries[k]) end
  for k = 1, #places do entries[k] = entries[2 * k - 1] end
  for k = #places + 1, #entries do entries[k] = nil end
  local live = {}
  local function is_live(k)
    if live[k] == nil then
      local c = entries[k]
      local seen = tonumber(redis.call('ZSCORE', K_QUEUE_SEEN, c) or '0')
      live[k] = not (seen < now - stale_ms or redis.call('EXISTS', K_MATCH .. c) == 1)
      if not live[k] then dequeue(c) end
    end
    return live[k]
  end
  local tries = 0
  for i = 1, #entries do
    if is_live(i) then
      tries = tries + 1
      if tries > PAIR_TRIES then return nil end
      local queued = tonumber(redis.call('HGET', K_QUEUED_AT, entries[i]) or now)
      local patient = now - queued >= FAIR_PATIENCE_MS
      local from = redis.call('HGET', K_QUEUE_ADDRESS, entries[i])
      for j = i + 1, #entries do
        if is_live(j)
            and (patient or places[j] <= math.max(places[i], now) + FAIR_WINDOW_MS
                 or redis.call('HGET', K_QUEUE_ADDRESS, entries[j]) == from)
            and redis.call('EXISTS', cooldown_key(entries[i], entries[j])) == 0 then
          return make_pair(entries[i], entries[j], room, now)
        end
      end
    end
  end
  return nil
end

-- `me` joins the queue (see join_queue), then the two earliest waiting users
-- that may meet are paired, `me` or not. Returns 'banned', 'rate-limited' (the
-- address's enqueue allowance, see enqueue_allowance) or 'limited' (its waiting
-- users), writing nothing, me's match view when `me` was paired, or nil when
-- `me` waits.
local function enqueue_and_pair(me, room, now, stale_ms, address, max_waiting, rate)
  if redis.call('EXISTS', K_BANNED .. me) == 1 then return 'banned' end
  local allowance = enqueue_allowance(address, now, rate)
  if not allowance then return 'rate-limited' end
  if not join_queue(me, now, address, max_waiting) then return 'limited' end
  spend_enqueue(address, now, allowance)
  local m = pair_earliest(room, now, stale_ms)
  if m and (m.user1 == me or m.user2 == me) then return match_view(m, me) end
  return nil
end

-- Ends the match `me` is in, if any: deletes match:{me} and, only when it
-- still names the same room, match:{other} (compare-and-delete), and records
-- match.ended (`reason`; `ended_by`: a user id, or nil when the app's backend
-- ended it) and the media room's deletion in the outbox. Returns the room and
-- the partner, or nil when `me` has no match.
local function end_match(me, reason, ended_by, now)
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
  redis.call('ZREM', K_ROOMS, m.roomName)
  if OUTBOX_LIVEKIT then
    record_outbox('livekit', 'room_' .. m.roomName, {room = m.roomName}, now)
  end
  if OUTBOX_WEBHOOK then
    record_outbox('webhook', webhook_id(m.roomName, 'ended'), {type = 'match.ended', at = now,
      data = {roomName = m.roomName, users = {m.user1, m.user2},
              endedBy = ended_by or cjson.null, reason = reason}},
      now, webhook_id(m.roomName, 'created'))
  end
  return m.roomName, other
end

-- Ends the match `me` is in as a leave does: both match: keys, the seed's
-- disconnect flags for the partner and the room, the pair's rematch cooldown,
-- and partner-left (with `reason`) in the partner's log. Returns the room and
-- the partner, or nil when `me` has no match.
local function leave_match(me, reason, cooldown, ended_by)
  local room, other = end_match(me, reason, ended_by, now_ms())
  if not room then return nil end
  redis.call('SET', K_ROOM_DELETED .. room, 'true', 'EX', ROOM_DELETED_TTL)
  redis.call('SET', K_FORCE_DISCONNECT .. other, room, 'EX', FORCE_DISCONNECT_TTL)
  redis.call('SET', cooldown_key(me, other), room, 'EX', cooldown)
  append_event(other, {type = 'partner-left', roomName = room, reason = reason}, now_ms())
  return room, other
end
