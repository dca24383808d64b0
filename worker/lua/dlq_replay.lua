-- worker.outputs.dlq: a dead letter back to the queue, after the part wake (worker.process.wake).
-- 0: not dead-lettered; -1: a job with that id is queued or running already.
-- A replayed job wakes an idle worker (worker.process.wake).
-- KEYS: dlq hash, dlq index, result key, arq job key, queue, wake list
-- ARGV: job id, serialized arq job, job key TTL ms, score
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('PSETEX', KEYS[4], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
wake(KEYS[6])
return 1
