-- worker.process.lease: bulk jobs from the bulk lane into the queue for this worker's free slots,
-- claimed at once: held under the lease and scored at the lease's end, so they stay out of other
-- workers' reads while they run and are due again if this worker dies. The same outcomes and
-- answers as lease_claim; the caller quarantines an id that cannot be one (the lane is written by
-- others too).
-- KEYS: bulk lane, queue; ARGV: how many, now ms, lease ms, job record / in-progress / result /
-- retry prefixes
local out, score = {}, tonumber(ARGV[2]) + tonumber(ARGV[3])
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
for i = 1, #popped, 2 do
  local id, what, record, tries = popped[i], 'run', '', 0
  if redis.call('EXISTS', ARGV[6] .. id) == 1 then
    what = 'done'
    redis.call('DEL', ARGV[4] .. id)
  elseif redis.call('EXISTS', ARGV[4] .. id) == 0 then
    what = 'missing'
  else
    redis.call('ZADD', KEYS[2], score, id)
    redis.call('PSETEX', ARGV[5] .. id, ARGV[3], '1')
    record = redis.call('GET', ARGV[4] .. id)
    tries = redis.pcall('INCR', ARGV[7] .. id)
    if type(tries) == 'table' then
      what, record, tries = 'error', tries.err, 0
    else
      redis.call('EXPIRE', ARGV[7] .. id, RETRY_KEY_TTL_S)
    end
  end
  table.insert(out, id)
  table.insert(out, score)
  table.insert(out, what)
  table.insert(out, record)
  table.insert(out, tries)
end
return out
