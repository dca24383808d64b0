-- worker.batches.store: create a batch's record, unless one exists under its id: 1 created (or
-- created by this very submission: the same call sent again after its answer was lost), 0 the id is
-- taken. The record holds the submission's lease (`lease_until`, ms, Redis's clock): a submission
-- that stops renewing it (its process died) is reaped by the next reader (batch_store_reap).
-- KEYS: batch record, the batch list
-- ARGV: purge_at, created_at, batch id, owner, lease ms, then field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'owner') == ARGV[4] and 1 or 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'lease_until', t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIREAT', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
