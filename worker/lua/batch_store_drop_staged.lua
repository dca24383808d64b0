-- worker.batches.store: up to ARGV[2] job records of a batch's staged (never released) lines
-- deleted: how many.
-- KEYS: staged set; ARGV: job record prefix, how many
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
