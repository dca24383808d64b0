-- worker.limits.budgets, a part of worker.limits.limiter's admission (joined after budget_reap and
-- before limiter_admit): a call's worst case is checked against every budget that applies and
-- reserved with its rate-limit slot, in the same script. `budget_admission(now)` (after the gate)
-- answers the refusal the admission returns, or nil; `budget_book(now)` (with the booking) writes
-- the reservation, `B.booked` the amount. Needs the constant REAP_BATCH.
-- The layout: the admission's own KEYS[1..3] and ARGV[1..9] come first (worker.limits.limiter
-- ADMIT_KEYS, ADMIT_ARGS; tests/unit/test_lua.py checks it), then the budget's:
-- KEYS[4] reservations, KEYS[5] deadlines, KEYS[6] learned prices, KEYS[7..] the scopes' hashes.
-- ARGV[10] scopes (0 or absent: no budget), [11] model, [12] prompt tokens, [13] completion tokens,
-- [14]/[15] table price in/out per token ('' none), [16]/[17] unknown price in/out, [18] reservation
-- id, [19] lease ms, [20] cap: refuse a worst case not below it ('' none), [21] daily hash TTL s;
-- per scope i: [20 + 2i] field prefix, [21 + 2i] limit ('' : the hash's `<prefix>limit`, a batch's).
local B = {n = tonumber(ARGV[10] or '0') or 0, worst = 0, applies = {}, booked = ''}
-- the table's price, unless a bill proved it low; else the learned bound; else the unknown price
local function budget_price(table_price, learned, low, unknown)
  local t, l = tonumber(table_price), tonumber(learned)
  if t and not low then return t end
  if l then return math.max(t or 0, l) end
  return t or tonumber(unknown)
end
local function budget_check(now)
  -- the same admission sent again (a client retrying a command whose answer a connection error
  -- cut): its reservation is made already, never twice
  local prior = redis.call('HGET', KEYS[4], ARGV[18])
  if prior then
    B.prior = cjson.decode(prior).w
    return nil
  end
  local m = ARGV[11]
  local learned = redis.call('HMGET', KEYS[6], m .. '|in', m .. '|out', m .. '|low')
  local p_in = budget_price(ARGV[14], learned[1], learned[3], ARGV[16])
  local p_out = budget_price(ARGV[15], learned[2], learned[3], ARGV[17])
  B.worst = tonumber(ARGV[12]) * p_in + tonumber(ARGV[13]) * p_out
  local cap = tonumber(ARGV[20])
  if cap and B.worst > 0 and B.worst >= cap then
    return {'budget', 0, '0', '0', '0', '0', string.format('%.17g', B.worst)}
  end
  budget_reap(now, KEYS[4], KEYS[5], REAP_BATCH)
  local busy = false
  for i = 1, B.n do
    local key, prefix = KEYS[6 + i], ARGV[20 + 2 * i]
    local f = redis.call('HMGET', key, prefix .. 'limit', prefix .. 'spent', prefix .. 'reserved')
    local limit = tonumber(ARGV[21 + 2 * i]) or tonumber(f[1])
    if limit then
      local spent, reserved = tonumber(f[2]) or 0, math.max(tonumber(f[3]) or 0, 0)
      if B.worst > 0 and spent + B.worst > limit + 1e-12 then
        -- it cannot fit whatever the calls in flight cost: refused
        return {'budget', 0, tostring(i), string.format('%.17g', limit), string.format('%.17g', spent),
                string.format('%.17g', reserved), string.format('%.17g', B.worst)}
      end
      -- it fits what is spent, not what calls in flight hold: ask again when they settle
      if B.worst > 0 and spent + reserved + B.worst > limit + 1e-12 then busy = true end
      table.insert(B.applies, i)
    end
  end
  if busy then return {'budget_wait', 0, string.format('%.17g', B.worst)} end
  return nil
end
local function budget_book(now)
  if B.prior then
    B.booked = B.prior
    return
  end
  if #B.applies == 0 then return end
  local scopes, kept = {}, {}
  for _, i in ipairs(B.applies) do
    local key, prefix = KEYS[6 + i], ARGV[20 + 2 * i]
    if B.worst > 0 then redis.call('HINCRBYFLOAT', key, prefix .. 'reserved', B.worst) end
    if ARGV[21 + 2 * i] ~= '' and not kept[key] then
      kept[key] = true
      redis.call('EXPIRE', key, ARGV[21])
    end
    table.insert(scopes, {key, prefix})
  end
  B.booked = string.format('%.17g', B.worst)
  redis.call('HSET', KEYS[4], ARGV[18], cjson.encode({w = B.booked, s = scopes}))
  redis.call('ZADD', KEYS[5], now + tonumber(ARGV[19]), ARGV[18])
end
-- after the gate: a call that cannot fit is refused before anything is booked
local function budget_admission(now)
  if B.n > 0 or (ARGV[20] or '') ~= '' then return budget_check(now) end
  return nil
end
