//! A batch's Redis writes cost two round trips on a single Redis, whatever the batch holds:
//! one script call for every dedup claim (sent with a read-only transaction that reads the
//! counters), then one pipeline that checks the offsets and runs every partition's counters
//! and offset as one transaction. Under `appendfsync always` Redis
//! pays an fsync per event-loop pass that writes, so this is what keeps strict durability
//! fast. Counted with MONITOR, which shows each client command once (a transaction's when it
//! runs) and each command a script runs as coming from `lua`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tiendo::aggregate::Aggregate;
use tiendo::config::{Secret, Settings};
use tiendo::decode::Validator;
use tiendo::embedded::RedisServer;
use tiendo::generator::{Generated, Generator};
use tiendo::pipeline::{Batch, HeldCounters, Origin};
use tiendo::store::{self, Applied, Current, HeldView, PartitionBatch, Store};

use common::batches::{store_batch, Batches, PARTITIONS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_two_round_trips_and_two_writes_on_a_single_redis() {
    let redis = RedisServer::start_with(&["--appendfsync", "always"]).expect("redis-server");
    let mut settings = Settings::default();
    settings.redis.url = Secret::new(redis.url());
    let datasets = settings.validation.datasets.clone();
    let store = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        "rt",
        datasets.clone(),
        3600,
    );
    // Events over 60 days on both topics and every partition, with re-sends among them: many
    // claim buckets and many counter keys per batch.
    let mut batches = Batches::new(&settings, 5);
    // The first batch loads the scripts (EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA).
    batches.store_next(&store, 2000).await;

    let mut monitor = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "OK");
    for _ in 0..3 {
        batches.store_next(&store, 2000).await;
    }
    // A marker, so the monitor is read up to here and no further.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("ECHO")
        .arg("end-of-batches")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Each command as (from a script?, name), in the order Redis ran them.
    let mut ran: Vec<(bool, String)> = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("end-of-batches") {
            break;
        }
        let name = line.split('"').nth(1).unwrap_or_default().to_uppercase();
        ran.push((line.contains(" lua] "), name));
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    // What the client sent, a transaction (MULTI to EXEC) as one step; what ran inside each
    // transaction; and what ran inside scripts outside them.
    let mut steps: Vec<String> = Vec::new();
    let mut transactions: Vec<Vec<String>> = Vec::new();
    let mut scripted_outside: Vec<String> = Vec::new();
    let mut open = false;
    for (scripted, name) in &ran {
        match (open, *scripted, name.as_str()) {
            (false, false, "MULTI") => {
                open = true;
                transactions.push(Vec::new());
            }
            (true, false, "EXEC") => {
                open = false;
                steps.push("MULTI..EXEC".into());
            }
            (true, false, _) => transactions.last_mut().unwrap().push(name.clone()),
            (true, true, _) => {}
            (false, false, _) => steps.push(name.clone()),
            (false, true, _) => scripted_outside.push(name.clone()),
        }
    }
    // The claim call and the counters' read go out together; which Redis runs first is up
    // to the connection.
    for batch in steps.chunks_mut(5) {
        batch[..2].sort();
    }
    assert_eq!(
        steps,
        ["EVALSHA", "MULTI..EXEC", "WATCH", "EVAL", "MULTI..EXEC"].repeat(3),
        "3 batches, each a claim call and a read of the counters sent together, then one \
         pipeline: WATCH, the fence check, a transaction"
    );
    // Writes happen in two places per batch: the claim call and the second transaction.
    // Redis pays one fsync for each under `appendfsync always`. The first transaction, WATCH
    // and the fence check only read.
    let written_outside: Vec<&String> = scripted_outside
        .iter()
        .filter(|c| !["GET", "HGET", "TTL", "HMGET", "HSET", "EXPIRE"].contains(&c.as_str()))
        .collect();
    assert!(written_outside.is_empty(), "{written_outside:?}");
    let (reads, writes): (Vec<_>, Vec<_>) = transactions.iter().partition(|t| {
        t.iter()
            .all(|c| ["GET", "HGET", "HMGET"].contains(&c.as_str()))
    });
    assert_eq!((reads.len(), writes.len()), (3, 3), "{transactions:?}");
    for t in writes {
        assert_eq!(
            t.iter().filter(|c| *c == "EVAL").count(),
            1,
            "one apply call per transaction"
        );
        assert!(
            t.iter()
                .all(|c| ["EVAL", "HSET", "HINCRBY"].contains(&c.as_str())),
            "{t:?}"
        );
        // Counters read before are written whole, one HSET per hash: far fewer commands
        // than the 2,000 events' counters.
        assert!(t.contains(&"HSET".to_string()), "{t:?}");
        assert!(t.len() < 2000, "{} commands", t.len());
    }
}

/// Pushes a generated message onto `batch` as read from `records` at `partition`/`offset`,
/// arriving at `now`.
fn push_record(
    batch: &mut Batch,
    m: &Generated,
    partition: i32,
    offset: i64,
    validator: &Validator,
    now: i64,
) {
    let origin = Origin {
        t: 0,
        kind: m.kind(),
        topic: "records",
        partition,
        offset,
        sent: None,
    };
    batch.push(origin, None, &m.encode(), validator, now);
}

/// Pushes `messages` onto `batch` as read from `records` partition 0 from offset `from`.
fn push_records(
    batch: &mut Batch,
    messages: &[Generated],
    from: i64,
    validator: &Validator,
    now: i64,
) {
    for (i, m) in messages.iter().enumerate() {
        push_record(batch, m, 0, from + i as i64, validator, now);
    }
}

/// `messages` with other event ids (tagged `tag`), their record counts times `factor`.
fn renamed(messages: &[Generated], factor: u64, tag: &str) -> Vec<Generated> {
    let mut ms = messages.to_vec();
    for m in &mut ms {
        if let Generated::Record(r) = m {
            r.record_count *= factor;
            r.event_id = format!("{}-{tag}", r.event_id);
        }
    }
    ms
}

/// Stores `batch` at `now` as the first of its partitions, and reads the counters then
/// (there are some).
async fn store_alone(store: &Store, batch: &Batch, now: DateTime<Utc>) -> store::Snapshot {
    let stored = batch
        .store(store, &HeldCounters::new(), now.timestamp())
        .await
        .unwrap();
    assert_eq!(stored[0].1.applied, Applied::Stored);
    let snap = store.snapshot(now).await.unwrap();
    assert!(!snap.counts.is_empty());
    snap
}

/// A private Redis, settings that know source `hotich`, its validator, and a store under
/// `prefix`.
async fn hotich_store(prefix: &str) -> (RedisServer, Settings, Validator, Store) {
    let redis = RedisServer::start().expect("redis-server");
    let mut settings = Settings::default();
    settings.redis.url = Secret::new(redis.url());
    settings.sources.known = vec!["hotich".into()];
    let validator = Validator::new(&settings.validation).with_sources(&settings.sources.known);
    let store = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        prefix,
        settings.validation.datasets.clone(),
        3600,
    );
    (redis, settings, validator, store)
}

/// The demo's clock runs in autumn 2024. Time buckets live for a span of that clock, not
/// until a wall time: a bucket made on a clock in the past must not expire at once (every
/// window read 0 in the demo, so every province looked stalled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_written_on_a_clock_in_the_past_keep_their_windows() {
    let (_redis, settings, validator, store) = hotich_store("past").await;
    let datasets = settings.validation.datasets.clone();
    let now: chrono::DateTime<Utc> = "2024-10-01T03:00:00Z".parse().unwrap();
    let mut g = Generator::new(6, "past", &datasets);
    let mut batch = Batch::default();
    for offset in 0..100 {
        let mut m = g.record(now - chrono::Duration::hours(2));
        if let Generated::Record(r) = &mut m {
            r.source_system = "hotich".into();
        }
        let from = Origin {
            t: 0,
            kind: m.kind(),
            topic: "records",
            partition: 0,
            offset,
            sent: None,
        };
        batch.push(from, None, &m.encode(), &validator, now.timestamp());
    }
    let snap = store_alone(&store, &batch, now).await;
    for (field, counts) in &snap.counts {
        assert_eq!(
            counts.windows[1..],
            [counts.total; 3],
            "24h, 7d, 30d of {field}"
        );
    }
    let sources = store.sources(now).await.unwrap();
    assert_eq!(sources["hotich"].total.events, 100);
    let in_hours: i64 = sources["hotich"].hours.values().map(|t| t.events).sum();
    assert_eq!(in_hours, 100, "the arrival hour's bucket is kept");
}

/// A batch is sealed (aggregated by the buckets still written then) when it closes, and
/// stored later. Were the clock stepped back hours in between, buckets too old at sealing
/// are young again: storing works the batch out again rather than leave them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sealed_before_the_clock_stepped_back_counts_in_its_windows() {
    let (_redis, settings, validator, store) = hotich_store("stepped").await;
    let datasets = settings.validation.datasets.clone();
    let sealed: chrono::DateTime<Utc> = "2024-10-01T03:10:00Z".parse().unwrap();
    let stored = sealed - chrono::Duration::hours(4);
    let mut g = Generator::new(7, "stepped", &datasets);
    let mut batch = Batch::default();
    for offset in 0..50 {
        // Half an hour before the store, in an hour that began more than an hour before it:
        // only its minute buckets put it in the 1 h window.
        let m = g.record(stored - chrono::Duration::minutes(30));
        push_record(&mut batch, &m, 0, offset, &validator, sealed.timestamp());
    }
    batch.seal(&store, sealed.timestamp());
    let snap = store_alone(&store, &batch, stored).await;
    for (field, counts) in &snap.counts {
        assert_eq!(counts.windows, [counts.total; 4], "windows of {field}");
    }
}

/// A source's recent rejects are the newest few, newest first, across batches: a batch with
/// one example pushes the older ones down rather than overwriting the newest of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_rejects_are_the_newest_across_batches() {
    let (_redis, settings, validator, store) = hotich_store("examples").await;
    let datasets = settings.validation.datasets.clone();
    let start = Utc::now();
    let mut g = Generator::new(7, "examples", &datasets);
    let mut offset = 0;
    let mut stored = [[None; PARTITIONS as usize]; 2];
    // Batch 1 rejects datasets w1, w2, w3; batch 2, a minute later, w4.
    for (minute, names) in [(0, &["w1", "w2", "w3"][..]), (1, &["w4"][..])] {
        let now = start + chrono::Duration::minutes(minute);
        let mut batch = Batch::default();
        for name in names {
            let mut m = g.record(now);
            if let Generated::Record(r) = &mut m {
                r.source_system = "hotich".into();
                r.dataset = name.to_string();
            }
            let from = Origin {
                t: 0,
                kind: m.kind(),
                topic: "records",
                partition: 0,
                offset,
                sent: None,
            };
            offset += 1;
            batch.push(from, None, &m.encode(), &validator, now.timestamp());
        }
        store_batch(&store, batch, &mut stored, &mut HeldCounters::new()).await;
    }
    let now = start + chrono::Duration::minutes(2);
    let views = tiendo::sources::view(
        &settings.sources.known,
        &store.sources(now).await.unwrap(),
        settings.sources.quiet_after,
        now,
    );
    let details: Vec<&str> = views[0]
        .examples
        .iter()
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(details, ["w4", "w3", "w2"]);
}

/// A batch whose partitions disagree with Redis: one was stored further by another consumer
/// (a zombie's view), the other is new. The check before the transaction aborts it, and the
/// script path then stores the new partition and fences the stale one, which writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_partition_is_fenced_and_the_rest_of_its_batch_stored() {
    let (_redis, settings, validator, store) = hotich_store("fence").await;
    let datasets = settings.validation.datasets.clone();
    let mut g = Generator::new(8, "fence", &datasets);
    let now = Utc::now();
    // Records on partitions `parts`, offsets `from..from + 10` each; records per partition.
    let mut batch = |parts: &[i32], from: i64| {
        let mut batch = Batch::default();
        let mut records = [0i64; 2];
        for &partition in parts {
            for offset in from..from + 10 {
                let m = g.record(now - chrono::Duration::days(offset));
                if let Generated::Record(r) = &m {
                    records[partition as usize] += r.record_count as i64;
                }
                push_record(
                    &mut batch,
                    &m,
                    partition,
                    offset,
                    &validator,
                    now.timestamp(),
                );
            }
        }
        (batch, records)
    };
    let (first, first_records) = batch(&[0], 0);
    for (_, outcome) in first
        .store(&store, &HeldCounters::new(), now.timestamp())
        .await
        .unwrap()
    {
        assert_eq!(outcome.applied, Applied::Stored);
    }
    // Partition 0 believes offset 5 is next (10 is stored); partition 1 is new.
    let (mut second, second_records) = batch(&[0, 1], 5);
    second.retain_parts(|p| {
        p.expected = (p.partition == 0).then_some(5);
        true
    });
    let mut new_records = 0;
    for (part, outcome) in second
        .store(&store, &HeldCounters::new(), now.timestamp())
        .await
        .unwrap()
    {
        if part.partition == 0 {
            assert_eq!(outcome.applied, Applied::Fenced { stored: 10 });
        } else {
            assert_eq!(outcome.applied, Applied::Stored);
            new_records = outcome.counted;
        }
    }
    assert_eq!(new_records, 10, "partition 1's events counted");
    let snap = store.snapshot(now).await.unwrap();
    let stored = store
        .offsets(&[("records", 0), ("records", 1)])
        .await
        .unwrap();
    assert_eq!(stored, [Some(10), Some(15)]);
    assert_eq!(records(&snap), first_records[0] + second_records[1]);
}

/// The check before the transaction must stop it whenever it cannot vouch for the offsets,
/// not only when they differ: Redis does not roll back a transaction whose script fails, so
/// the plain counters in it would be added once per retry. Here a partition's offset key
/// holds the wrong type (a damaged keyspace): the batch fails, and adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_offset_check_writes_nothing() {
    let (redis, settings, validator, store) = hotich_store("broken").await;
    let datasets = settings.validation.datasets.clone();
    let mut g = Generator::new(9, "broken", &datasets);
    let now = Utc::now();
    let mut batch = Batch::default();
    for offset in 0..20 {
        let m = g.record(now - chrono::Duration::hours(offset));
        push_record(&mut batch, &m, 0, offset, &validator, now.timestamp());
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let keys = tiendo::store::Keys::new("broken").partition("records", 0);
    redis::cmd("HSET")
        .arg(keys.offset())
        .arg("damaged")
        .arg(1)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let err = batch
        .store(&store, &HeldCounters::new(), now.timestamp())
        .await;
    assert!(err.is_err(), "a batch over a damaged offset key must fail");
    // The all-time totals, read directly: a snapshot refuses a damaged offset key.
    let totals: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.totals())
        .query_async(&mut raw)
        .await
        .unwrap();
    let counted: Vec<_> = totals.keys().filter(|f| !f.starts_with('~')).collect();
    assert!(counted.is_empty(), "nothing counted: {counted:?}");
}

/// All records counted in a snapshot.
fn records(snap: &tiendo::store::Snapshot) -> i64 {
    snap.counts
        .iter()
        .filter(|(f, _)| f.contains("|r."))
        .map(|(_, c)| c.total)
        .sum()
}

/// The record counts of `messages`.
fn record_count(messages: &[Generated]) -> i64 {
    messages
        .iter()
        .map(|m| match m {
            Generated::Record(r) => r.record_count as i64,
            _ => 0,
        })
        .sum()
}

/// Counters a consumer holds between batches are written back only onto the state of Redis
/// they came from. Consumer A stores offsets 0..10 of a partition and holds what it wrote.
/// Redis then loses everything, and consumer B (after a rebalance) stores the same offsets
/// with other counts, as it would if a re-send's claim was lost and it counted differently.
/// A, which missed the rebalance, stores 10..20 on the same counters: Redis shows the offset
/// A expects, but not A's writer token, so A adds to B's counts instead of writing its own
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_counters_are_written_back_only_onto_the_state_they_came_from() {
    let (redis, settings, validator, a) = hotich_store("held").await;
    let b = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        "held",
        settings.validation.datasets.clone(),
        3600,
    );
    let mut g = Generator::new(10, "held", &settings.validation.datasets);
    let now = Utc::now();
    // Ten records at one time: the three batches add to the very same counters.
    let first: Vec<Generated> = (0..10)
        .map(|_| g.record(now - chrono::Duration::hours(1)))
        .collect();
    let (theirs, later) = (renamed(&first, 2, "b"), renamed(&first, 1, "a2"));
    let batch_of = |ms: &[Generated], from: i64, expected: Option<i64>| {
        let mut batch = Batch::default();
        push_records(&mut batch, ms, from, &validator, now.timestamp());
        batch.retain_parts(|p| {
            p.expected = expected;
            true
        });
        batch
    };
    let mut held = HeldCounters::new();
    let a1 = batch_of(&first, 0, None);
    for (part, outcome) in a1.store(&a, &held, now.timestamp()).await.unwrap() {
        assert_eq!(outcome.applied, Applied::Stored);
        assert!(outcome.held.is_some(), "counters written whole are held");
        held.keep(part, outcome.held);
    }

    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let b1 = batch_of(&theirs, 0, None);
    for (_, outcome) in b1
        .store(&b, &HeldCounters::new(), now.timestamp())
        .await
        .unwrap()
    {
        assert_eq!(outcome.applied, Applied::Stored);
    }

    let a2 = batch_of(&later, 10, Some(10));
    for (_, outcome) in a2.store(&a, &held, now.timestamp()).await.unwrap() {
        assert_eq!(outcome.applied, Applied::Stored);
    }
    assert_eq!(
        records(&a.snapshot(now).await.unwrap()),
        record_count(&theirs) + record_count(&later),
        "B's counts plus A's second batch, not A's first batch written back"
    );
}

/// The storer reads a batch while the batch before is being written, taking the counters
/// that one leaves as held. They are right only if it was written whole. Here batch 2 goes
/// through the script, which adds blind: a zombie moved partition 1 on, and partition 0 holds
/// other counts at the offset batch 2 read (as a Redis restarted from an older file may).
/// Batch 3, read ahead with batch 2's counters, must add to what Redis holds, not write
/// back what batch 2 worked out: the script's writer token is not the one batch 2 held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_ahead_takes_what_the_batch_before_left_only_if_written_whole() {
    let (redis, settings, validator, store) = hotich_store("ahead").await;
    let mut g = Generator::new(12, "ahead", &settings.validation.datasets);
    let now = Utc::now();
    // Records at one time: every batch adds to the same counters of partition 0.
    let first: Vec<Generated> = (0..10)
        .map(|_| g.record(now - chrono::Duration::hours(1)))
        .collect();
    let one = g.record(now - chrono::Duration::hours(1));
    // `ms` on partition 0 from `from`, and `one` on partition 1 at offset `on_1` if given.
    let batch_of = |ms: &[Generated], from: i64, on_1: Option<i64>| {
        let mut batch = Batch::default();
        push_records(&mut batch, ms, from, &validator, now.timestamp());
        if let Some(offset) = on_1 {
            push_record(&mut batch, &one, 1, offset, &validator, now.timestamp());
        }
        batch.retain_parts(|p| {
            p.expected = (p.start > 0).then_some(p.start);
            true
        });
        batch
    };
    let mut held = HeldCounters::new();
    let b1 = batch_of(&first, 0, Some(0));
    for (part, outcome) in b1.store(&store, &held, now.timestamp()).await.unwrap() {
        assert_eq!(outcome.applied, Applied::Stored);
        held.keep(part, outcome.held);
    }

    let (second, third) = (renamed(&first, 1, "2"), renamed(&first, 1, "3"));
    let b2 = batch_of(&second, 10, Some(1));
    let mut read2 = b2.read(&store, &held, now.timestamp()).await.unwrap();
    let writes2 = b2.writes(&mut read2);
    let writer = store.writer();
    let after2 = writes2.after(&writer);

    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let keys = store::Keys::new("ahead");
    let totals = keys.partition("records", 0).totals();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&totals)
        .query_async(&mut raw)
        .await
        .unwrap();
    let field = fields
        .iter()
        .find(|f| f.contains("|r."))
        .expect("a records counter");
    redis::cmd("HINCRBY")
        .arg(&totals)
        .arg(field)
        .arg(1000)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    redis::cmd("SET")
        .arg(keys.partition("records", 1).offset())
        .arg(5)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let written = store
        .apply(&writes2.batches(), &writer, now.timestamp())
        .await
        .unwrap();
    assert!(!written.whole, "through the script");
    let applied = &written.applied;
    assert!(applied.contains(&Applied::Stored) && applied.contains(&Applied::Fenced { stored: 5 }));

    let b3 = batch_of(&third, 20, None);
    let i = b2.parts().position(|p| p.partition == 0).unwrap();
    let left = after2[i]
        .as_ref()
        .expect("batch 2 read partition 0's counters");
    let view = HeldView::new(left, held.get(b2.parts().nth(i).unwrap()));
    let mut read3 = b3
        .read_with(&store, &[Some(view)], now.timestamp())
        .await
        .unwrap();
    assert!(b3.fits(&read3));
    let writes3 = b3.writes(&mut read3);
    let written = store
        .apply(&writes3.batches(), &store.writer(), now.timestamp())
        .await
        .unwrap();
    assert_eq!(written.applied, vec![Applied::Stored]);
    assert_eq!(
        records(&store.snapshot(now).await.unwrap()),
        1000 + record_count(&first)
            + record_count(&[one])
            + record_count(&second)
            + record_count(&third),
        "batch 3 added to what Redis held"
    );
}

/// The check before the transaction refuses counters read under another writer token: the
/// batch then goes through the script, which adds its deltas to what Redis holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_read_under_another_writer_are_not_written_whole() {
    let (_redis, _settings, _validator, store) = hotich_store("token").await;
    let now = Utc::now().timestamp();
    let nothing = Aggregate::default();
    let first = store
        .apply(&[ten_more(&nothing, -1, None)], &store.writer(), now)
        .await
        .unwrap();
    assert_eq!((first.applied[0], first.whole), (Applied::Stored, true));
    let read = store
        .current(&[ten_more(&nothing, 10, None)], now)
        .await
        .unwrap();
    let read = read[0].clone().expect("offset 10 read");
    assert!(read.writer.is_some(), "the first write left its token");

    // Read under the token now stored: written whole.
    let second = store
        .apply(&[ten_more(&nothing, 10, Some(&read))], &store.writer(), now)
        .await
        .unwrap();
    assert_eq!((second.applied[0], second.whole), (Applied::Stored, true));
    // The same values again, though another write came since: the offset is the expected
    // one, the token is not.
    let third = store
        .apply(&[ten_more(&nothing, 20, Some(&read))], &store.writer(), now)
        .await
        .unwrap();
    assert_eq!((third.applied[0], third.whole), (Applied::Stored, false));
}

/// A batch of ten offsets of records/0 after `expected` (-1: none stored).
fn ten_more<'a>(
    aggregate: &'a Aggregate,
    expected: i64,
    current: Option<&'a Current>,
) -> PartitionBatch<'a> {
    PartitionBatch {
        topic: "records",
        partition: 0,
        expected,
        next: expected.max(0) + 10,
        aggregate,
        cells: None,
        current,
        held: None,
    }
}
