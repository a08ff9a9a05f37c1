-- Applies one partition batch atomically: counter deltas, newest event times, dead-letter
-- counts and the partition's next offset, all or nothing.
--
-- The offset is a fence: if another consumer (a zombie after a rebalance, or a replay after a
-- crash) already stored an offset beyond this batch's first, nothing is written and the
-- stored offset is returned so the caller can resume from it.
--
-- KEYS[1] next offset, KEYS[2] totals, KEYS[3] newest times, KEYS[4] dead letters,
-- KEYS[5..] time buckets.
-- ARGV: start, next, then n and n triples (key index, field, delta), then m and m pairs
-- (field, unix time), then k and k pairs (key index, ttl seconds).
local stored = tonumber(redis.call('GET', KEYS[1]) or '-1')
if stored > tonumber(ARGV[1]) then
  return {0, stored}
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
