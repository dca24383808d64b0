-- worker.batches.store: stage a chunk of lines (job records, the staged set, the line list), if the
-- record is still this submission's (its `owner`): -1 it is not (taken over, or gone), else the
-- lines staged. A line already staged is not listed again: the same chunk sent again (after a lost
-- answer) stages nothing twice.
-- KEYS: batch record, staged set, line list
-- ARGV: owner, record TTL ms, purge_at, then job key, record, job id, line entry, ...
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return -1 end
local n = 0
for i = 4, #ARGV, 4 do
  redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ARGV[2])
  if redis.call('ZADD', KEYS[2], 0, ARGV[i + 2]) == 1 then redis.call('RPUSH', KEYS[3], ARGV[i + 3]) end
  n = n + 1
end
redis.call('EXPIREAT', KEYS[3], ARGV[3])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
return n
