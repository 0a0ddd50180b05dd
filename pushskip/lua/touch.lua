-- Marks a waiting user as alive (no-op for anyone not in the queue).
-- ARGV[1] me. Returns nothing of use.
redis.call('ZADD', K_QUEUE_SEEN, 'XX', now_ms(), ARGV[1])
return 1
