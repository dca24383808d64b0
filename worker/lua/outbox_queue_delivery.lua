-- worker.outputs.outbox, a part of the scripts that store a result or end a batch (worker.contract.store,
-- worker.batches.record): `queue_delivery(outbox, delivery key, delivery, url, now s, ttl s)`.
-- A pending delivery gets the url (it will send the newest record); an ended one (or none) starts
-- its next generation, due now.
local function queue_delivery(outbox, key, delivery, url, now, ttl)
  if redis.call('HGET', key, 'status') ~= 'pending' then
    redis.call('HINCRBY', key, 'n', 1)
    redis.call('HDEL', key, 'last_error', 'last_status', 'last_try_at', 'next_try_at', 'ended_at')
    redis.call('HSET', key, 'status', 'pending', 'tries', 0, 'created_at', now)
    redis.call('ZADD', outbox, now, delivery)
  end
  redis.call('HSET', key, 'url', url)
  redis.call('EXPIRE', key, math.max(math.floor(tonumber(ttl)), 60))
end
