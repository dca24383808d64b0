-- worker.batches.store: move a batch's staged lines to the queue's bulk lane and start it (unless it
-- was cancelled meanwhile: its lines are queued all the same, and workers end them `batch_cancelled`
-- without a call). Released lines wake one idle worker (after the part wake, worker.process.wake).
-- -1 no such batch, -2 not this submission's (`owner`), else the lines released.
-- KEYS: batch record, staged set, bulk lane, wake list
-- ARGV: now s, owner, the lines' stride (worker.contract.records.JobRecords.bulk_stride)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return -2 end
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
-- into the bulk lane from its front, in input order, a line every ARGV[3] (1; under fair share
-- 1/the weight of the batch's source): two batches interleave, by their sources' weights
local front = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local base, stride = tonumber(front[2]) or 0, tonumber(ARGV[3])
for i = 1, #ids, 1000 do
  local args = {}
  for j = i, math.min(i + 999, #ids) do
    args[#args + 1] = string.format('%.17g', base + j * stride)
    args[#args + 1] = ids[j]
  end
  redis.call('ZADD', KEYS[3], unpack(args))
end
redis.call('DEL', KEYS[2])
if #ids > 0 then wake(KEYS[4]) end
redis.call('HDEL', KEYS[1], 'lease_until')  -- released: the submission's lease is over
if status == 'validating' then redis.call('HSET', KEYS[1], 'status', 'in_progress', 'in_progress_at', ARGV[1]) end
return #ids
