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

Needs `pip install redis`. Usage: [LAYOUTS=hashtable,watched] benches/claim_layouts.py [CLAIMS]
"""
import hashlib, os, random, socket, struct, subprocess, sys, tempfile, time

import redis

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
SCRIPTS = {
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
    proc = subprocess.Popen(['redis-server', '--port', str(port), '--dir', workdir, '--appendonly',
                             'yes', '--appendfsync', 'everysec', '--save', ''],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, client


def cpu(client):
    info = client.info('cpu')
    return info['used_cpu_user'] + info['used_cpu_sys']


def run(layout, shards, days, claims, seed, batch=10_000):
    with tempfile.TemporaryDirectory() as workdir:
        proc, client = redis_server(workdir)
        try:
            script = client.register_script(SCRIPTS.get(layout, CLAIM_LUA))
            conn = client.connection_pool.get_connection()
            rnd = random.Random(seed)
            now = 1_795_000_000
            mem0, cpu0 = client.info('memory')['used_memory'], cpu(client)
            sent, fresh, offset = [], 0, 0
            for _ in range(0, claims, batch):
                buckets, seen = {}, set()
                for _ in range(batch):
                    if sent and rnd.random() < 0.03:
                        event_id, at = rnd.choice(sent)
                    else:
                        event_id, at = f'evt-{seed}-{offset}', now - rnd.randrange(days * 86400 + 1)
                        sent.append((event_id, at))
                        fresh += 1
                    digest = hashlib.sha256(event_id.encode()).digest()
                    week = ((at + 7 * 3600) // 86400) // 7
                    shard = int.from_bytes(digest[16:24], 'little') % shards
                    key = f'tiendo:{{dd{shard % 16}}}:rw{week}'
                    if layout != 'hashtable':
                        key += f':{shard}'
                    offset += 1
                    # tiendo sends each id once per batch and settles repeats itself.
                    if (key, digest[:14]) in seen:
                        continue
                    seen.add((key, digest[:14]))
                    buckets.setdefault(key, []).append(digest[:14] + struct.pack('>iq', 0, offset - 1))
                keys = list(buckets)
                if layout == 'watched':
                    watched(conn, buckets, 32 * 86400)
                else:
                    script(keys=keys, args=[str(32 * 86400)] + [b''.join(buckets[k]) for k in keys])
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
            proc.kill()
            proc.wait()


if __name__ == '__main__':
    claims = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    for seed in (1, 2):
        # About 60 claims per bucket either way: one week of events, or nine.
        runs = [('hashtable', 16, 0), ('listpack', 8192, 0), ('setnx', 8192, 0),
                ('watched', 16, 0), ('hashtable', 16, 60), ('listpack', 1024, 60),
                ('setnx', 1024, 60), ('watched', 16, 60)]
        only = os.environ.get('LAYOUTS')
        for layout, shards, days in runs:
            if only and layout not in only.split(','):
                continue
            run(layout, shards, days, claims, seed)
