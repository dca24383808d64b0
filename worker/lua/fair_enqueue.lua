-- worker.limits.fair, a part of the enqueue script (worker/lua/records_enqueue.lua): where a job
-- that starts waiting goes: the sub-queue of its source, or of `other` when the source is not one
-- the settings name and the fleet has given FAIR_SHARE_MAX_SOURCES others a sub-queue already; a
-- source that had nothing waiting joins the claim's rotation at the clock (the virtual time of the
-- last pick): it gets its share from now on, never credit for the time it sent nothing.
-- `fair_enqueue(passes, clock, seen, source, known, bound, waiting prefix, score, id)` answers the
-- source it used.
local function fair_enqueue(passes, clock, seen, src, known, bound, prefix, score, id)
  if known ~= '1' and redis.call('SISMEMBER', seen, src) == 0 then
    if redis.call('SCARD', seen) < tonumber(bound) then redis.call('SADD', seen, src) else src = 'other' end
  end
  redis.call('ZADD', prefix .. src, score, id)
  if not redis.call('ZSCORE', passes, src) then  -- (a flood: one command, not two, per job)
    redis.call('ZADD', passes, tonumber(redis.call('GET', clock) or '0'), src)
  end
  return src
end
