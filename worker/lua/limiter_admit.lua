-- worker.limits.limiter: the admission (joined after fair_line, budget_reap and budget_admit).
-- KEYS: gate (worker.limits.gate: a paused queue admits nothing), model hash, global hash
-- ARGV: request interval ms, ms per token, tokens, global request interval ms, global ms per token,
--       max wait ms, probe lease ms, TPM limit, global TPM limit (0: none)
-- then the budget's KEYS[4..] and ARGV[10..] (worker/lua/budget_admit.lua: its reservation is made here, with the booking)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gate = redis.call('GET', KEYS[1])
if gate then return {'gate', 0, gate} end
local refused = budget_admission(now)
if refused then return refused end
local tokens = tonumber(ARGV[3])
-- Fair share's slot line (worker/lua/fair_line.lua), when given: the last four ARGV ('@line',
-- job id, source, numbers) and the last four keys (the line and its state, the bulk line and its).
local n, nk, line = #ARGV, #KEYS, nil
if n >= 13 and ARGV[n - 3] == '@line' then
  line = {KEYS[nk - 3], KEYS[nk - 2], KEYS[nk - 1], KEYS[nk], ARGV[n - 2], ARGV[n - 1], ARGV[n]}
  n, nk = n - 4, nk - 4
end
-- A source's quota (SOURCE_LIMITS, worker.limits.fair), when given: the six ARGV before those ('@source',
-- name, request interval ms, ms per token, TPM limit, horizon ms) and the key before those (its
-- hash r / t).
local S = nil
if n >= 15 and ARGV[n - 5] == '@source' then
  S = {key = KEYS[nk], r = tonumber(ARGV[n - 3]), t = tonumber(ARGV[n - 2]), tpm = tonumber(ARGV[n - 1]),
       horizon = tonumber(ARGV[n])}
end
-- A booking moves the token schedule by tokens * ms-per-token. More tokens than the TPM limit
-- would move it more than a whole window: such a request can never fit the limit, and booking
-- it would hold every later caller of the model that long. Refuse it at once, book nothing.
local function over(limit) return limit > 0 and tokens > limit end
if over(tonumber(ARGV[8])) then return {'too_large', 0, 'model'} end
if over(tonumber(ARGV[9])) then return {'too_large', 0, 'global'} end
if S and over(S.tpm) then return {'too_large', 0, 'source'} end
local m = redis.call('HMGET', KEYS[2], 'r', 't', 'open_until', 'probe', 'p')
local open_until = tonumber(m[3]) or 0
local probing = false
if open_until > 0 then
  if open_until > now then return {'circuit', open_until - now} end
  -- half-open: one probe call at a time across all workers. The others ask again soon
  -- ('probing', nothing booked): the probe's lease is only its worst case (the request
  -- timeout), a healthy probe settles in well under a second and closes the circuit.
  local probe = tonumber(m[4]) or 0
  if probe > now then return {'probing', probe - now} end
  probing = true
end
local g = redis.call('HMGET', KEYS[3], 'r', 't')
local sr, st = 0, 0
if S then
  local v = redis.call('HMGET', S.key, 'r', 't')
  sr, st = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  -- the source is at its quota: its job waits in its sub-queue, not in a worker slot ('quota')
  local until_free = math.max(sr, st) - now
  if until_free > S.horizon then return {'quota', math.ceil(until_free)} end
end
local start = math.max(now, tonumber(m[1]) or 0, tonumber(m[5]) or 0, tonumber(g[1]) or 0, sr)
local wait = start - now
-- fair share: the slot goes to the job whose turn it is in the line; the others are told when theirs is
-- ('line': as 'wait', the job in the line; 'retry' always is)
local L = line and line_open(now, unpack(line))
if L and (L.ahead > 0 or wait > tonumber(ARGV[6])) then
  local est, joined = line_wait(L, wait)
  return {joined and 'line' or 'wait', math.ceil(est)}
end
if wait > tonumber(ARGV[6]) then return {'wait', math.ceil(wait)} end
-- Tokens are not booked ahead: an estimate booked far into the future could not benefit
-- from the unused tokens that `settle` gives back. Until the tokens booked so far are
-- paid for, the caller sleeps and asks again ('retry'), nothing booked.
local tokens_free = math.max(tonumber(m[2]) or 0, tonumber(g[2]) or 0, st)
if tokens_free > start then
  local until_free = tokens_free - now
  if L then line_wait(L, until_free) end
  return {until_free > tonumber(ARGV[6]) and 'wait' or 'retry', math.ceil(until_free)}
end
if L then line_booked(L) end
-- book: the next request / token may start one interval after this one
local function book(key, r_ms, t_ms)
  local r_next = start + r_ms
  local t_next = start + tokens * t_ms
  if r_ms > 0 then redis.call('HSET', key, 'r', r_next) end
  if t_ms > 0 then redis.call('HSET', key, 't', t_next) end
  redis.call('PEXPIRE', key, math.ceil(math.max(r_next, t_next) - now) + 3600000)
end
budget_book(now)
book(KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]))
if probing then redis.call('HSET', KEYS[2], 'probe', start + tonumber(ARGV[7])) end
if tonumber(ARGV[4]) > 0 or tonumber(ARGV[5]) > 0 then book(KEYS[3], tonumber(ARGV[4]), tonumber(ARGV[5])) end
if S then book(S.key, S.r, S.t) end
return {probing and 'probe' or 'ok', math.ceil(wait), B.booked}
