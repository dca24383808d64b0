-- producers.files: record an uploaded file whose reservation holds (its record, TTLs, the owner's
-- list) and drop the reservation: 1, or -2 when its lease lapsed (nothing recorded).
-- KEYS: the owner's list, its uploads in progress, the file's record, its data; ARGV: upload id,
-- now ms, TTL s, file id, then the record's fields.
local held = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local ends = held and string.match(held, ':(%d+)$')
if not ends or tonumber(ends) < tonumber(ARGV[2]) then return -2 end
redis.call('HSET', KEYS[3], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
