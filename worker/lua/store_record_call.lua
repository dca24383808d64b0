-- worker.contract.store: the call, its spend and usage per day by model, source, batch and route
-- (and by source and model together), and the credits, in one script: only the first write of a
-- call id counts, so each real call is counted exactly once.
-- KEYS: calls hash, spend total, credits, then per dimension of SPEND_RECORDS its spend-day and usage-day keys
-- ARGV: call id, attempt JSON, cost ('' unknown), credits remaining ('' unknown), calls TTL s, day TTL s,
--       prompt tokens, completion tokens, then per dimension its name ('' none: not counted by it)
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], 'remaining', ARGV[4], 'updated_at', redis.call('TIME')[1])
end
for i = 0, (#KEYS - 3) / 2 - 1 do
  local name, spend, usage = ARGV[9 + i], KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  if name ~= '' then
    -- a day's hash gets its expiry with its first field (a field's first increment): fewer writes per call
    if ARGV[3] ~= '' then
      if i == 0 then redis.call('HINCRBYFLOAT', KEYS[2], name, ARGV[3]) end
      if tonumber(redis.call('HINCRBYFLOAT', spend, name, ARGV[3])) == tonumber(ARGV[3]) then
        redis.call('EXPIRE', spend, ARGV[6])
      end
    end
    if redis.call('HINCRBY', usage, 'calls|' .. name, 1) == 1 then redis.call('EXPIRE', usage, ARGV[6]) end
    if ARGV[7] ~= '0' then redis.call('HINCRBY', usage, 'prompt|' .. name, ARGV[7]) end
    if ARGV[8] ~= '0' then redis.call('HINCRBY', usage, 'completion|' .. name, ARGV[8]) end
  end
end
return 1
