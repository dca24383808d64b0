-- worker.outputs.outbox: claim the due deliveries (at most ARGV[3]): each is pushed ARGV[2] s ahead,
-- so only a sender that dies before writing its outcome leaves it to be tried again.
-- KEYS: outbox; ARGV: now s, lease s, most
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, d in ipairs(due) do redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), d) end
return due
