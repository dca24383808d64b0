-- worker.batches.record: store a line's result and count it, once (after the parts outbox_queue_delivery
-- and batch_record_finish). The result lives as long as its batch (`purge_at`). The last line
-- counted moves the batch through finalizing to its final status (nothing is left to assemble: the
-- output is read from the line results, so both timestamps are set at once). A batch with a
-- callback_url queues its webhook delivery as it ends (worker.outputs.outbox).
-- 1 counted now, 0 counted before, -1 no such batch.
-- KEYS: result, batch record, done hash, webhook outbox, webhook delivery
-- ARGV: result JSON, line, outcome, cost ('' unknown), prompt tokens, completion tokens, model,
--       now s, channel, result status, delivery
local purge = redis.call('HGET', KEYS[2], 'purge_at')
if not purge then return -1 end
if redis.call('HSETNX', KEYS[3], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('EXPIREAT', KEYS[3], purge)
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', math.max(tonumber(purge), tonumber(ARGV[8]) + 60))
local ok = ARGV[3] == 'succeeded'
local per_model = 'm.' .. ARGV[7] .. '.'
redis.call('HINCRBY', KEYS[2], ok and 'completed' or 'failed', 1)
redis.call('HINCRBY', KEYS[2], per_model .. (ok and 'completed' or 'failed'), 1)
if ARGV[3] == 'cancelled' or ARGV[3] == 'expired' or ARGV[3] == 'skipped' then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
end
if ARGV[4] ~= '' then
  redis.call('HINCRBYFLOAT', KEYS[2], 'cost_usd', ARGV[4])
  redis.call('HINCRBYFLOAT', KEYS[2], per_model .. 'cost_usd', ARGV[4])
end
redis.call('HINCRBY', KEYS[2], 'prompt_tokens', ARGV[5])
redis.call('HINCRBY', KEYS[2], 'completion_tokens', ARGV[6])
finish_batch(KEYS[2], KEYS[4], KEYS[5], ARGV[11], ARGV[8], purge)
redis.call('PUBLISH', ARGV[9], ARGV[10])
return 1
