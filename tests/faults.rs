//! Faults of the parts around tiendo, on librdkafka's mock cluster (which can take its broker
//! down and fail requests on cue): the Kafka broker down for 30 s mid-stream (on Tansu too, in
//! `tests/tansu_kills.rs`), the dead-letter
//! topic refusing writes for 10 s, and Redis crashing with the tail of its AOF cut off.
//! Counts stay exact; no poison is lost; counting resumes as soon as the outage ends. And a
//! broker that cannot be reached at all does not flood the log, which says when it is back.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

use common::tansu::Tansu;
use common::{aof, events, signal, Broker, Env, Expected, Killed, Log};
use tiendo::embedded::free_port;

fn mock(env: &Env) -> &tiendo::embedded::MockKafka {
    match &env.kafka {
        Broker::Mock(m) => m,
        Broker::Tansu(_) => unreachable!("these faults need the mock cluster"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_for_30_seconds_mid_stream_loses_and_repeats_nothing() {
    let env = Env::start();
    let mut g = env.generator(21);
    let first = events(&mut g, 3000);
    let second = events(&mut g, 3000);
    let mut expected = Expected::default();
    expected.add_all(&first);
    expected.add_all(&second);
    env.publish(&first).await;
    let running = env.spawn().await;
    // Mid-stream: some of the first half counted, not all.
    env.wait_progress(1, Duration::from_secs(60)).await;
    mock(&env).cluster().broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    mock(&env).cluster().broker_up(1).unwrap();
    env.publish(&second).await;
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    running.shutdown().await;
    expected.assert_matches(&snap);
}

/// The dead-letter topic refusing every write for 10 s. A batch with poison waits for its
/// letters to be written before it counts anything, so good events wait with it during the
/// outage, but not after: counting starts again within one retry backoff of the topic coming
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_topic_refusing_writes_for_a_while_loses_no_poison_and_counts_once() {
    let env = Env::start();
    let mut g = env.generator(22);
    let now = chrono::Utc::now();
    let stream: Vec<_> = (0..3000)
        .map(|i| {
            if i % 10 == 0 {
                g.poison(now)
            } else {
                g.record(now)
            }
        })
        .collect();
    let mut expected = Expected::default();
    expected.add_all(&stream);
    env.publish(&stream).await;
    // From now on every produce request fails, until cleared: only tiendo's dead-letter
    // producer produces.
    let outage = Duration::from_secs(10);
    let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100_000];
    mock(&env)
        .cluster()
        .request_errors(RDKafkaApiKey::Produce, &errors);
    let running = env.spawn().await;
    tokio::time::sleep(outage).await;
    let refused = env.letters().len();
    let held = env.progress().await;
    mock(&env)
        .cluster()
        .clear_request_errors(RDKafkaApiKey::Produce);
    let back = Instant::now();
    // Timed to the first batch stored, not to the last: how long the rest takes is the
    // mock broker's fetch speed, not the outage's.
    env.wait_progress(held, Duration::from_secs(60)).await;
    let resumed = back.elapsed();
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    let after = back.elapsed();
    running.shutdown().await;
    expected.assert_matches(&snap);
    assert_eq!(refused, 0, "the topic took letters during the outage");
    // Held past the outage by at most one retry backoff (and a batch's work).
    let bound = env.settings.pipeline.max_backoff + Duration::from_secs(10);
    assert!(
        resumed <= bound,
        "counting resumed {resumed:?} after the outage ended (bound {bound:?})"
    );
    // And the rest is not held back batch by batch (0.5 s measured; the bound only catches
    // a backoff per batch).
    assert!(
        after <= bound + Duration::from_secs(20),
        "the backlog took {after:?} after the outage ended"
    );
    // Every poison message is in the topic at least once (a retried batch may repeat a
    // letter; its origin headers tell), with its reason.
    let letters = env.letters();
    let unique: std::collections::BTreeMap<(String, String, String), String> = letters
        .iter()
        .map(|l| {
            (
                (l.topic.clone(), l.partition.clone(), l.offset.clone()),
                l.reason.clone(),
            )
        })
        .collect();
    let mut by_reason = std::collections::BTreeMap::<String, i64>::new();
    for reason in unique.values() {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    assert_eq!(by_reason, expected.dead);
    assert!(letters.len() >= unique.len());
    println!(
        "a {outage:?} dead-letter outage; counting resumed {resumed:?} and ended {after:?} after it"
    );
}

/// Redis killed mid-stream with the end of its AOF cut off, mid-command, the way a crash
/// during a write leaves it; started again, which repairs it with `redis-check-aof --fix`. Its
/// offsets and counters roll back together (one script wrote both), and the pipeline, still
/// running, counts again from what Redis holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_the_tail_of_its_aof_counts_again_from_what_it_kept() {
    let mut env = Env::start();
    let mut g = env.generator(23);
    let mut expected = Expected::default();
    let running = env.spawn().await;
    for round in 0..3 {
        let part = events(&mut g, 1500);
        expected.add_all(&part);
        let before = env.progress().await;
        env.publish(&part).await;
        env.wait_progress(before, Duration::from_secs(60)).await;
        // Let some writes reach the AOF, then crash.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        env.redis.kill();
        let incr = aof::incr_file(env.redis.dir());
        let len = std::fs::metadata(&incr).unwrap().len();
        // A third of what the last file holds, at most 64 KiB, ending mid-command.
        let cut = (len / 3).min(64 << 10) + 7;
        let file = std::fs::OpenOptions::new().write(true).open(&incr).unwrap();
        file.set_len(len.saturating_sub(cut)).unwrap();
        drop(file);
        // Started the way the README asks after a crash: `redis-check-aof --fix` first.
        env.redis
            .restart()
            .expect("redis restarts on the repaired AOF");
        let said = env.redis.repaired().unwrap_or_default();
        assert!(
            said.contains("Successfully truncated AOF"),
            "round {round}: {said}"
        );
    }
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    running.shutdown().await;
    expected.assert_matches(&snap);
}

/// The crash the test above can leave by chance, made on purpose: a batch script's
/// transaction torn mid-command at the end of the AOF, then a second crash after more writes.
/// Redis 7.0 repairing by itself (`aof-load-truncated yes`) keeps the torn `MULTI`, and the
/// next transaction completes it at the following start: half a script applied, counters
/// without their offset. Started as the README asks (`redis-check-aof --fix`, then
/// `aof-load-truncated no`), the torn part is gone for good.
#[test]
fn a_torn_transaction_at_the_end_of_the_aof_is_never_half_applied() {
    let mut redis = tiendo::embedded::RedisServer::start().expect("redis-server starts");
    aof::write_pair(&redis.url(), 1);
    redis.kill();
    aof::append_torn_transaction(redis.dir());
    redis
        .restart()
        .expect("redis restarts after the first crash");
    assert!(redis.repaired().is_some(), "the torn transaction was cut");
    aof::write_pair(&redis.url(), 2);
    redis.kill();
    redis
        .restart()
        .expect("redis restarts after the second crash");
    assert_eq!(
        aof::read_pair(&redis.url()),
        (2, 2),
        "two whole scripts, nothing of the torn one"
    );
}

/// A broker that cannot be reached: each Kafka client reports an error about every 100 ms,
/// and `tiendo_kafka_errors_total` counts them all, but the log (at the shipped filter) shows
/// each client's error once a minute with how many were held back, not ten lines a second.
/// When a broker comes up there, one line says Kafka answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_counted_every_time_logged_once_a_minute_and_its_return_once() {
    let env = Env::start();
    let http = free_port().expect("a free port");
    let kafka = free_port().expect("a free port");
    let spawned = Instant::now();
    let mut child = Killed(
        env.process_command()
            .env("TIENDO_KAFKA__BROKERS", format!("127.0.0.1:{kafka}"))
            // Statistics every second, not every 15 s, for a quick return.
            .env(
                "TIENDO_KAFKA__CONSUMER_PROPERTIES__STATISTICS_INTERVAL_MS",
                "1000",
            )
            .env("TIENDO_HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("TIENDO_LOG__FILTER", "info,librdkafka=warn,rdkafka=warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("tiendo starts"),
    );
    // Read as it comes, so a flood could not fill the pipe and stall the process.
    let mut log = Log::of(&mut child.0);
    let base = format!("http://127.0.0.1:{http}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = loop {
        let n = common::scrape(&base, "tiendo_kafka_errors_total").await;
        if let Some(n) = n.filter(|n| *n >= 50.0) {
            break n;
        }
        assert!(Instant::now() < deadline, "errors counted: {n:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let topics = &env.settings.kafka.topics;
    let _broker = Tansu::start_on(
        kafka,
        &[
            (&topics.records, 1),
            (&topics.procedures, 1),
            (&topics.dead_letter, 1),
            (&topics.alerts, 1),
        ],
    );
    log.wait_for("kafka answering again", Duration::from_secs(60));
    let down = log.seen().to_vec();
    // Once a minute: a slow run may be past its first minute by now.
    let allowed = 1 + spawned.elapsed().as_secs() / 60;
    signal(&child.0, "TERM");
    let status = child.0.wait().expect("wait");
    let log = log.rest();
    assert!(status.success(), "{status}\n{log:#?}");
    let logged: Vec<&String> = down
        .iter()
        .filter(|l| l.contains("kafka client error") || l.contains("consume error"))
        .collect();
    // One line per client and error each minute: the consumer, the dead-letter and alerts
    // producers, the catch-up probe and the consume loop, each with a transport failure and
    // all brokers down (and, when the broker is up before its topics, the consumer's unknown
    // topic), however many times each came.
    let mut seen = std::collections::HashMap::<_, u64>::new();
    for line in &logged {
        let what = |key: &str| {
            line.split(key)
                .nth(1)
                .and_then(|rest| rest.split([' ', '(']).next())
                .unwrap_or("")
                .to_string()
        };
        let times = seen
            .entry((
                what("client="),
                line.contains("consume error"),
                what("error: "),
            ))
            .or_default();
        *times += 1;
        assert!(
            *times <= allowed,
            "{counted} errors, logged more than {allowed} times:\n{logged:#?}"
        );
    }
    assert!(!logged.is_empty(), "{counted} errors, none logged");
    assert!(logged.iter().all(|l| l.contains("held_back=")), "{log:#?}");
    let back: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("kafka answering again"))
        .collect();
    assert_eq!(back.len(), 1, "{log:#?}");
    assert!(
        back[0].contains("client=\"consumer\"") && back[0].contains("since_first_error="),
        "{}",
        back[0]
    );
}
