//! Exact counts from Kafka into Redis: after a normal run, re-sent events, poison messages,
//! a consumer killed mid-stream (several times), a rebalance between two consumers, a zombie
//! paused past its session timeout, and Redis killed and restarted mid-stream. Each of those
//! compares every counter with what was published; the last test checks the dedup claims
//! that keep re-sends out of the counters against a model of them.

mod common;

use std::time::{Duration, Instant};

use common::{events, signal, Env, Expected};
use tiendo::generator::Generated;

const SETTLE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_run_counts_every_event_once() {
    let env = Env::start();
    let mut g = env.generator(1);
    let batch = events(&mut g, 3000);
    let mut expected = Expected::default();
    expected.add_all(&batch);
    env.publish(&batch).await;

    let running = env.spawn().await;
    let snap = env.wait_consumed(SETTLE).await;
    running.shutdown().await;

    expected.assert_matches(&snap);
    // Everything happened just now, so every window holds the whole total.
    for (field, counts) in &snap.counts {
        assert_eq!(counts.windows, [counts.total; 4], "{field}");
    }
    assert!(snap.latest.keys().any(|k| k.ends_with("|p")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_sent_events_count_once_even_on_other_partitions() {
    let env = Env::start();
    let mut g = env.generator(2);
    let first = events(&mut g, 1500);
    // Re-send a third of them (same ids, same content) in later batches.
    let again: Vec<Generated> = first.iter().step_by(3).cloned().collect();
    let mut expected = Expected::default();
    expected.add_all(&first);
    expected.add_all(&again);

    let running = env.spawn().await;
    env.publish(&first).await;
    env.publish(&again).await;
    // The same events once more, keyed differently from the start.
    let keyed_elsewhere: Vec<Generated> = first.iter().take(200).cloned().collect();
    publish_with_random_keys(&env, &keyed_elsewhere).await;
    expected.add_all(&keyed_elsewhere);
    let snap = env.wait_consumed(SETTLE).await;
    running.shutdown().await;
    expected.assert_matches(&snap);
}

async fn publish_with_random_keys(env: &Env, messages: &[Generated]) {
    use rdkafka::producer::FutureRecord;
    let producer = tiendo::source::producer(&env.settings.kafka, "test producer").unwrap();
    for m in messages {
        let topic = match m.kind() {
            tiendo::events::Kind::Records => &env.settings.kafka.topics.records,
            tiendo::events::Kind::Procedures => &env.settings.kafka.topics.procedures,
        };
        let key = format!("k{}", fastrand::u32(..));
        let payload = m.encode();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_valid_events_all_counted() {
    let env = Env::start();
    let mut g = env.generator(3);
    let now = chrono::Utc::now();
    let mut stream = Vec::new();
    for i in 0..1200 {
        stream.push(if i % 10 == 0 {
            g.poison(now)
        } else {
            g.record(now)
        });
    }
    let mut expected = Expected::default();
    expected.add_all(&stream);
    env.publish(&stream).await;

    let running = env.spawn().await;
    let snap = env.wait_consumed(SETTLE).await;
    running.shutdown().await;
    expected.assert_matches(&snap);

    let letters = env.dead_letters();
    let unique: std::collections::BTreeSet<_> = letters
        .iter()
        .map(|(_, p, o)| (p.clone(), o.clone()))
        .collect();
    assert_eq!(unique.len() as i64, expected.dead.values().sum::<i64>());
    for (reason, _, offset) in &letters {
        assert!(expected.dead.contains_key(reason), "{reason}");
        assert!(offset.parse::<i64>().is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_process_killed_mid_stream_restarts_exactly() {
    let env = Env::start();
    let mut g = env.generator(4);
    let mut expected = Expected::default();
    let mut child = env.spawn_process();
    let mut published = 0i64;
    let mut kills_mid_stream = 0;
    for _ in 0..4 {
        let part = events(&mut g, 2500);
        expected.add_all(&part);
        let resend: Vec<Generated> = part.iter().step_by(7).cloned().collect();
        // Read before publishing: a replica quick enough to store the whole round first
        // would otherwise leave no progress to wait for.
        let before = env.progress().await;
        env.publish(&part).await;
        env.publish(&resend).await;
        published += (part.len() + resend.len()) as i64;
        // Kill it without a goodbye as soon as it has stored something since the round began.
        let at_kill = env.wait_progress(before, SETTLE).await;
        child.kill().expect("kill");
        child.wait().expect("reap");
        if at_kill < published {
            kills_mid_stream += 1;
        }
        child = env.spawn_process();
    }
    let snap = env.wait_consumed(SETTLE).await;
    child.kill().ok();
    child.wait().ok();
    expected.assert_matches(&snap);
    assert!(
        kills_mid_stream >= 2,
        "only {kills_mid_stream} kills landed mid-stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_consumers_loses_and_repeats_nothing() {
    let env = Env::start();
    let mut g = env.generator(5);
    let mut expected = Expected::default();
    let first = env.spawn().await;
    let a = events(&mut g, 2000);
    expected.add_all(&a);
    env.publish(&a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A second consumer joins mid-stream: partitions move.
    let second = env.spawn().await;
    let b = events(&mut g, 2000);
    expected.add_all(&b);
    env.publish(&b).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The first leaves mid-stream: its partitions move back.
    first.shutdown().await;
    let c = events(&mut g, 1000);
    expected.add_all(&c);
    env.publish(&c).await;

    let snap = env.wait_consumed(SETTLE).await;
    second.shutdown().await;
    expected.assert_matches(&snap);
}

/// A zombie: a replica paused (SIGSTOP) with a batch in hand, past the session timeout, while
/// the group gives its partitions to the other replica, which stores further offsets. Resumed
/// (SIGCONT), the zombie writes its stale batch: Redis refuses it on the offset fence
/// (`tiendo_fenced_batches_total` rises) and nothing is counted twice.
///
/// The zombie reaches Redis through a relay. Held a second before the pause, it keeps the
/// zombie's next batch on its way to Redis, so the zombie is nearly always paused with a batch
/// past every check it makes of its partitions: that batch reaches Redis after the other
/// replica's. (If its answer comes after the 10 s response timeout, the batch is written
/// again as it was prepared, and fenced all the same.) Without the relay the zombie, once
/// resumed, may hear of the rebalance first and drop its batch itself, and a fence is then
/// never put to the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_paused_past_the_session_timeout_is_fenced_when_it_resumes() {
    let env = Env::start();
    let mut g = env.generator(8);
    // Events keep coming until the zombie was fenced, so each replica always has a batch in
    // hand. The publisher returns what it sent.
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let producer =
            tiendo::source::producer(&env.settings.kafka, "test producer").expect("producer");
        let topics = env.settings.kafka.topics.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            while !stop.is_cancelled() {
                let chunk = events(&mut g, 1_000);
                tiendo::generator::publish(&producer, &topics, &chunk)
                    .await
                    .expect("published");
                sent.extend(chunk);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            sent
        })
    };
    let port = tiendo::embedded::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let relay = common::relay::Relay::start(env.redis.port()).await;
    let mut zombie = env
        .process_command()
        .env("TIENDO_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "TIENDO_REDIS__URL",
            format!("redis://127.0.0.1:{}", relay.port()),
        )
        .spawn()
        .map(common::Killed)
        .expect("tiendo starts");
    let other_port = tiendo::embedded::free_port().unwrap();
    let mut other = env
        .process_command()
        .env("TIENDO_HTTP__LISTEN", format!("127.0.0.1:{other_port}"))
        .spawn()
        .map(common::Killed)
        .expect("tiendo starts");
    let scrape = |base: String, name: &'static str| async move {
        common::scrape(&base, name).await.unwrap_or(0.0)
    };
    let metric = |name: &'static str| scrape(base.clone(), name);
    let others = |name: &'static str| scrape(format!("http://127.0.0.1:{other_port}"), name);
    let all = f64::from(common::RECORD_PARTITIONS + common::PROCEDURE_PARTITIONS);
    let mut fenced = 0.0;
    let mut pauses = 0;
    // Pauses during which the group gave the other replica every partition.
    let mut moved = 0;
    // One pause is enough unless what is held is no batch past its checks: the periodic
    // check of stored offsets (every 5 s), which learns of the other's offsets without a
    // fence, or a read made ahead for a batch not yet prepared.
    while fenced == 0.0 && pauses < 4 {
        // Sharing the partitions with the other: no rebalance under way, whose offset reads
        // (through the relay) the hold would hold up.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mine = metric("tiendo_assigned_partitions").await;
            if (mine > 0.0 && mine < all) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Working: it has just stored a batch.
        let deadline = Instant::now() + Duration::from_secs(30);
        let before = metric("tiendo_events_total").await;
        while metric("tiendo_events_total").await == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its next batch is held on the way; its heartbeats still keep its partitions.
        relay.hold();
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal(&zombie, "STOP");
        pauses += 1;
        // Past the 6 s session timeout, and time for the other to store on its new partitions.
        tokio::time::sleep(Duration::from_secs(12)).await;
        // The group has moved the zombie's partitions: the other holds them all.
        let deadline = Instant::now() + Duration::from_secs(20);
        while others("tiendo_assigned_partitions").await < all && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        moved += usize::from(others("tiendo_assigned_partitions").await == all);
        // The zombie's held write reaches Redis, after the other's.
        relay.release();
        tokio::time::sleep(Duration::from_millis(500)).await;
        signal(&zombie, "CONT");
        tokio::time::sleep(Duration::from_secs(3)).await;
        fenced = metric("tiendo_fenced_batches_total").await;
    }
    stop.cancel();
    let mut expected = Expected::default();
    expected.add_all(&publisher.await.expect("published"));
    let snap = env.wait_consumed(SETTLE).await;
    for child in [&mut zombie, &mut other] {
        let _ = child.kill();
        let _ = child.wait();
    }
    expected.assert_matches(&snap);
    assert_eq!(
        moved, pauses,
        "the other replica held every partition in each pause"
    );
    assert!(
        fenced > 0.0,
        "no batch of the zombie was fenced in {pauses} pauses"
    );
    eprintln!("{fenced} partition batches of the zombie fenced after {pauses} pause(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_stream_loses_and_repeats_nothing() {
    let mut env = Env::start();
    let mut g = env.generator(6);
    let mut expected = Expected::default();
    let running = env.spawn().await;
    for _ in 0..3 {
        let part = events(&mut g, 1500);
        expected.add_all(&part);
        let before = env.progress().await;
        env.publish(&part).await;
        // As soon as some of this round is stored, Redis is killed, not shut down: whatever
        // it had not fsynced is gone, offsets included.
        env.wait_progress(before, SETTLE).await;
        env.redis.kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        env.redis.restart().expect("redis restarts");
    }
    let snap = env.wait_consumed(SETTLE).await;
    running.shutdown().await;
    expected.assert_matches(&snap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_is_detected_and_everything_recounted_from_the_log() {
    let env = Env::start();
    let mut g = env.generator(10);
    let mut expected = Expected::default();
    let running = env.spawn().await;
    let first = events(&mut g, 1500);
    expected.add_all(&first);
    env.publish(&first).await;
    env.publish(&first[..300]).await; // re-sends, which must stay uncounted after the loss
    env.wait_consumed(SETTLE).await;

    // Redis loses everything (a failover to an empty replica, a bad restore): the pipeline's
    // fence sees offsets it did not expect and recounts from the start of the log.
    common::flush_redis(&env).await;

    let second = events(&mut g, 1500);
    expected.add_all(&second);
    env.publish(&second).await;
    let snap = env.wait_consumed(SETTLE).await;
    running.shutdown().await;
    expected.assert_matches(&snap);
}

/// The same loss with nothing published afterwards: no batch runs the fence, yet the pipeline
/// notices within seconds (it checks its stored offsets) and recounts every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_is_noticed_on_idle_partitions_too() {
    let env = Env::start();
    let mut g = env.generator(11);
    let mut expected = Expected::default();
    let running = env.spawn().await;
    let first = events(&mut g, 1000);
    expected.add_all(&first);
    env.publish(&first).await;
    env.wait_consumed(SETTLE).await;

    common::flush_redis(&env).await;

    let snap = env.wait_consumed(SETTLE).await;
    running.shutdown().await;
    expected.assert_matches(&snap);
}

/// claim.lua against a model of its claims, on buckets of more than one chunk (it reads and
/// writes 2,000 claims per command): a replay (the same id, partition and offset) is new
/// again, a re-send (the same id from another offset) is not, wherever it falls in a chunk,
/// a call retried whole gets the same answer, and every new claim is written by its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_answer_as_a_model_of_them_across_chunks() {
    use std::collections::HashMap;

    use tiendo::embedded::RedisServer;
    use tiendo::events::Kind;
    use tiendo::store::{self, Claim, IdKey, Store, DEDUP_SHARDS};

    let redis = RedisServer::start().expect("redis-server");
    let mut settings = tiendo::config::Settings::default();
    settings.redis.url = tiendo::config::Secret::new(redis.url());
    let store = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        "cl",
        settings.validation.datasets.clone(),
        3600,
    );
    let day = 86_400;
    let at = 1_764_000_000;
    // About 2,600 claims a bucket (a shard, kind and week each: two kinds, two weeks).
    let n = 2_600 * 2 * 2 * DEDUP_SHARDS as usize;
    let claim = |i: usize, offset: i64| Claim {
        kind: if i % 2 == 0 {
            Kind::Records
        } else {
            Kind::Procedures
        },
        id: IdKey::of(&format!("event-{i}")),
        partition: (i % 3) as i32,
        offset,
        at: at + (i % 4 / 2) as i64 * 7 * day,
    };
    // (event index, at) → (partition, offset) that owns it: kind and week follow from both.
    let mut model: HashMap<(usize, i64), (i32, i64)> = HashMap::new();
    let mut check = |claims: &[(usize, Claim)], answer: &[bool]| {
        assert_eq!(answer.len(), claims.len());
        for ((i, c), fresh) in claims.iter().zip(answer) {
            let owner = *model.entry((*i, c.at)).or_insert((c.partition, c.offset));
            assert_eq!(
                *fresh,
                owner == (c.partition, c.offset),
                "claim of event-{i}"
            );
        }
    };
    // Every id claimed so far, re-sent from an offset that owns none: all are taken, so no
    // new claim was left unwritten (and a re-send writes nothing).
    let store = &store;
    let all_taken = |claimed: &[usize]| {
        let resent: Vec<Claim> = claimed
            .iter()
            .map(|&i| claim(i, (5 * n + i) as i64))
            .collect();
        async move {
            let answer = store.claim(&store.plan_claims(&resent)).await.unwrap();
            answer.iter().all(|f| !*f)
        }
    };
    let first: Vec<(usize, Claim)> = (0..n).map(|i| (i, claim(i, i as i64))).collect();
    let bare = |cs: &[(usize, Claim)]| -> Vec<Claim> { cs.iter().map(|(_, c)| *c).collect() };
    let answer = store
        .claim(&store.plan_claims(&bare(&first)))
        .await
        .unwrap();
    assert!(answer.iter().all(|f| *f));
    check(&first, &answer);
    let mut claimed: Vec<usize> = (0..n).collect();
    assert!(all_taken(&claimed).await);

    // Replays, re-sends and new ids, shuffled so that taken claims fall anywhere in a chunk,
    // sent twice: a call retried whole answers the same.
    let mut rng = fastrand::Rng::with_seed(12);
    let mut second: Vec<(usize, Claim)> = (0..n)
        .map(|i| match rng.u8(0..3) {
            0 => (i, claim(i, i as i64)),
            1 => (i, claim(i, (n + i) as i64)),
            _ => (n + i, claim(n + i, (2 * n + i) as i64)),
        })
        .collect();
    rng.shuffle(&mut second);
    claimed.extend(second.iter().map(|(i, _)| *i).filter(|i| *i >= n));
    for _ in 0..2 {
        let answer = store
            .claim(&store.plan_claims(&bare(&second)))
            .await
            .unwrap();
        let taken = answer.iter().filter(|f| !**f).count();
        assert!(taken > n / 4, "{taken} re-sends of {n}");
        check(&second, &answer);
        assert!(all_taken(&claimed).await);
    }
}
