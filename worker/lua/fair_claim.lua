-- worker.limits.fair, the claim: weighted fair queuing across the sources' sub-queues, by stride scheduling: each source with
-- jobs waiting has a pass (virtual time); a pick takes the front job of the source with the
-- lowest pass and moves that pass on by 1/weight, so over any stretch where sources wait each
-- is picked in proportion to its weight, and a source alone is picked every time
-- (work-conserving). All of it lives in Redis and changes only here, so every worker shares one
-- rotation. A source whose front job is not due yet (deferred by a rate limit), or that has its
-- SOURCE_LIMITS concurrency running, is passed over this time, losing nothing but the credit:
-- a pass is never kept behind the clock (no source banks credit while it cannot run).
-- A picked job is claimed as the bulk lane's are (worker.process.lease PROMOTE): into the queue, scored
-- at its lease's end, in progress under the lease, its run counted; and listed as running for its
-- source until its lease ends or its worker lets it go.
-- A source with an rpm/tpm quota is given no more jobs than its schedule (worker.limits.limiter) can
-- start within the horizon: the rest wait in its sub-queue, holding no worker slot.
-- KEYS: passes, clock, queue
-- ARGV: free slots, now ms, lease ms, job record / in-progress / result / retry / waiting / running
--       prefixes, most jobs to take off, quota hash prefix, horizon ms, then (source, weight,
--       concurrency or 0, ms between requests or 0, has a quota 1/0) for the sources the settings
--       name (others: weight 1, no limit)
-- Answers seven values a job: id, score, what (run/done/missing/error), record, tries, source, and
-- its score in the sub-queue (a job that gives its slot back returns there, in its place).
-- With a lease of 0 the picked jobs are only moved to the queue, due now ('fed': FairQueue.feed).
local free, now, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local jp, ip, rp, tp, wp, runp = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local pops, qp, horizon = tonumber(ARGV[10]), ARGV[11], tonumber(ARGV[12])
local conf = {}
for i = 13, #ARGV, 5 do
  conf[ARGV[i]] = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4] == '1'}
end
local clock = tonumber(redis.call('GET', KEYS[2]) or '0')
local sources = {}
local listed = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #listed, 2 do
  local name = listed[i]
  local c, pass = conf[name] or {1, 0, 0, false}, tonumber(listed[i + 1])
  local s = {name = name, pass = math.max(pass, clock), stride = 1 / c[1], room = -1, moved = pass < clock}
  if c[2] > 0 then
    redis.call('ZREMRANGEBYSCORE', runp .. name, '-inf', now)
    s.room = math.max(c[2] - redis.call('ZCARD', runp .. name), 0)
  end
  if c[4] then
    local q = redis.call('HMGET', qp .. name, 'r', 't')
    local r, t = math.max(tonumber(q[1]) or 0, now), tonumber(q[2]) or 0
    local room = 0
    if t <= now + horizon and r <= now + horizon then
      room = c[3] > 0 and math.floor((now + horizon - r) / c[3]) + 1 or -1
    end
    if room >= 0 and (s.room < 0 or room < s.room) then s.room = room end
  end
  table.insert(sources, s)
end
local out, score, picked = {}, now + lease, nil
while free > 0 and pops > 0 do
  local best = nil
  for _, s in ipairs(sources) do
    if not s.out and s.room ~= 0 and (best == nil or s.pass < best.pass) then best = s end
  end
  if best == nil then break end
  local waiting = wp .. best.name
  local front = redis.call('ZPOPMIN', waiting)
  if #front == 0 then
    best.out, best.empty = true, true
  elseif tonumber(front[2]) > now then
    redis.call('ZADD', waiting, front[2], front[1])  -- not due yet (deferred): back, untouched
    best.out = true
  else
    pops = pops - 1
    local id, what, record, tries = front[1], 'run', '', 0
    best.touched, picked = true, best.pass
    if redis.call('EXISTS', rp .. id) == 1 then
      what = 'done'
      redis.call('DEL', jp .. id)
    elseif redis.call('EXISTS', jp .. id) == 0 then
      what = 'missing'
    elseif lease == 0 then
      -- feeding arq's own Worker (see FairQueue.feed): into the queue, due now, not held
      what, free = 'fed', free - 1
      best.pass = best.pass + best.stride
      redis.call('ZADD', KEYS[3], now, id)
    else
      free = free - 1
      best.pass = best.pass + best.stride
      if best.room > 0 then best.room = best.room - 1 end
      redis.call('ZADD', KEYS[3], score, id)
      redis.call('PSETEX', ip .. id, lease, '1')
      redis.call('ZADD', runp .. best.name, score, id)
      best.ran = true
      record = redis.call('GET', jp .. id)
      tries = redis.pcall('INCR', tp .. id)
      if type(tries) == 'table' then
        what, record, tries = 'error', tries.err, 0
      else
        redis.call('EXPIRE', tp .. id, RETRY_KEY_TTL_S)
      end
    end
    for _, v in ipairs({id, score, what, record, tries, best.name, front[2]}) do table.insert(out, v) end
  end
end
for _, s in ipairs(sources) do
  if s.ran then redis.call('PEXPIRE', runp .. s.name, lease) end
  if s.empty or (s.touched and redis.call('EXISTS', wp .. s.name) == 0) then
    redis.call('ZREM', KEYS[1], s.name)
  elseif s.touched or s.moved then
    redis.call('ZADD', KEYS[1], 'XX', string.format('%.17g', s.pass), s.name)
  end
end
if picked then redis.call('SET', KEYS[2], string.format('%.17g', picked)) end
return out
