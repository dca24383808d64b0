-- worker.process.lease: arq's claim of one job, atomically, for every id a poll read: not in
-- progress elsewhere, due now. For each such job: its id, score and what to do: 'run' (held under
-- the lease, at most ARGV[3] of them: the worker's free slots), 'done' (it has a result already: a
-- copy queued again is dropped, never run or billed twice) or 'missing' (no record under the id:
-- taken off the queue; the caller fails it). Due jobs past the free slots stay queued, untouched.
-- A claimed job is scored at its lease's end: out of every worker's next reads while it runs
-- (so a poll sees the jobs that wait), due again if its worker dies. arq's Retry adds the
-- defer to the score it was given, so the job comes back at now + defer as usual.
-- A 'run' job also comes with what arq's run_job would fetch in a round trip of its own: its
-- record and its run count (arq's retry key, incremented); a count Redis cannot increment makes
-- it 'error' instead, with Redis's words (the caller fails the job).
-- The in-progress mark holds the claim's token: the same claim sent again (the client retrying
-- after a lost answer, worker.contract.connections) hands over the jobs its first run took, the
-- same ones, their run counted once.
-- KEYS: queue, then per job: in-progress key, job record key, result key, retry key
-- ARGV: now ms, lease ms, free slots, claim token, job ids (in KEYS order)
local now, lease, free, token, out = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4], {}
for i = 5, #ARGV do
  local id, k = ARGV[i], 2 + (i - 5) * 4
  local held = redis.call('GET', KEYS[k])
  if held == token and free > 0 then
    free = free - 1
    local tries = tonumber(redis.call('GET', KEYS[k + 3])) or 0
    local record = redis.call('GET', KEYS[k + 1])
    table.insert(out, id)
    table.insert(out, redis.call('ZSCORE', KEYS[1], id) or now + tonumber(lease))
    table.insert(out, record and 'run' or 'missing')
    table.insert(out, record or '')
    table.insert(out, tries)
  elseif not held then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      local what, record, tries = nil, '', 0
      if redis.call('EXISTS', KEYS[k + 2]) == 1 then
        what = 'done'
        redis.call('ZREM', KEYS[1], id)
        redis.call('DEL', KEYS[k + 1])
      elseif redis.call('EXISTS', KEYS[k + 1]) == 0 then
        what = 'missing'
        redis.call('ZREM', KEYS[1], id)
      elseif free > 0 then
        what = 'run'
        free = free - 1
        score = now + tonumber(lease)
        redis.call('PSETEX', KEYS[k], lease, token)
        redis.call('ZADD', KEYS[1], score, id)
        record = redis.call('GET', KEYS[k + 1])
        tries = redis.pcall('INCR', KEYS[k + 3])
        if type(tries) == 'table' then
          what, record, tries = 'error', tries.err, 0
        else
          redis.call('EXPIRE', KEYS[k + 3], RETRY_KEY_TTL_S)
        end
      end
      if what then
        table.insert(out, id)
        table.insert(out, score)
        table.insert(out, what)
        table.insert(out, record)
        table.insert(out, tries)
      end
    end
  end
end
return out
