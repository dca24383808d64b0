-- worker.contract.records: write a job to the queue, after the parts fair_enqueue
-- (worker.limits.fair) and wake (worker.process.wake).
-- arq's enqueue_job checks "not queued, not running, no arq result" with WATCH and three
-- round trips. arq keeps no result of ours (keep_result=0), so the id must also be absent
-- from our result keys for a repeated id to be a no-op: one atomic script, one round trip.
-- A caller's own id also keeps the digest of its job: the same id with another job is a
-- conflict (-1), not a silent no-op. With fair share (FAIR_SHARE, worker.limits.fair) an interactive
-- job waits in its source's sub-queue instead of the queue.
-- A source with a quota (SOURCE_LIMITS) that has more jobs waiting than the quota clears in a
-- minute (worker.limits.fair.clears_in_a_minute) is "far over" it: the job is refused, nothing written,
-- answering -2 - (jobs waiting).
-- A created job wakes one idle worker (worker.process.wake).
-- KEYS: job record, arq result, our result, queue, digest, wake list[, fair share: passes, clock, seen]
-- ARGV: record, record TTL ms, score, job id, digest ('' for a generated id), digest TTL s
--       [, fair share: source, known ('1'/'0'), sources bound, sub-queue prefix, jobs its quota clears
--       in a minute or 0]
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then
  if ARGV[5] ~= '' then
    local known = redis.call('GET', KEYS[5])
    if known and known ~= ARGV[5] then return -1 end
  end
  return 0
end
if ARGV[11] and tonumber(ARGV[11]) > 0 then
  local waiting = redis.call('ZCARD', ARGV[10] .. ARGV[7])
  if waiting >= tonumber(ARGV[11]) then return -2 - waiting end
end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
if ARGV[7] then
  fair_enqueue(KEYS[7], KEYS[8], KEYS[9], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[3], ARGV[4])
else
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
end
wake(KEYS[6])
if ARGV[5] ~= '' then redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[6]) end
return 1
