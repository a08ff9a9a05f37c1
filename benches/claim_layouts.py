#!/usr/bin/env python3
"""Memory and Redis CPU per dedup claim, for claim layouts tried against the 48-byte goal.

Not part of `scripts/bench`: an experiment kept so its figures (BENCHMARKS.md, 2 December
2026, night) can be measured again. It starts a private redis-server (AOF on, everysec) per
run, sends batches of 10,000 claims with 3% re-sends through one script call per batch, as
tiendo does, and prints used_memory growth per new claim and server CPU (INFO cpu) per claim.

Layouts:
  hashtable  today's: src/store/claim.lua as it is, 16 shards per kind and event week.
  listpack   claim.lua without its hash-table start, over SHARDS buckets per week, so each
             bucket stays under Redis's 128-entry listpack limit.
  setnx      the same buckets, one HSETNX per claim and no TTL (weeks would be deleted by a
             sweeper instead): the fewest commands per claim in small buckets.
  watched    today's buckets without a script: WATCH the buckets, read them (TTL, HMGET) in
             one round trip, then write the new claims in MULTI/EXEC (which could carry the
             counters too): Redis's CPU without Lua's per-claim strings and tables.
  strtable   claims in open-addressed tables, one Redis string per bucket, sized in advance
             (STRTABLE_LOAD, default 0.6): a GETRANGE and a SETRANGE per claim.
  intset     claims as 64-bit members of integer sets, SHARDS sets per week, with what a
             set cannot hold (its owner) kept per batch beside them for replays; the
             steady-state path only (no replay after a crash is measured). Not safe where
             Redis loses acknowledged writes (BENCHMARKS.md, ninth session).
  intset4k   the same with Redis's set-max-intset-entries raised from 512 to 4096 (or
             INTSET_LIMIT), so fewer, larger sets: fewer commands per batch. INTSET_SETS=a,b
             sets its sets per week for today's events and for 60 days (default 256,32).
  owned      each claim as two members of one integer set: the id's, and an owner member
             hashed from the id and its claimant, which a replay finds; owned4k: the same
             with the raised limit and twice INTSET_SETS.
  owned2     the owner members in a set of their own beside each id set (INTSET_SETS sets,
             raised limit): read only when an id is taken.
  grown      owned2 with its sets grown by linear hashing inside the script (from 2^GROWN_START
             sets per week, splitting at GROWN_PER_SET members a set on average).

Needs `pip install redis`. Usage: [LAYOUTS=hashtable,watched] benches/claim_layouts.py [CLAIMS]
REDIS_WRAP runs each redis-server under a command, for instance
`REDIS_WRAP="valgrind --tool=callgrind --callgrind-out-file=cg.%p"`: instructions counted that
way repeated to within 0.01% from run to run here, where CPU seconds varied by 20% with the
machine's load. Under such a wrapper the CPU µs per claim printed mean nothing.
"""
import hashlib, math, os, random, shlex, socket, struct, subprocess, sys, tempfile, time

import redis

HORIZON = 32 * 86400  # seconds a claim is kept after its bucket's last claim
GROWN_PER_SET = os.environ.get('GROWN_PER_SET', '1500')
GROWN_START = os.environ.get('GROWN_START', '0')
STRTABLE_LOAD = float(os.environ.get('STRTABLE_LOAD', '0.6'))
HERE = os.path.dirname(os.path.abspath(__file__))
CLAIM_LUA = open(os.path.join(HERE, '..', 'src', 'store', 'claim.lua')).read()
HASHTABLE_START = "redis.call('HSET', key, '~', string.rep('~', 80))"
assert HASHTABLE_START in CLAIM_LUA
SETNX_LUA = """
local SIZE, ID = 26, 14
local sub = string.sub
local dups, before = {}, 0
for k = 1, #KEYS do
  local key, packed = KEYS[k], ARGV[1 + k]
  for j = 1, #packed / SIZE do
    local at = (j - 1) * SIZE
    local id, value = sub(packed, at + 1, at + ID), sub(packed, at + ID + 1, at + SIZE)
    if redis.call('HSETNX', key, id, value) == 0 and redis.call('HGET', key, id) ~= value then
      dups[#dups + 1] = before + j
    end
  end
  before = before + #packed / SIZE
end
return dups
"""
# A claim table in one string per bucket: buckets of B records (a count byte, then up to B
# 26-byte records in order), addressed by the digest's first four bytes, so a claim is one
# GETRANGE and, when new, one SETRANGE: no hash-table entry, key or value allocation per claim.
# Sized in advance here (ARGV[1 + #KEYS + k]: buckets of KEYS[k]) to measure the cost of a
# claim at a known load; a bucket found full goes to a small hash beside the table.
STRTABLE_LUA = """
local SIZE, ID, B = 26, 14, 8
local W = 1 + B * SIZE
local sub, byte, char, find = string.sub, string.byte, string.char, string.find
local dups, before = {}, 0
for k = 1, #KEYS do
  local key, packed = KEYS[k], ARGV[1 + k]
  local nb = tonumber(ARGV[1 + #KEYS + k])
  if redis.call('EXISTS', key) == 0 then
    redis.call('SET', key, string.rep('\\0', nb * W))
  end
  for j = 1, #packed / SIZE do
    local at = (j - 1) * SIZE
    local id, value = sub(packed, at + 1, at + ID), sub(packed, at + ID + 1, at + SIZE)
    local off = (struct.unpack('>I4', id) % nb) * W
    local got = redis.call('GETRANGE', key, off, off + W - 1)
    local n = byte(got, 1)
    local owner
    local from = 2
    while true do
      local i = find(got, id, from, true)
      if not i or i > 1 + n * SIZE then break end
      if (i - 2) % SIZE == 0 then owner = sub(got, i + ID, i + SIZE - 1) break end
      from = i + 1
    end
    if owner then
      if owner ~= value then dups[#dups + 1] = before + j; dups[#dups + 1] = owner end
    elseif n < B then
      redis.call('SETRANGE', key, off, char(n + 1) .. sub(got, 2, 1 + n * SIZE) .. id .. value)
    else
      local o = redis.call('HGET', key .. ':o', id)
      if not o then redis.call('HSET', key .. ':o', id, value)
      elseif o ~= value then dups[#dups + 1] = before + j; dups[#dups + 1] = o end
    end
  end
  before = before + #packed / SIZE
end
return dups
"""
# Claims as members of integer sets: the digest's first 8 bytes as a signed decimal, in one of
# SETS sets per kind and week chosen by the next 4 bytes, so Redis keeps each set an intset
# (8 bytes a member) while it holds at most set-max-intset-entries (512) members. A set keeps
# no owner, so each call also keeps its attempt beside the sets, in one string per partition
# (here one: partition 0): the highest offset claimed (8 bytes), the count of duplicates, the
# batch's entries as the caller packed them (member padded to 20, 8-byte offset), then the
# entries found duplicates. A claim found taken at an offset no earlier attempt reached is a
# re-send: only after a crash or a rebalance does a claim need the entries searched (not
# measured here), and it is this very message replayed if the attempt holds its entry and not
# as a duplicate. Trimming by the offset the storer believes stored loses replays where Redis
# loses writes it acknowledged, so this layout is a measure of cost, not a design to build.
# KEYS: the sets, then the attempt string; ARGV[1]: horizon; ARGV[2]: the batch's first offset
# and ARGV[3] its last (8 bytes, big-endian); ARGV[4]: the entries; ARGV[4 + k]: the members of
# KEYS[k], space-separated, in entry order.
INTSET_LUA = """
local sub, gmatch = string.sub, string.gmatch
local horizon, first, last, entries = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local attempt = KEYS[#KEYS]
local reached = redis.call('GETRANGE', attempt, 0, 7)
local replay = #reached == 8 and reached >= first
if replay then
  return redis.error_reply('a replay: not measured here')
end
local dups, found, before = {}, {}, 0
for k = 1, #KEYS - 1 do
  local key = KEYS[k]
  local list = {}
  for m in gmatch(ARGV[4 + k], '%S+') do list[#list + 1] = m end
  local n = #list
  local ttl = redis.call('TTL', key)
  local have = redis.call('SMISMEMBER', key, unpack(list))
  local new, m = {}, 0
  for j = 1, n do
    if have[j] == 0 then
      m = m + 1
      new[m] = list[j]
    else
      dups[#dups + 1] = before + j
      found[#found + 1] = sub(entries, 28 * (before + j) - 27, 28 * (before + j))
    end
  end
  if m > 0 then redis.call('SADD', key, unpack(new)) end
  if ttl < horizon then redis.call('EXPIRE', key, horizon + 3600) end
  before = before + n
end
redis.call('SET', attempt, last .. struct.pack('>I4', #found) .. entries .. table.concat(found))
redis.call('EXPIRE', attempt, horizon)
return dups
"""
# Claims and their owners in one integer set: beside each id's member, a second 64-bit
# member hashed from the id and its claimant (partition, offset), so a replayed message finds
# its own claim in the set itself, and nothing has to be kept per batch or trimmed.
# ARGV[1]: horizon; ARGV[1 + k]: for KEYS[k], space-separated pairs of id and owner members.
OWNED_LUA = """
local gmatch = string.gmatch
local horizon = tonumber(ARGV[1])
local dups, before = {}, 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local list = {}
  for m in gmatch(ARGV[1 + k], '%S+') do list[#list + 1] = m end
  local n = #list / 2
  local ttl = redis.call('TTL', key)
  local have = redis.call('SMISMEMBER', key, unpack(list))
  local new, m = {}, 0
  for j = 1, n do
    if have[2 * j - 1] == 0 then
      new[m + 1], new[m + 2] = list[2 * j - 1], list[2 * j]
      m = m + 2
    elseif have[2 * j] == 0 then
      dups[#dups + 1] = before + j
    end
  end
  if m > 0 then redis.call('SADD', key, unpack(new)) end
  if ttl < horizon then redis.call('EXPIRE', key, horizon + 3600) end
  before = before + n
end
return dups
"""
# The same with the owner members in a set of their own beside the ids' (KEYS[k] .. ':o'), so
# each insert moves half as much of an intset, and owners are read only when an id is taken.
OWNED2_LUA = """
local gmatch = string.gmatch
local horizon = tonumber(ARGV[1])
local dups, before = {}, 0
for k = 1, #KEYS do
  local key, owners = KEYS[k], KEYS[k] .. ':o'
  local ids, mine = {}, {}
  for id, owner in gmatch(ARGV[1 + k], '(%S+) (%S+)') do
    ids[#ids + 1] = id
    mine[#mine + 1] = owner
  end
  local n = #ids
  local ttl = redis.call('TTL', key)
  local have = redis.call('SMISMEMBER', key, unpack(ids))
  local new, claimed, taken, at = {}, {}, {}, {}
  for j = 1, n do
    if have[j] == 0 then
      new[#new + 1], claimed[#claimed + 1] = ids[j], mine[j]
    else
      taken[#taken + 1], at[#at + 1] = mine[j], j
    end
  end
  if #taken > 0 then
    local own = redis.call('SMISMEMBER', owners, unpack(taken))
    for i = 1, #taken do
      if own[i] == 0 then dups[#dups + 1] = before + at[i] end
    end
  end
  if #new > 0 then
    redis.call('SADD', key, unpack(new))
    redis.call('SADD', owners, unpack(claimed))
  end
  if ttl < horizon then
    redis.call('EXPIRE', key, horizon + 3600)
    redis.call('EXPIRE', owners, horizon + 3600)
  end
  before = before + n
end
return dups
"""
# owned2's sets grown with the volume by linear hashing, per kind and week: ids (63-bit, so
# their decimals are non-negative) and owners (whose low 16 bits are the id's) go to the set
# their low bits name, and once the sets hold ARGV[2] members on average, set `s` splits by
# the next bit. A split reads the members' low bits from their decimals, so no other record is
# kept. State (level, split pointer, members) in KEYS[k] .. ':lh'; a new week starts at level
# ARGV[3]. Set keys are derived here, not declared: on a cluster they share KEYS[k]'s slot.
# ARGV[3 + k]: for KEYS[k], space-separated triples of the id's low 16 bits, id and owner.
GROWN_LUA = """
local gmatch, sub, floor = string.gmatch, string.sub, math.floor
local horizon, per_set, start = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local CHUNK = 4000
-- A non-negative decimal's value mod 2^16: 10^16 is a multiple of 2^16, so its last 16
-- digits decide it; taken as two 8-digit halves, so Lua's doubles stay exact.
local function low16(m)
  local n = #m
  local lo = tonumber(sub(m, math.max(1, n - 7), n))
  local hi = n > 8 and tonumber(sub(m, math.max(1, n - 15), n - 8)) or 0
  return (hi * 57600 + lo) % 65536 -- 10^8 = 57600 (mod 2^16)
end
-- Calls `command` on `key` with the list in chunks (unpack takes about 8000 values), and
-- answers the replies joined.
local function each(command, key, list)
  local out = {}
  for s = 1, #list, CHUNK do
    local r = redis.call(command, key, unpack(list, s, math.min(s + CHUNK - 1, #list)))
    if type(r) == 'table' then
      for _, v in ipairs(r) do out[#out + 1] = v end
    end
  end
  return out
end
local dups, before = {}, 0
for k = 1, #KEYS do
  local base = KEYS[k]
  local st = redis.call('HMGET', base .. ':lh', 'L', 's', 'n')
  local L, s, count = tonumber(st[1]) or start, tonumber(st[2]) or 0, tonumber(st[3]) or 0
  -- Split first, counting every incoming claim as new, so no set passes its limit even for
  -- a moment (Redis never turns a set that did back into an intset).
  local incoming = (select(2, string.gsub(ARGV[3 + k], ' ', ' ')) + 1) / 3 -- triples sent
  while L < 16 and count + incoming > per_set * (2 ^ L + s) do
    local from, to = base .. ':' .. s, base .. ':' .. (s + 2 ^ L)
    for _, o in ipairs({ '', ':o' }) do
      local move = {}
      for _, m in ipairs(redis.call('SMEMBERS', from .. o)) do
        if floor(low16(m) / 2 ^ L) % 2 == 1 then move[#move + 1] = m end
      end
      if #move > 0 then
        each('SREM', from .. o, move)
        each('SADD', to .. o, move)
        redis.call('EXPIRE', to .. o, horizon + 3600)
      end
    end
    s = s + 1
    if s == 2 ^ L then L, s = L + 1, 0 end
  end
  local groups, order, j = {}, {}, 0
  local below, above = 2 ^ L, 2 ^ (L + 1)
  for a, id, owner in gmatch(ARGV[3 + k], '(%d+) (%d+) (%d+)') do
    j = j + 1
    local i = a % below
    if i < s then i = a % above end
    local g = groups[i]
    if not g then
      g = { ids = {}, owners = {}, at = {} }
      groups[i] = g
      order[#order + 1] = i
    end
    local n = #g.ids + 1
    g.ids[n], g.owners[n], g.at[n] = id, owner, j
  end
  for _, i in ipairs(order) do
    local g = groups[i]
    local key = base .. ':' .. i
    local ttl = redis.call('TTL', key)
    local have = each('SMISMEMBER', key, g.ids)
    local new, claimed, taken, at = {}, {}, {}, {}
    for n = 1, #g.ids do
      if have[n] == 0 then
        new[#new + 1], claimed[#claimed + 1] = g.ids[n], g.owners[n]
      else
        taken[#taken + 1], at[#at + 1] = g.owners[n], g.at[n]
      end
    end
    if #taken > 0 then
      local own = each('SMISMEMBER', key .. ':o', taken)
      for n = 1, #taken do
        if own[n] == 0 then dups[#dups + 1] = before + at[n] end
      end
    end
    if #new > 0 then
      each('SADD', key, new)
      each('SADD', key .. ':o', claimed)
      count = count + #new
    end
    if ttl < horizon then
      redis.call('EXPIRE', key, horizon + 3600)
      redis.call('EXPIRE', key .. ':o', horizon + 3600)
    end
  end
  redis.call('HSET', base .. ':lh', 'L', L, 's', s, 'n', count)
  redis.call('EXPIRE', base .. ':lh', horizon + 3600)
  before = before + j
end
return dups
"""
SCRIPTS = {
    'grown': GROWN_LUA,
    'owned2': OWNED2_LUA,
    'owned': OWNED_LUA,
    'owned4k': OWNED_LUA,
    'intset': INTSET_LUA,
    'intset4k': INTSET_LUA,
    'strtable': STRTABLE_LUA,
    'hashtable': CLAIM_LUA,
    'listpack': CLAIM_LUA.replace(HASHTABLE_START, ''),
    'setnx': SETNX_LUA,
}


def watched(conn, buckets, horizon):
    """Claims a batch as the 'watched' layout does: two requests, the second a transaction."""
    keys = list(buckets)
    reads = [('WATCH', *keys)]
    for k in keys:
        reads += [('TTL', k), ('HMGET', k, *[c[:14] for c in buckets[k]])]
    conn.send_packed_command(conn.pack_commands(reads))
    replies = [conn.read_response() for _ in reads][1:]
    writes = [('MULTI',)]
    for i, k in enumerate(keys):
        ttl, have = replies[2 * i], replies[2 * i + 1]
        if ttl == -2:
            writes.append(('HSET', k, '~', '~' * 80))
        new = [x for c, owner in zip(buckets[k], have) if owner is None for x in (c[:14], c[14:])]
        if new:
            writes.append(('HSET', k, *new))
        if ttl < horizon:
            writes.append(('EXPIRE', k, horizon + 3600))
    writes.append(('EXEC',))
    conn.send_packed_command(conn.pack_commands(writes))
    answers = [conn.read_response() for _ in writes]
    assert answers[-1] is not None, 'a transaction aborted'


def redis_server(workdir):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    wrap = shlex.split(os.environ.get('REDIS_WRAP', ''))
    proc = subprocess.Popen(wrap + ['redis-server', '--port', str(port), '--dir', workdir, '--appendonly',
                             'yes', '--appendfsync', 'everysec', '--save', ''],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(400):  # 20 s: under valgrind it starts slowly
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if proc.poll() is not None:
                raise RuntimeError(f'redis-server exited with {proc.returncode}')
            time.sleep(0.05)
    return proc, client


def cpu(client):
    info = client.info('cpu')
    return info['used_cpu_user'] + info['used_cpu_sys']


def owner_member(digest, offset):
    """A 64-bit member hashed from an id's digest and its claimant (partition 0, offset)."""
    return int.from_bytes(hashlib.sha256(digest + struct.pack('>iq', 0, offset)).digest()[:8],
                          'little', signed=True)


def claim(layout, shards, event_id, at, offset):
    """(bucket key, what makes a claim a repeat inside its bucket, the record sent) of one
    event in one layout."""
    digest = hashlib.sha256(event_id.encode()).digest()
    week = ((at + 7 * 3600) // 86400) // 7
    if layout == 'grown':
        member = int.from_bytes(digest[:8], 'little') >> 1
        owner = (owner_member(digest, offset) % 2**64 >> 1) & ~0xFFFF | member & 0xFFFF
        return f'tiendo:{{dd0}}:rw{week}', member, (str(member & 0xFFFF), str(member), str(owner))
    if layout.startswith(('intset', 'owned')):
        key = f'tiendo:{{dd0}}:rw{week}:' + str(int.from_bytes(digest[8:12], 'little') % shards)
        member = str(int.from_bytes(digest[:8], 'little', signed=True))
        if layout.startswith('owned'):
            return key, member, (member, str(owner_member(digest, offset)))
        return key, member, (member, struct.pack('>q', offset))
    shard = int.from_bytes(digest[16:24], 'little') % shards
    key = f'tiendo:{{dd{shard % 16}}}:rw{week}'
    if layout != 'hashtable':
        key += f':{shard}'
    return key, digest[:14], digest[:14] + struct.pack('>iq', 0, offset)


def run(layout, shards, days, claims, seed, batch=10_000):
    with tempfile.TemporaryDirectory() as workdir:
        proc, client = redis_server(workdir)
        try:
            if layout in ('intset4k', 'owned4k', 'owned2', 'grown'):
                client.config_set('set-max-intset-entries', os.environ.get('INTSET_LIMIT', '4096'))
            script = client.register_script(SCRIPTS.get(layout, CLAIM_LUA))
            conn = client.connection_pool.get_connection()
            rnd = random.Random(seed)
            now = 1_795_000_000
            sent, fresh, offset = [], 0, 0
            batches = []
            for _ in range(0, claims, batch):
                buckets, seen = {}, set()
                for _ in range(batch):
                    if sent and rnd.random() < 0.03:
                        event_id, at = rnd.choice(sent)
                    else:
                        event_id, at = f'evt-{seed}-{offset}', now - rnd.randrange(days * 86400 + 1)
                        sent.append((event_id, at))
                        fresh += 1
                    offset += 1
                    key, ident, record = claim(layout, shards, event_id, at, offset - 1)
                    # tiendo sends each id once per batch and settles repeats itself.
                    if (key, ident) in seen:
                        continue
                    seen.add((key, ident))
                    buckets.setdefault(key, []).append(record)
                batches.append(buckets)
            # A string table is sized for what its key will hold, at the load to measure.
            per_key = {}
            for buckets in batches if layout == 'strtable' else []:
                for k, v in buckets.items():
                    per_key[k] = per_key.get(k, 0) + len(v)
            tables = {k: math.ceil(n / (8 * STRTABLE_LOAD)) for k, n in per_key.items()}
            mem0, cpu0 = client.info('memory')['used_memory'], cpu(client)
            for buckets in batches:
                keys = list(buckets)
                if layout == 'grown' or layout.startswith('owned'):
                    settings = [GROWN_PER_SET, GROWN_START] if layout == 'grown' else []
                    script(keys=keys, args=[str(HORIZON)] + settings + [
                        ' '.join(x for record in buckets[k] for x in record) for k in keys])
                elif layout.startswith('intset'):
                    offsets = [o for k in keys for _, o in buckets[k]]
                    entries = b''.join(m.encode().ljust(20) + o for k in keys for m, o in buckets[k])
                    args = [str(HORIZON), min(offsets), max(offsets), entries]
                    args += [' '.join(m for m, _ in buckets[k]) for k in keys]
                    script(keys=keys + ['tiendo:{dd0}:attempt:0'], args=args)
                elif layout == 'watched':
                    watched(conn, buckets, HORIZON)
                else:
                    sizes = [str(tables[k]) for k in keys] if layout == 'strtable' else []
                    script(keys=keys, args=[str(HORIZON)] + [b''.join(buckets[k]) for k in keys]
                           + sizes)
            mem1, cpu1 = client.info('memory')['used_memory'], cpu(client)
            encodings = {}
            for key in client.scan_iter(count=10_000):
                e = client.object('encoding', key).decode()
                encodings[e] = encodings.get(e, 0) + 1
            print(f'{layout:9} buckets/week={shards:5} days={days:2} claims={claims} '
                  f'bytes/new claim={(mem1 - mem0) / fresh:5.1f} '
                  f'Redis CPU µs/claim={(cpu1 - cpu0) / claims * 1e6:5.2f} keys={encodings}',
                  flush=True)
        finally:
            proc.terminate()  # not kill: a wrapper such as callgrind writes its counts on exit
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == '__main__':
    claims = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    for seed in (1, 2):
        # About 60 claims per bucket either way: one week of events, or nine; intsets hold
        # about 240 (at most 512) or 1,900 (at most 4,096).
        runs = [('hashtable', 16, 0), ('listpack', 8192, 0), ('setnx', 8192, 0),
                ('watched', 16, 0), ('hashtable', 16, 60), ('listpack', 1024, 60),
                ('setnx', 1024, 60), ('watched', 16, 60), ('strtable', 16, 0), ('strtable', 16, 60),
                ('intset', 2048, 0), ('intset', 256, 60)]
        today, spread = map(int, os.environ.get('INTSET_SETS', '256,32').split(','))
        runs += [('intset4k', today, 0), ('intset4k', spread, 60)]
        runs += [('owned', 4096, 0), ('owned', 512, 60), ('owned4k', 2 * today, 0),
                 ('owned4k', 2 * spread, 60), ('owned2', today, 0), ('owned2', spread, 60),
                 ('grown', 1, 0), ('grown', 1, 60)]
        only = os.environ.get('LAYOUTS')
        for layout, shards, days in runs:
            if only and layout not in only.split(','):
                continue
            run(layout, shards, days, claims, seed)
