-- worker.outputs.outbox: a try's outcome, if the delivery is still generation ARGV[2]: 'retry' (due
-- again at ARGV[4]), 'delivered' or 'failed' (out of the outbox). Returns the tries so far, 0 if
-- fenced off.
-- KEYS: outbox, delivery; ARGV: delivery, n, outcome, due s, last error, last status, now s
if redis.call('HGET', KEYS[2], 'n') ~= ARGV[2] then return 0 end
local tries = redis.call('HINCRBY', KEYS[2], 'tries', 1)
redis.call('HSET', KEYS[2], 'last_try_at', ARGV[7])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'last_status', ARGV[6]) end
if ARGV[3] == 'retry' then
  redis.call('HSET', KEYS[2], 'next_try_at', ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'status', ARGV[3], 'ended_at', ARGV[7])
  redis.call('HDEL', KEYS[2], 'next_try_at')
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return tries
