-- worker.limits.fair, a part of worker.limits.limiter's admission (joined before it): the slot line (fair share in the rate limit): the interactive jobs that wait for a model's
-- next rate-limit slot, fleet-wide, each tagged by weighted fair queuing among the sources that
-- have jobs waiting: a job's tag is its source's last tag in the line (or the line's virtual
-- time, the tag of the last job that booked, if later) plus 1/weight. A slot within reach is
-- booked only by the job with the lowest tag (and by a job whose tag is lower than every
-- member's: B's first job waits behind none of A's); the others are told how long until their
-- turn (the slot's distance past the horizon, plus a request interval for each job ahead) and
-- join the line (unless they give their worker slot back instead). So the order jobs get slots
-- in is the sources' fair order, not whoever asks first, and a source that starts waiting goes
-- first, not behind the jobs another source has waiting. Bulk jobs have a line of their own,
-- by the same weights, behind every interactive member: a bulk job books only while the
-- interactive line is empty and its turn in the bulk line has come. A member that does not ask
-- again within LINE_GRACE_MS of its time is taken off (its worker died). The admission's ARGV ends with '@line', job id, source, 'stride,join,grace ms,
-- recheck cap ms,request interval ms,horizon ms,bulk' and its KEYS with LineTicket's four.
local function line_purge(lk, sk, id, now)
  for _ = 1, 16 do  -- members whose worker did not come back in time: off
    local front = redis.call('ZRANGE', lk, 0, 0)
    if #front == 0 or front[1] == id then return end
    local due = tonumber(redis.call('HGET', sk, 'd:' .. front[1]))
    if due and due >= now then return end
    redis.call('ZREM', lk, front[1])
    redis.call('HDEL', sk, 'd:' .. front[1])
  end
end
local function line_open(now, lk, sk, blk, bsk, id, src, spec)
  local v = {}
  for x in string.gmatch(spec, '[^,]+') do table.insert(v, tonumber(x)) end
  local L = {id = id, src = src, stride = v[1], join = v[2] == 1, grace = v[3], cap = v[4], r = v[5],
             horizon = v[6], now = now}
  line_purge(lk, sk, id, now)
  L.ahead = 0
  if v[7] == 1 then  -- a bulk job: behind every interactive member, in its own line
    L.ahead = redis.call('ZCARD', lk)
    lk, sk = blk, bsk
    line_purge(lk, sk, id, now)
  end
  L.lk, L.sk = lk, sk
  local tag = redis.call('ZSCORE', lk, id)
  if tag then
    L.tag, L.member = tonumber(tag), true
  else
    if redis.call('EXISTS', lk) == 0 then redis.call('DEL', sk) end  -- an empty line starts afresh
    local s = redis.call('HMGET', sk, 'vt', 's:' .. src)
    L.tag = math.max(tonumber(s[1]) or 0, tonumber(s[2]) or 0) + L.stride
  end
  L.ahead = L.ahead + redis.call('ZCOUNT', lk, '-inf', '(' .. string.format('%.17g', L.tag))
  return L
end
-- not booked: the wait until its turn, and whether the job is in the line: it joins (or stays)
-- if it may, or if its turn is next (no worker slot is held long for that)
local function line_wait(L, wait)
  local est = math.max(wait, 0) + L.ahead * L.r
  local joins = L.join or L.ahead == 0 or L.member
  if joins then
    if not L.member then
      redis.call('ZADD', L.lk, string.format('%.17g', L.tag), L.id)
      redis.call('HSET', L.sk, 's:' .. L.src, string.format('%.17g', L.tag))
    end
    local asks = math.min(math.max(est - L.horizon, 0), L.cap)
    redis.call('HSET', L.sk, 'd:' .. L.id, math.ceil(L.now + asks + L.grace))
    redis.call('PEXPIRE', L.lk, 600000)
    redis.call('PEXPIRE', L.sk, 600000)
  end
  return est, joins
end
-- booked: off the line, the line's virtual time at its tag; a job that booked without joining
-- while others wait counts as its source's last tag (its next one goes behind theirs)
local function line_booked(L)
  if L.member then
    redis.call('ZREM', L.lk, L.id)
    redis.call('HDEL', L.sk, 'd:' .. L.id)
  elseif redis.call('EXISTS', L.lk) == 0 then
    return
  else
    redis.call('HSET', L.sk, 's:' .. L.src, string.format('%.17g', L.tag))
  end
  local vt = tonumber(redis.call('HGET', L.sk, 'vt')) or 0
  if L.tag > vt then redis.call('HSET', L.sk, 'vt', string.format('%.17g', L.tag)) end
end
