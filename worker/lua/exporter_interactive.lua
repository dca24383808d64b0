-- worker.observe.exporter: a chunk of the ready part of the queue: how many entries, how many are
-- batch lines (ids `batch_...:<line>`), and the oldest other one's score (-1: none). A batch line
-- leaves the bulk lane for the queue when a worker has a free slot, and comes back to the queue
-- when it is deferred (a rate limit): counted as a job like any other, a normal overnight batch
-- would look like an interactive backlog. Past MAX_READY_SCANNED entries the rest count as
-- interactive (the alerts err on the side of paging).
-- KEYS: queue; ARGV: now ms, first rank, last rank (the ready jobs are the lowest ranks)
local ready = redis.call('ZRANGE', KEYS[1], ARGV[2], ARGV[3], 'WITHSCORES')
local lines, oldest, now = 0, -1, tonumber(ARGV[1])
for i = 1, #ready, 2 do
  local id = ready[i]
  if tonumber(ready[i + 1]) > now then
    break
  elseif string.sub(id, 1, 6) == 'batch_' and string.find(id, ':', 7, true) then
    lines = lines + 1
  elseif oldest < 0 then
    oldest = tonumber(ready[i + 1])
  end
end
return {lines, tostring(oldest)}
