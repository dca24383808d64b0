-- worker.batches.record: a chunk of a cancelled batch's lines (or one past its window) that wait for
-- a worker, ended here and now (after the parts outbox_queue_delivery and batch_record_finish): each still
-- queued (in the bulk lane, or back in the queue, deferred), not held by a worker (no in-progress
-- mark) and not counted gets its result and is counted as a worker picking it would count it
-- (batch_record_save_line: once, HSETNX), and leaves the queue with its record and run count. A
-- running line is left to its worker. Then the batch ends if every line is counted. Nothing happens
-- (-2) unless the batch is still in the state that ends its lines that way: `cancelling` for
-- `cancelled`, `in_progress` past `expires_at` for `expired`. -1: no such batch; else the lines ended.
-- KEYS: batch record, done hash, bulk lane, queue, webhook outbox, webhook delivery
-- ARGV: outcome, now s, delivery, job / in-progress / retry / result prefixes, done channel prefix,
--       then per line: number, job id, model, result JSON
local rec = redis.call('HMGET', KEYS[1], 'purge_at', 'status', 'expires_at')
local purge, now = rec[1], tonumber(ARGV[2])
if not purge then return -1 end
if ARGV[1] == 'cancelled' and rec[2] ~= 'cancelling' then return -2 end
if ARGV[1] == 'expired' and (rec[2] ~= 'in_progress' or now < tonumber(rec[3] or now + 1)) then return -2 end
local field = ARGV[1] == 'cancelled' and 'cancelled' or 'expired'
local ended = 0
for i = 9, #ARGV, 4 do
  local line, id, model = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HEXISTS', KEYS[2], line) == 0 and redis.call('EXISTS', ARGV[5] .. id) == 0
      and redis.call('ZREM', KEYS[3], id) + redis.call('ZREM', KEYS[4], id) > 0 then
    redis.call('HSET', KEYS[2], line, ARGV[1])
    redis.call('SET', ARGV[7] .. id, ARGV[i + 3], 'EXAT', math.max(tonumber(purge), now + 60))
    redis.call('DEL', ARGV[4] .. id, ARGV[6] .. id)
    redis.call('HINCRBY', KEYS[1], 'failed', 1)
    redis.call('HINCRBY', KEYS[1], 'm.' .. model .. '.failed', 1)
    redis.call('HINCRBY', KEYS[1], field, 1)
    redis.call('PUBLISH', ARGV[8] .. id, 'failed')
    ended = ended + 1
  end
end
if ended > 0 then
  redis.call('EXPIREAT', KEYS[2], purge)
  finish_batch(KEYS[1], KEYS[5], KEYS[6], ARGV[3], now, purge)
end
return ended
