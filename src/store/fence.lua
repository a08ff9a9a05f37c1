-- Checks, ahead of a transaction that adds a batch's counters as plain commands, that each
-- partition's stored offset is the one the caller expects (see `Store::apply_watched`), and,
-- where the caller writes counters whole, that the writer token stored with them (the field
-- '~w' of the totals hash, set by apply.lua) is the one it read them with. The caller has
-- WATCHed every key here. On a mismatch this touches the last key, which makes Redis drop the
-- transaction: EXEC answers nil and nothing of the batch is written.
--
-- Anything it cannot read counts as a mismatch: if this script failed instead, the
-- transaction would run unchecked, and Redis does not roll back the counters of a
-- transaction whose apply script fails.
--
-- KEYS: each partition's offset key and totals key, then the key to touch. ARGV: per
-- partition, in the same order, the expected offset (-1 for none) and the expected writer
-- ('-' for none stored, '*' not to check). Returns 1 if every partition is as expected, else 0.
local partitions = (#KEYS - 1) / 2
for k = 1, partitions do
  local stored = redis.pcall('GET', KEYS[2 * k - 1])
  local ok = type(stored) ~= 'table' and tonumber(stored or '-1') == tonumber(ARGV[2 * k - 1])
  local want = ARGV[2 * k]
  if ok and want ~= '*' then
    local writer = redis.pcall('HGET', KEYS[2 * k], '~w')
    ok = type(writer) ~= 'table' and (writer or '-') == want
  end
  if not ok then
    redis.call('SET', KEYS[#KEYS], '1')
    redis.call('DEL', KEYS[#KEYS])
    return 0
  end
end
return 1
