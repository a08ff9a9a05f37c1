//! The real-broker suite: `tiendo run` replicas on Tansu, an independent Kafka-protocol broker.
//! Kill tests use static membership (`group.instance.id`; Tansu never expires a member that
//! died, so a restarted replica takes its partitions back under the same id); scaling uses
//! dynamic members, which leave the group when stopped. Events are published by a
//! plain rdkafka producer built here, not tiendo's own publishing code, and the expected
//! figures are computed here from what was sent, per unit, dataset, channel and window. The
//! broker-outage test runs Tansu with SQLite storage, whose log outlives a stop.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use common::{signal, Env, Expected, Killed};
use tiendo::events::RecordDigitized;
use tiendo::generator::Generated;
use tiendo::store::Snapshot;

const EVENTS: usize = 1_000_000;
const KILLS: usize = 20;
/// Re-sends among the published messages, by one in this many.
const RESEND_EVERY: usize = 33;

/// A replica with a fixed instance id, as a StatefulSet pod would have. Its log (partition
/// assignments included) is appended to `replica-{id}.log` in `logs`, across restarts.
fn replica(env: &Env, id: usize, logs: &Path) -> Killed {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("replica-{id}.log")))
        .expect("log file");
    member(env)
        .env("TIENDO_KAFKA__GROUP_INSTANCE_ID", format!("replica-{id}"))
        .env("TIENDO_LOG__FILTER", "info,librdkafka=warn")
        .env("TIENDO_LOG__FORMAT", "text")
        .stderr(log)
        .spawn()
        .map(Killed)
        .expect("tiendo starts")
}

/// What a stalled run needs explained: each partition's offset in Redis, and each replica's
/// last word on its assignment.
async fn explain_stall(env: &Env, logs: &Path) {
    let topics = &env.settings.kafka.topics;
    let parts: Vec<(&str, i32)> = (0..common::RECORD_PARTITIONS)
        .map(|p| (topics.records.as_str(), p))
        .chain((0..common::PROCEDURE_PARTITIONS).map(|p| (topics.procedures.as_str(), p)))
        .collect();
    let stored = env.reader().await.offsets(&parts).await;
    eprintln!(
        "stored offsets: {:?}",
        parts
            .iter()
            .zip(stored.unwrap_or_default())
            .collect::<Vec<_>>()
    );
    // What the broker holds: every record message read back from the beginning.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env.settings.kafka.brokers.as_str())
        .set("group.id", "tiendo-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..common::RECORD_PARTITIONS {
        tpl.add_partition_offset(&topics.records, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).expect("assign");
    let (mut messages, mut records) = (0u64, 0u64);
    let mut ids = std::collections::HashSet::new();
    let mut per_partition = [0u64; common::RECORD_PARTITIONS as usize];
    while let Some(m) = reader.poll(Duration::from_secs(5)) {
        let m = m.expect("message");
        messages += 1;
        per_partition[m.partition() as usize] += 1;
        let event = RecordDigitized::decode(m.payload().unwrap_or_default()).expect("decodes");
        if ids.insert(event.event_id) {
            records += event.record_count;
        }
    }
    eprintln!(
        "the broker holds {messages} record messages ({per_partition:?} by partition), \
         {} distinct events, {records} records",
        ids.len()
    );
    for id in 0..3 {
        let text =
            std::fs::read_to_string(logs.join(format!("replica-{id}.log"))).unwrap_or_default();
        let last: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("partitions") || l.contains("ERROR") || l.contains("WARN"))
            .collect();
        let _ = std::fs::create_dir_all("target/tansu-kills-logs");
        let _ = std::fs::write(format!("target/tansu-kills-logs/replica-{id}.log"), &text);
        eprintln!(
            "replica-{id}: {}",
            last[last.len().saturating_sub(8)..].join("\n  ")
        );
    }
}

/// A replica without an instance id: a dynamic member, which leaves the group when stopped.
/// Scaling down needs these: a static member does not leave (its partitions wait for the
/// session to expire, which Tansu never does).
fn dynamic_replica(env: &Env) -> Killed {
    Killed(member(env).spawn().expect("tiendo starts"))
}

/// `tiendo run` with Kafka's default group timeouts. A static member's first join takes about
/// 6 s on Tansu: with the test env's 6 s session timeout the group never settled (every
/// partition revoked half a second after assignment, for minutes).
fn member(env: &Env) -> std::process::Command {
    let mut cmd = env.process_command();
    cmd.env(
        "TIENDO_KAFKA__CONSUMER_PROPERTIES__SESSION_TIMEOUT_MS",
        "45000",
    )
    .env(
        "TIENDO_KAFKA__CONSUMER_PROPERTIES__HEARTBEAT_INTERVAL_MS",
        "3000",
    )
    .env(
        "TIENDO_KAFKA__CONSUMER_PROPERTIES__MAX_POLL_INTERVAL_MS",
        "300000",
    )
    .env("TIENDO_PIPELINE__BATCH_MAX_MESSAGES", "5000");
    cmd
}

/// Waits until Redis holds every field's total and every dead letter that was sent (counted,
/// since Tansu's watermarks answer low), then returns the figures.
async fn wait_for(env: &Env, expected: &Expected, timeout: Duration) -> Snapshot {
    let reached = |snap: &Snapshot| {
        let got = common::totals(snap);
        let at_least = |want: &BTreeMap<String, i64>, got: &BTreeMap<String, i64>| {
            want.iter()
                .all(|(k, n)| got.get(k).copied().unwrap_or(0) >= *n)
        };
        at_least(&expected.totals, &got) && at_least(&expected.dead, &snap.dead)
    };
    let deadline = Instant::now() + timeout;
    loop {
        let snap = env.snapshot().await;
        if reached(&snap) || Instant::now() > deadline {
            // A little longer, so anything counted twice would show.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return env.snapshot().await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every event was sent just now, so every window holds the whole total.
fn assert_exact(expected: &Expected, snap: &Snapshot) {
    expected.assert_matches(snap);
    for (field, counts) in &snap.counts {
        assert_eq!(counts.windows, [counts.total; 4], "windows of {field}");
    }
}

// This test found two ways to skip messages, both mended in the pipeline (`refetch_from`): a
// replica counting a part left over from an earlier assignment, and Tansu 0.6 answering a fetch
// that starts inside a record batch with the next batch (a replica restarted at 42,067 was
// served from 43,044, so 977 messages were never counted). A batch now never starts beyond the
// stored offset; the replicas' logs say how often one was fetched again. It also found a stall:
// such an answer repeats its last batches, and a part that restarted at the repeat dropped the
// stored offset, so the replica fetched again forever (`Batch::push` now drops repeats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_among_three_replicas_count_a_million_events_exactly() {
    let env = Env::start_tansu();
    let mut g = env.generator(31);
    let mut expected = Expected::default();
    let now = chrono::Utc::now();
    let mut messages: Vec<Generated> = Vec::with_capacity(EVENTS + EVENTS / RESEND_EVERY + 1);
    for i in 0..EVENTS {
        let m = if i % 5 == 4 {
            g.procedure(now)
        } else {
            g.record(now)
        };
        messages.push(m);
        if i % RESEND_EVERY == 7 {
            messages.push(messages[i / 2].clone());
        }
    }
    expected.add_all(&messages);

    let logs = tempfile::tempdir().expect("log dir");
    let mut replicas: Vec<Killed> = (0..3).map(|i| replica(&env, i, logs.path())).collect();
    // Publish over about a minute, in steps, while replicas are killed.
    let producer = env.independent_producer();
    let publisher = {
        let topics = env.settings.kafka.topics.clone();
        let messages = std::mem::take(&mut messages);
        tokio::spawn(async move {
            for chunk in messages.chunks(10_000) {
                let started = Instant::now();
                common::send_all(&producer, &topics, chunk).await;
                let pause = Duration::from_millis(550).saturating_sub(started.elapsed());
                tokio::time::sleep(pause).await;
            }
        })
    };

    let mut rng = fastrand::Rng::with_seed(31);
    let mut mid_stream = 0;
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.u64(1000..4000))).await;
        let victim = rng.usize(0..replicas.len());
        let progress = env.progress().await;
        replicas[victim].kill().expect("SIGKILL");
        replicas[victim].wait().expect("reaped");
        if !publisher.is_finished() || progress < env.progress().await {
            mid_stream += 1;
        }
        replicas[victim] = replica(&env, victim, logs.path());
    }
    publisher.await.expect("published");
    let snap = wait_for(&env, &expected, Duration::from_secs(300)).await;
    if common::totals(&snap) != expected.totals || snap.dead != expected.dead {
        explain_stall(&env, logs.path()).await;
    }
    for id in 0..3 {
        let text = std::fs::read_to_string(logs.path().join(format!("replica-{id}.log")))
            .unwrap_or_default();
        let refetches = text
            .lines()
            .filter(|l| l.contains("fetching again"))
            .count();
        eprintln!("replica-{id}: {refetches} batches fetched again");
    }
    for mut r in replicas {
        let _ = r.kill();
        let _ = r.wait();
    }
    assert_exact(&expected, &snap);
    assert!(
        mid_stream >= KILLS / 2,
        "only {mid_stream} of {KILLS} kills came while events were flowing"
    );
}

/// One replica, then three, then one again, while a producer publishes throughout: it sends
/// 2,000 events every 200 ms from before the first join until after the last leave, so every
/// rebalance happens with events flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_one_to_three_to_one_replica_while_publishing_counts_exactly() {
    let env = Env::start_tansu();
    let mut g = env.generator(32);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let publisher = {
        let producer = env.independent_producer();
        let topics = env.settings.kafka.topics.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            while !*stopped.borrow() {
                let part = common::events(&mut g, 2_000);
                common::send_all(&producer, &topics, &part).await;
                sent.extend(part);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            sent
        })
    };
    let mut replicas = vec![dynamic_replica(&env)];
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Two more join, then leave again (SIGTERM: a clean leave).
    for _ in 1..3 {
        replicas.push(dynamic_replica(&env));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    for _ in 1..3 {
        let mut r = replicas.pop().expect("a replica");
        signal(&r, "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = r.try_wait().expect("a replica's status") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "a replica still running 60 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "a replica left uncleanly");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.send(true).expect("the publisher listens");
    let sent = publisher.await.expect("published");
    let mut expected = Expected::default();
    expected.add_all(&sent);
    eprintln!("{} events published while scaling", sent.len());
    let snap = wait_for(&env, &expected, Duration::from_secs(240)).await;
    for mut r in replicas {
        let _ = r.kill();
        let _ = r.wait();
    }
    assert_exact(&expected, &snap);
}

/// The broker stopped for 30 s while two static replicas count and a producer keeps sending,
/// then started again on its log (SQLite storage keeps it): the replicas wait and resume from
/// the offsets in Redis, the producer's messages of the outage arrive, and the counts are
/// exact, re-sends across the outage included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopped_for_30_seconds_then_back_on_its_log_loses_and_repeats_nothing() {
    let mut env = Env::start_tansu_persistent();
    let producer = env.independent_producer();
    let topics = env.settings.kafka.topics.clone();
    let mut g = env.generator(33);
    let mut expected = Expected::default();
    let before = common::events(&mut g, 20_000);
    let mut during = common::events(&mut g, 10_000);
    // Re-sends of events counted before the outage, sent during it.
    during.extend(before.iter().step_by(50).cloned());
    expected.add_all(&before);
    expected.add_all(&during);

    let logs = tempfile::tempdir().expect("log dir");
    let replicas: Vec<Killed> = (0..2).map(|i| replica(&env, i, logs.path())).collect();
    common::send_all(&producer, &topics, &before).await;
    // Mid-stream: the replicas have counted some of what was sent.
    let counted = env.wait_progress(0, Duration::from_secs(90)).await;
    let common::Broker::Tansu(broker) = &mut env.kafka else {
        unreachable!("a Tansu env")
    };
    broker.stop();
    let stopped = Instant::now();
    // Sent while the broker is down: the producer holds them and delivers them once it is
    // back (librdkafka's message timeout, 300 s, is far longer than the outage).
    let publisher = {
        let (producer, topics) = (producer.clone(), topics.clone());
        tokio::spawn(async move { common::send_all(&producer, &topics, &during).await })
    };
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    assert!(
        !publisher.is_finished(),
        "delivered while the broker was down"
    );
    broker.start_again();
    publisher.await.expect("published after the outage");
    let snap = wait_for(&env, &expected, Duration::from_secs(180)).await;
    if common::totals(&snap) != expected.totals || snap.dead != expected.dead {
        explain_stall(&env, logs.path()).await;
    }
    drop(replicas);
    eprintln!("{counted} messages counted when the broker stopped");
    assert_exact(&expected, &snap);
}

/// Tansu 0.6 answers a fetch that starts inside a record batch with the next batch. A replica
/// resuming at a stored offset in the middle of one (where another replica stopped) must
/// count from exactly there: the first fetch skips ahead, so it is dropped and fetched again
/// from further back, and what lies below the stored offset is trimmed.
///
/// The same answer then repeats its last batches (Tansu advances its read by the records
/// it returned, counted from the offset asked for). The batches here are uneven so that the
/// repeat starts beyond the stored offset; a part that restarted at the repeat lost the
/// stored offset and fetched again forever (seen in the twenty-kill test's CI run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_inside_a_record_batch_counts_from_exactly_the_stored_offset() {
    let env = Env::start_tansu();
    let topic = env.settings.kafka.topics.records.clone();
    let mut g = env.generator(21);
    let now = chrono::Utc::now();
    // Record batches on partition 0 of 100, 500 (the stored offset, 300, lies inside it),
    // then 20 of 10: each chunk is sent at once and waited for.
    let sizes: Vec<usize> = [100, 500].into_iter().chain([10; 20]).collect();
    let events: Vec<Generated> = (0..sizes.iter().sum::<usize>())
        .map(|_| g.record(now))
        .collect();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.settings.kafka.brokers.as_str())
        .set("linger.ms", "100")
        .set("batch.num.messages", "1000")
        .set("acks", "all")
        .create()
        .expect("producer");
    let mut rest = &events[..];
    for size in sizes {
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let sends = chunk.iter().map(|m| {
            let payload = m.encode();
            let producer = &producer;
            let topic = &topic;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic)
                            .partition(0)
                            .key("k")
                            .payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("delivered")
            }
        });
        let offsets: Vec<i64> = futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|d| d.offset)
            .collect();
        assert_eq!(offsets.len(), size);
    }

    // Redis holds the first 300 as counted, as a replica that stopped there would leave it.
    let stored = 300;
    let key = tiendo::store::Keys::new(&env.settings.redis.key_prefix)
        .partition(&topic, 0)
        .offset();
    let client = redis::Client::open(env.settings.redis.url.expose()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(&key)
        .arg(stored)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let mut expected = Expected::default();
    expected.add_all(&events[stored..]);

    let port = tiendo::embedded::free_port().unwrap();
    let mut child = member(&env)
        .env("TIENDO_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .spawn()
        .map(Killed)
        .expect("tiendo starts");
    let snap = wait_for(&env, &expected, Duration::from_secs(120)).await;
    let refetched = common::scrape(
        &format!("http://127.0.0.1:{port}"),
        "tiendo_refetched_batches_total",
    )
    .await;
    signal(&child, "TERM");
    child.wait().unwrap();
    assert_exact(&expected, &snap);
    assert_eq!(
        snap.offsets.get(&format!("{topic}/0")),
        Some(&(events.len() as i64))
    );
    assert!(
        refetched.unwrap_or(0.0) >= 1.0,
        "the broker skipped ahead and the batch was fetched again ({refetched:?})"
    );
}
