-- worker.limits.fair: A job a worker lets go of (a wait: arq's Retry; a shutdown past its grace) goes back to its
-- source's sub-queue, due at the given time, not to the queue: it waits its turn again among its
-- source's jobs and other sources' (and is not running any more). Nothing happens to a job that
-- left the queue meanwhile (its batch was cancelled): the queue entry is the claim's.
-- A run that did nothing (its source at its quota) is given back: MAX_JOB_RUNS counts real runs.
-- It wakes an idle worker (worker.process.wake), which takes it or blocks until it is due.
-- KEYS: queue, in-progress, waiting, running, passes, clock, run count, wake list; ARGV: job id,
-- due ms, source, give the run back ('1'/'0')
-- Joined after the part `wake`.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[4] == '1' and (tonumber(redis.call('GET', KEYS[7])) or 0) > 0 then redis.call('DECR', KEYS[7]) end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], 'NX', tonumber(redis.call('GET', KEYS[6]) or '0'), ARGV[3])
wake(KEYS[8])
return 1
