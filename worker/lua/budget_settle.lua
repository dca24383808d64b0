-- worker.limits.budgets, a part of worker.limits.limiter's settle script (one round trip for both)
-- and of budget_settle_alone: a reservation's settlement.
-- `budget_settle(reservations, deadlines, learned prices, a)`, `a` the arguments: a[1] reservation
-- id ('' none), a[2] cost ('' unknown: the worst case), a[3] model, a[4] prompt tokens, a[5]
-- completion tokens, a[6] learn (1: the cost is the gateway's bill), a[7] learn margin, a[8]/a[9]
-- table price in/out per token ('' none: a bill above the table's price flags it low,
-- `<model>|low`). Nine: worker.limits.budgets SETTLE_ARGS. Answers 1 if it settled a reservation.
local function budget_settle(res, deadlines, learned, a)
  local settled = 0
  local raw = a[1] ~= '' and redis.call('HGET', res, a[1])
  if raw then
    local r = cjson.decode(raw)
    local w = tonumber(r.w)
    local cost = tonumber(a[2]) or w
    for _, s in ipairs(r.s) do
      if not r.x and w > 0 then redis.call('HINCRBYFLOAT', s[1], s[2] .. 'reserved', -w) end
      if cost > 0 then redis.call('HINCRBYFLOAT', s[1], s[2] .. 'spent', cost) end
    end
    redis.call('HDEL', res, a[1])
    redis.call('ZREM', deadlines, a[1])
    settled = 1
  end
  local p, c, cost, margin = tonumber(a[4]), tonumber(a[5]), tonumber(a[2]), 1 + tonumber(a[7])
  local ti, to = tonumber(a[8]), tonumber(a[9])
  -- a model priced by a table learns only from a bill above the table's price (then flagged low)
  local low = ti and to and a[6] == '1' and (p * ti + c * to) * margin < cost
  if low then redis.call('HSET', learned, a[3] .. '|low', 1) end
  if a[6] == '1' and (low or not (ti and to)) then
    local fin, fout = a[3] .. '|in', a[3] .. '|out'
    local l = redis.call('HMGET', learned, fin, fout)
    local li, lo = tonumber(l[1]), tonumber(l[2])
    -- a bill the bounds cannot explain (the price rose): start again from this bill. A side with
    -- tokens and no bound yet explains any bill.
    local explained = (p > 0 and li == nil) or (c > 0 and lo == nil) or ((li or 0) * p + (lo or 0) * c) * margin >= cost
    if (li ~= nil or lo ~= nil) and not explained then
      redis.call('HDEL', learned, fin, fout)
      li, lo = nil, nil
    end
    if p > 0 and (li == nil or cost / p * margin < li) then redis.call('HSET', learned, fin, cost / p * margin) end
    if c > 0 and (lo == nil or cost / c * margin < lo) then redis.call('HSET', learned, fout, cost / c * margin) end
  end
  return settled
end
