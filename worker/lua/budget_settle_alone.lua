-- worker.limits.budgets: a settlement without a limiter settle (joined after budget_settle).
-- KEYS: reservations, deadlines, learned prices; ARGV: budget_settle's nine arguments
return budget_settle(KEYS[1], KEYS[2], KEYS[3], ARGV)
