-- worker.process.wake: the earliest due time (ms) of what an idle worker could take: the queue's
-- front and each waiting source's front (worker.limits.fair); the bulk lane's jobs are due at once
-- (0). nil: nothing.
-- KEYS: queue, bulk lane, fair passes; ARGV: fair waiting prefix
if redis.call('EXISTS', KEYS[2]) == 1 then return '0' end
local best = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
best = best and tonumber(best)
for _, name in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local front = redis.call('ZRANGE', ARGV[1] .. name, 0, 0, 'WITHSCORES')[2]
  if front and (not best or tonumber(front) < best) then best = tonumber(front) end
end
return best and string.format('%.17g', best) or false
