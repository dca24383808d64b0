-- worker.batches.store: forget a batch that was never released (still `validating`, or reaped:
-- `interrupted`), if `owner` is '' or its owner: a failed submission taking itself back, or a
-- schedule taking over a dead worker's tick. 1 dropped, 0 no such batch, -1 not dropped.
-- KEYS: batch record, line list, staged set, the batch list; ARGV: batch id, owner ('' any)
local rec = redis.call('HMGET', KEYS[1], 'status', 'owner', 'interrupted')
if not rec[1] then return 0 end
if rec[1] ~= 'validating' and not (rec[1] == 'failed' and rec[3]) then return -1 end
if ARGV[2] ~= '' and rec[2] ~= ARGV[2] then return -1 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
