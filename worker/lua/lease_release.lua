-- worker.process.lease: the end of a job whose result is stored: off the queue, its record, run
-- count and lease gone (arq's finish_job), sent in the same round trip as the result. Nothing
-- happens unless the result is there: a result that was not stored never takes its job off the
-- queue. A job its source's sub-queue gave (worker.limits.fair) also stops counting as its
-- source's running.
-- KEYS: result, queue, job record, in-progress, retry[, the source's running jobs]; ARGV: job id
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if KEYS[6] then redis.call('ZREM', KEYS[6], ARGV[1]) end
return 1
