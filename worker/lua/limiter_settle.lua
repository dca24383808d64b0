-- worker.limits.limiter: the settlement (joined after budget_settle).
-- KEYS: model hash, global hash, the settlement's mark (keys.settled_key)
-- ARGV: tokens to give back, ms per token, global ms per token, outcome (ok|fail|neutral),
--       pause ms, circuit failures, circuit window ms, circuit open ms, mark ms
-- then a budget settlement's KEYS[4..6] and ARGV[10..] (worker/lua/budget_settle.lua), settled first.
-- A settlement sent again by the client after a lost answer (worker.process.scripts) finds its mark and
-- answers what its first run did: tokens are given back, a failure counted, once.
-- A source's quota (SOURCE_LIMITS), when the call booked on it: the last two ARGV ('@source', its
-- ms per token) and the last key (its hash) get their tokens back too.
local seen = redis.call('GET', KEYS[3])
if seen then return tonumber(seen) end
redis.call('SET', KEYS[3], 0, 'PX', ARGV[9])
-- a budget settlement first (a source's quota alone adds one key and '@source' after the script's own)
if #KEYS > 3 and ARGV[10] ~= '@source' then budget_settle(KEYS[4], KEYS[5], KEYS[6], {unpack(ARGV, 10, 18)}) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local refund = tonumber(ARGV[1])
if refund ~= 0 then
  local tt = tonumber(redis.call('HGET', KEYS[1], 't'))
  if tt then redis.call('HSET', KEYS[1], 't', tt - refund * tonumber(ARGV[2])) end
  local gt = tonumber(redis.call('HGET', KEYS[2], 't'))
  if gt and tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[2], 't', gt - refund * tonumber(ARGV[3])) end
  if ARGV[#ARGV - 1] == '@source' then
    local st = tonumber(redis.call('HGET', KEYS[#KEYS], 't'))
    if st then redis.call('HSET', KEYS[#KEYS], 't', st - refund * tonumber(ARGV[#ARGV])) end
  end
end
local pause = tonumber(ARGV[5])
if pause > 0 then
  local p = tonumber(redis.call('HGET', KEYS[1], 'p')) or 0
  if now + pause > p then redis.call('HSET', KEYS[1], 'p', now + pause) end
  redis.call('PEXPIRE', KEYS[1], pause + 3600000)
end
local outcome = ARGV[4]
if outcome == 'ok' then
  redis.call('HDEL', KEYS[1], 'fails', 'fails_since', 'open_until', 'probe')
elseif outcome == 'neutral' then
  -- half-open and the call said nothing about the model's health (a 429, a 4xx): free the
  -- probe slot, so the next caller probes instead of everyone waiting out the probe's lease
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until')) or 0
  if open_until > 0 and open_until <= now then redis.call('HDEL', KEYS[1], 'probe') end
elseif outcome == 'fail' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until')) or 0
  local since = tonumber(redis.call('HGET', KEYS[1], 'fails_since')) or 0
  if now - since > tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], 'fails', 0, 'fails_since', now)
  end
  local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
  -- a failed probe (half-open) re-opens at once
  if fails >= tonumber(ARGV[6]) or open_until > 0 then
    redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[8]), 'fails', 0, 'fails_since', now)
    redis.call('HDEL', KEYS[1], 'probe')
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[8]) + 3600000)
    redis.call('SET', KEYS[3], 1, 'PX', ARGV[9])
    return 1
  end
end
return 0
