-- worker.limits.budgets: the keeper (joined after budget_reap): renews this process's live
-- reservations' deadlines and reaps those past theirs. Needs the constant REAP_BATCH.
-- KEYS: reservations, deadlines; ARGV: lease ms, the ids to renew (this process's live reservations)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
return budget_reap(now, KEYS[1], KEYS[2], REAP_BATCH)
