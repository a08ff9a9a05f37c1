-- Applies one partition batch atomically: counter deltas, newest event times, dead-letter
-- counts and the partition's next offset, all or nothing.
--
-- The offset is a compare-and-set fence: the caller says which offset it believes is stored
-- (-1 for none). If another consumer stored further (a zombie after a rebalance), or Redis
-- lost its last writes in a crash and holds an older offset, nothing is written and the
-- stored offset is returned so the caller resumes from it.
--
-- KEYS[1] next offset, KEYS[2] totals, KEYS[3] newest times, KEYS[4] dead letters,
-- KEYS[5..] time buckets.
-- ARGV: expected stored offset, next, then n and n triples (key index, field, delta), then m and m pairs
-- (field, unix time), then k and k pairs (key index, ttl seconds).
local stored = tonumber(redis.call('GET', KEYS[1]) or '-1')
if stored ~= tonumber(ARGV[1]) then
  return {0, stored}
end
-- New hashes get one long field so Redis stores them as hash tables at once: these hashes
-- grow to hundreds of fields, and as listpacks (the default up to 512 fields) every update
-- would scan them. Readers skip fields starting with '~'.
local pin = string.rep('~', 80)
for k = 2, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 0 then
    redis.call('HSET', KEYS[k], '~', pin)
  end
end
local i = 3
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local current = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('EXPIRE', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
  i = i + 2
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, tonumber(ARGV[2])}
