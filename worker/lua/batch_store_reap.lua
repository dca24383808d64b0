-- worker.batches.store: a batch whose submission's lease ran out before it released the lines (its
-- process died, or lost Redis; `validating`, or `cancelling` if cancelled meanwhile): `failed`, with
-- the error saying so; its owner is forgotten, so a stalled submission that wakes up writes nothing
-- more. Nothing of it was queued. 1 reaped, 0 not.
-- KEYS: batch record, line list; ARGV: now s, errors JSON
local rec = redis.call('HMGET', KEYS[1], 'status', 'lease_until')
if not rec[2] or (rec[1] ~= 'validating' and rec[1] ~= 'cancelling') then return 0 end
local t = redis.call('TIME')
if t[1] * 1000 + math.floor(t[2] / 1000) <= tonumber(rec[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'failed_at', ARGV[1], 'errors', ARGV[2], 'interrupted', '1')
redis.call('HDEL', KEYS[1], 'owner', 'lease_until')
redis.call('DEL', KEYS[2])
return 1
