-- worker.batches.store: cancel a batch: `validating` or `in_progress` becomes `cancelling`; any
-- other status is left as it is. Returns the status after the call (nil: no such batch).
-- KEYS: batch record; ARGV: now s
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
  return 'cancelling'
end
return status
