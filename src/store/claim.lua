-- Claims event ids against duplicates, for any number of claim buckets, atomically.
--
-- A claim is a hash field (the 14-byte digest of the event id) in the bucket of its shard and
-- event week, valued with the claimant's 12-byte `partition, offset`. The same message replayed
-- after a crash finds its own value and is new again; a re-send (another offset) finds another
-- value and is a duplicate. Existing claims are read with one HMGET and new ones written with
-- one HSET per bucket, so Redis parses, executes and logs to its AOF a few large commands.
--
-- Claims come packed, one string per bucket of 26-byte records (digest, then value): Redis
-- parses one argument per bucket instead of two per event, and a batch's claims fit one call,
-- so under `appendfsync always` they cost one fsync.
--
-- A bucket lives at least the horizon after its last claim, and at most an hour more.
--
-- Each id comes at most once per call (the caller settles repeats inside its batch from the
-- answer for the first), so no table of this call's own claims is kept.
--
-- KEYS: the buckets. ARGV[1]: horizon in seconds; ARGV[1 + k]: the claims of KEYS[k].
-- Returns, for each duplicate, its position (from 1, in argument order) and the value that
-- owns its id: usually nothing, so the answer stays small and no per-claim flag is built.
local CHUNK = 2000 -- unpack() in Redis's Lua takes at most about 8000 values
local SIZE, ID = 26, 14
local sub = string.sub
local horizon = tonumber(ARGV[1])
local dups = {}
local before = 0 -- claims in the buckets before this one
for k = 1, #KEYS do
  local key, packed = KEYS[k], ARGV[1 + k]
  local n = #packed / SIZE
  local ttl = redis.call('TTL', key)
  if ttl == -2 then
    -- Hash-table encoding from the start: see apply.lua.
    redis.call('HSET', key, '~', string.rep('~', 80))
  end
  local ids = {}
  for j = 1, n do
    local at = (j - 1) * SIZE
    ids[j] = sub(packed, at + 1, at + ID)
  end
  local new, m = {}, 0
  for s = 1, n, CHUNK do
    local e = math.min(s + CHUNK - 1, n)
    local have = redis.call('HMGET', key, unpack(ids, s, e))
    for j = s, e do
      local id, at = ids[j], (j - 1) * SIZE
      local value = sub(packed, at + ID + 1, at + SIZE)
      local owner = have[j - s + 1]
      if not owner then
        new[m + 1], new[m + 2] = id, value
        m = m + 2
      elseif owner ~= value then
        dups[#dups + 1] = before + j
        dups[#dups + 1] = owner
      end
    end
  end
  for s = 1, m, 2 * CHUNK do
    redis.call('HSET', key, unpack(new, s, math.min(s + 2 * CHUNK - 1, m)))
  end
  if ttl < horizon then
    -- An hour over the horizon, so a bucket claimed all the time is not refreshed each call.
    redis.call('EXPIRE', key, horizon + 3600)
  end
  before = before + n
end
return dups
