-- worker.batches.store: the submission's lease renewed, while the record is still its own and not
-- released: 1, else 0.
-- KEYS: batch record; ARGV: owner, lease ms
local rec = redis.call('HMGET', KEYS[1], 'owner', 'lease_until')
if rec[1] ~= ARGV[1] or not rec[2] then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'lease_until', t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[2])
return 1
