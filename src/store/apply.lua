-- Applies partition batches: for each, its counter deltas, newest event times, dead-letter
-- counts and next offset, all or nothing. One call carries every partition of a batch on a
-- single Redis (one fsync under `appendfsync always`), or one partition on Redis Cluster.
-- On a single Redis it usually runs inside a MULTI/EXEC transaction without the counter
-- deltas, which follow it there as plain HINCRBY commands (see `Store::apply_watched`).
--
-- Each partition's offset is a compare-and-set fence: the caller says which offset it believes
-- is stored (-1 for none). If another consumer stored further (a zombie after a rebalance), or
-- Redis lost its last writes in a crash and holds an older offset, nothing of that partition
-- is written and the stored offset is returned so the caller resumes from it.
--
-- Each write also stores the caller's writer token (unique to the call) in the totals hash's
-- field '~w': a caller that holds counter values in memory writes them back only onto the
-- state that has its token (see `Store::current` and fence.lua).
--
-- ARGV[1]: the number of partitions. ARGV[2]: 1 when KEYS[1] is the directory of partition
-- tags to add each partition's tag to, else 0. ARGV[3]: how many texts a list keeps.
-- ARGV[4]: the writer token. Then per
-- partition: its key count, its tag (only with a directory), expected stored offset, next,
-- then n and n triples (key index, field, delta) to add, then m and m triples (key index,
-- field, unix time) to raise to (grouped by key, each field once), then s and s triples (key
-- index, list, text) to push, oldest first, onto lists kept as fields `<list>|0` (newest) to
-- `<list>|<keep - 1>`, then k and k pairs (key index, seconds it lives: relative to the
-- caller's clock, which in the demo runs in the past). A partition's keys follow the previous
-- partition's: next offset, totals, newest times, dead letters, then the others (time
-- buckets, per-source counters); key indexes count from its first key, from 1.
-- Returns a flat array of (1 stored | 0 fenced, offset) per partition.
--
-- New hashes get one long field so Redis stores them as hash tables at once: these hashes
-- grow to hundreds of fields, and as listpacks (the default up to 512 fields) every update
-- would scan them. Readers skip fields starting with '~'.
local pin = string.rep('~', 80)
local RUN = 2000 -- fields per HMGET: unpack() in Redis's Lua takes at most about 8000 values
local partitions = tonumber(ARGV[1])
local directory = ARGV[2] == '1'
local keep = tonumber(ARGV[3])
local writer = ARGV[4]
local base = directory and 1 or 0 -- KEYS before this partition's
local i = 5
local out = {}
for _ = 1, partitions do
  local nkeys = tonumber(ARGV[i])
  i = i + 1
  if directory then
    redis.call('SADD', KEYS[1], ARGV[i])
    i = i + 1
  end
  local keys = {} -- this partition's keys, by the indexes the arguments use
  for k = 1, nkeys do
    keys[tostring(k)] = KEYS[base + k]
    keys[k] = KEYS[base + k]
  end
  local expected, next = tonumber(ARGV[i]), ARGV[i + 1]
  i = i + 2
  local stored = tonumber(redis.call('GET', keys[1]) or '-1')
  local apply = stored == expected
  local created = {}
  if apply then
    for k = 2, nkeys do
      if redis.call('EXISTS', keys[k]) == 0 then
        redis.call('HSET', keys[k], '~', pin)
        created[k] = true
      end
    end
  end
  local n = tonumber(ARGV[i])
  i = i + 1
  if apply then
    for j = i, i + 3 * (n - 1), 3 do
      redis.call('HINCRBY', keys[ARGV[j]], ARGV[j + 1], ARGV[j + 2])
    end
  end
  i = i + 3 * n
  n = tonumber(ARGV[i])
  i = i + 1
  if apply then
    -- Triples come grouped by key: each run of one key is one HMGET and at most one HSET,
    -- not a command per field (a partition's batch raises hundreds of newest times).
    local j, last = i, i + 3 * (n - 1)
    while j <= last do
      local k, fields, e = ARGV[j], {}, j
      while e <= last and ARGV[e] == k and #fields < RUN do
        fields[#fields + 1] = ARGV[e + 1]
        e = e + 3
      end
      local current = redis.call('HMGET', keys[k], unpack(fields))
      local raise, m = {}, 0
      for f = 1, #fields do
        local at = ARGV[j + 3 * (f - 1) + 2]
        if tonumber(at) > tonumber(current[f] or '0') then
          raise[m + 1], raise[m + 2] = fields[f], at
          m = m + 2
        end
      end
      if m > 0 then
        redis.call('HSET', keys[k], unpack(raise))
      end
      j = e
    end
  end
  i = i + 3 * n
  n = tonumber(ARGV[i])
  i = i + 1
  if apply then
    for j = i, i + 3 * (n - 1), 3 do
      local key, list = keys[ARGV[j]], ARGV[j + 1]
      for slot = keep - 1, 1, -1 do
        local older = redis.call('HGET', key, list .. '|' .. (slot - 1))
        if older then
          redis.call('HSET', key, list .. '|' .. slot, older)
        end
      end
      redis.call('HSET', key, list .. '|0', ARGV[j + 2])
    end
  end
  i = i + 3 * n
  n = tonumber(ARGV[i])
  i = i + 1
  if apply then
    for j = i, i + 2 * (n - 1), 2 do
      -- A bucket's end of life is fixed by its time, so it is set once, when it is made.
      if created[tonumber(ARGV[j])] then
        redis.call('EXPIRE', keys[ARGV[j]], ARGV[j + 1])
      end
    end
    redis.call('HSET', keys[2], '~w', writer)
    redis.call('SET', keys[1], next)
    out[#out + 1] = 1
    out[#out + 1] = tonumber(next)
  else
    out[#out + 1] = 0
    out[#out + 1] = stored
  end
  i = i + 2 * n
  base = base + nkeys
end
return out
