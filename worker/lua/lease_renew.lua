-- worker.process.lease: the keeper's renewal of every lease this worker holds, in one call: each
-- in-progress mark gets LEASE_S more, and its queue entry is scored at the new lease's end (never
-- earlier), so a job running longer than a lease stays out of every poll's read. A job that has
-- ended (no mark) is left alone: its queue entry, if any, is its end's. A job a source's sub-queue
-- gave (worker.limits.fair) stays listed as its source's running for as long.
-- KEYS: queue; ARGV: lease ms, now ms, in-progress prefix, running prefix, then job id, source
-- ('': none) pairs
local lease, score, sources = tonumber(ARGV[1]), tonumber(ARGV[2]) + tonumber(ARGV[1]), {}
for i = 5, #ARGV, 2 do
  if redis.call('PEXPIRE', ARGV[3] .. ARGV[i], lease) == 1 then
    redis.call('ZADD', KEYS[1], 'XX', 'GT', score, ARGV[i])
    if ARGV[i + 1] ~= '' then
      redis.call('ZADD', ARGV[4] .. ARGV[i + 1], 'XX', 'GT', score, ARGV[i])
      sources[ARGV[i + 1]] = true
    end
  end
end
for source in pairs(sources) do redis.call('PEXPIRE', ARGV[4] .. source, lease) end
return 0
