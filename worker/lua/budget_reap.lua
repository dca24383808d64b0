-- worker.limits.budgets, a part of the admission (worker.limits.limiter) and of budget_keep:
-- `budget_reap(now, reservations, deadlines, limit)` releases up to `limit` reservations past their
-- deadline (a dead worker's), keeping each as a tombstone for TOMBSTONE_MS (a constant) so that a
-- late settle still adds its cost once, and drops the tombstones past theirs. Answers how many it
-- looked at.
local function budget_reap(now, res, deadlines, limit)
  local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    local raw = redis.call('HGET', res, id)
    local r = raw and cjson.decode(raw)
    if r and not r.x then
      local w = tonumber(r.w)
      if w > 0 then
        for _, s in ipairs(r.s) do redis.call('HINCRBYFLOAT', s[1], s[2] .. 'reserved', -w) end
      end
      r.x = 1
      redis.call('HSET', res, id, cjson.encode(r))
      redis.call('ZADD', deadlines, now + TOMBSTONE_MS, id)
    else
      redis.call('HDEL', res, id)
      redis.call('ZREM', deadlines, id)
    end
  end
  return #due
end
