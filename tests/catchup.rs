//! The figures-current check against real brokers, librdkafka's mock cluster and Tansu (whose
//! offset queries answer low): it says "catching up", with how far behind, while Redis holds
//! less than the topics, and "current" once the pipeline has counted what was there, again
//! after Redis lost its data, however little there is to recount.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;

use common::{events, Env};
use tiendo::catchup::{Currency, Watch};

/// Checks until `done` holds of a check, for at most `timeout`, and returns that check.
async fn check_until(
    watch: &Watch,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Currency) -> bool,
) -> Currency {
    let deadline = Instant::now() + timeout;
    loop {
        let c = watch.check(Utc::now()).await;
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks until every partition answers, for at most 60 s. Nothing consumes while it runs, so
/// repeated checks see the same offsets; a slow broker only delays the answer (the probe
/// gives a partition 10 s under its production timeouts). A first check that could not list
/// the partitions knows of none.
async fn answered(watch: &Watch) -> Currency {
    let done = |c: &Currency| c.unknown == 0 && c.partitions > 0;
    check_until(
        watch,
        Duration::from_secs(60),
        "partitions never answered",
        done,
    )
    .await
}

/// Checks until the figures are current, for at most 90 s.
async fn until_current(watch: &Watch) {
    let done = |c: &Currency| c.current;
    check_until(watch, Duration::from_secs(90), "never current", done).await;
}

async fn catching_up_until_counted(env: Env) {
    let mut g = env.generator(1);
    env.publish(&events(&mut g, 2_000)).await;
    let watch = Watch::new(&env.settings, env.reader().await).unwrap();
    let started = Instant::now();
    let c = answered(&watch).await;
    let took = started.elapsed();
    assert!(!c.current, "{c:?}");
    assert_eq!(c.behind, 2_000, "{c:?}");
    assert_eq!((c.partitions, c.unknown), (6, 0), "{c:?}");
    assert_eq!(c.from_listed_end, 0, "short backlogs are fetched: {c:?}");
    assert_eq!(c.reason.as_deref(), Some("catching up"));
    eprintln!("one check took {took:?}");

    let running = env.spawn().await;
    until_current(&watch).await;
    // Current means everything noted at the first check is counted.
    assert_eq!(env.snapshot().await.offsets.values().sum::<i64>(), 2_000);
    running.shutdown().await;

    // Redis loses everything: 2,000 messages are far within `max_lag`, but the recount must
    // reach today's ends before the figures are current again.
    assert!(env.settings.alerts.max_lag > 2_000);
    common::flush_redis(&env).await;
    let c = answered(&watch).await;
    assert!(!c.current, "a recount is catching up: {c:?}");
    assert_eq!(
        (c.behind, c.reason.as_deref()),
        (2_000, Some("catching up"))
    );
    let running = env.spawn().await;
    until_current(&watch).await;
    assert_eq!(env.snapshot().await.offsets.values().sum::<i64>(), 2_000);
    running.shutdown().await;
}

/// A backlog of a thousand messages or more in a partition is measured from near the end the
/// broker lists, so the probe does not fetch it (on Tansu, a fetch from the stored offset
/// brings tens of thousands of messages at once). Exact where the broker lists exact ends;
/// Tansu lists them low and may report its watermark short of its last record batch, so
/// there it can fall short by about a batch per partition (about a thousand in all here, far
/// within `alerts.max_lag`, which bounds what "current" may leave uncounted anyway).
async fn a_long_backlog_is_measured_without_fetching_it(env: Env, exact: bool) {
    let mut g = env.generator(2);
    env.publish(&events(&mut g, 20_000)).await;
    let watch = Watch::new(&env.settings, env.reader().await).unwrap();
    let c = answered(&watch).await;
    assert!(!c.current, "{c:?}");
    if exact {
        assert_eq!(c.behind, 20_000, "{c:?}");
    } else {
        assert!((17_000..=20_000).contains(&c.behind), "{c:?}");
    }
    // 16,000 records over 4 partitions, 4,000 procedures over 2, spread by province: each
    // record partition, at least, holds more than the thousand that make a long backlog.
    assert!(c.from_listed_end >= 4, "measured from listed ends: {c:?}");
    let running = env.spawn().await;
    until_current(&watch).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.snapshot().await.offsets.values().sum::<i64>() < 20_000 {
        assert!(Instant::now() < deadline, "not all counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_is_measured_without_fetching_it_on_the_mock_cluster() {
    a_long_backlog_is_measured_without_fetching_it(Env::start(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_backlog_is_measured_without_fetching_it_on_tansu() {
    a_long_backlog_is_measured_without_fetching_it(Env::start_tansu(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_until_redis_holds_what_the_topics_held() {
    catching_up_until_counted(Env::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_until_redis_holds_what_the_topics_held_on_tansu() {
    catching_up_until_counted(Env::start_tansu()).await;
}

/// A broker that does not answer is not a backlog: every partition is unanswered (whether
/// the listing or the probe failed), nothing is counted as behind, and the figures are not
/// current until it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_does_not_answer_leaves_every_partition_unanswered() {
    let env = Env::start();
    let mut g = env.generator(3);
    env.publish(&events(&mut g, 200)).await;
    let running = env.spawn().await;
    let watch = Watch::new(&env.settings, env.reader().await).unwrap();
    until_current(&watch).await;
    running.shutdown().await;

    let common::Broker::Mock(kafka) = &env.kafka else {
        unreachable!("Env::start runs the mock cluster")
    };
    kafka.cluster().broker_down(1).unwrap();
    let c = watch.check(Utc::now()).await;
    kafka.cluster().broker_up(1).unwrap();
    assert!(!c.current, "{c:?}");
    assert_eq!((c.partitions, c.unknown, c.behind), (6, 6, 0), "{c:?}");
    assert!(c.reason.is_some(), "{c:?}");
    until_current(&watch).await;
}

/// An event topic the broker does not have is named as the reason, not taken for Kafka
/// being unreachable: the records keep being counted while the page says what to create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_as_the_reason() {
    let env = Env::start();
    let mut settings = env.settings.clone();
    settings.kafka.topics.procedures = "no_such_topic".into();
    let watch = Watch::new(&settings, env.reader().await).unwrap();
    let c = watch.check(Utc::now()).await;
    assert!(!c.current, "{c:?}");
    let reason = c.reason.unwrap_or_default();
    assert!(reason.starts_with("topic no_such_topic: "), "{reason}");
}

/// On Redis Cluster the counters and the alert ledger live on different nodes, so a node
/// failing over to an empty replica can lose the counters and keep the alerts. While the
/// recount runs, alerts hold: nothing fires or resolves on partial figures. Once current, the
/// states are what they were before the loss, and chat is told nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_hold_through_a_recount_and_nothing_is_told() {
    use tiendo::clock::{ManualClock, SharedClock};
    use tiendo::rules::evaluator::Evaluator;

    let env = Env::start();
    let now = Utc::now();
    common::seed_stalls(&env, now).await;
    let mut s = env.settings.clone();
    s.alerts.rules.pending_for = Duration::ZERO;
    s.alerts.rules.clear_for = Duration::ZERO;
    let clock: SharedClock = ManualClock::new(now);
    let (store, ledger) = common::store_and_ledger(&s).await;
    let watch = Watch::new(&s, env.reader().await).unwrap();
    let evaluator = Evaluator::new(
        store,
        ledger.clone(),
        common::stall_targets(now, &s.validation.datasets),
        s.validation.datasets.clone(),
        s.alerts.clone(),
        clock,
        false,
    )
    .with_watch(watch);
    let first = evaluator.evaluate_once().await.unwrap();
    assert!(first.held.is_none(), "{:?}", first.held);
    assert!(first.notices.len() >= 3, "{:#?}", first.notices);
    let before = ledger.read().await.unwrap().states;

    // Every key but the alerts' goes: counters, offsets, claims.
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let lost: Vec<&String> = keys.iter().filter(|k| !k.contains("{alerts}")).collect();
    assert!(lost.len() > 10, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&lost)
        .query_async(&mut conn)
        .await
        .unwrap();

    let held = evaluator.evaluate_once().await.unwrap();
    assert!(held.held.is_some(), "the recount is seen");
    assert!(held.notices.is_empty(), "{:#?}", held.notices);
    let read = ledger.read().await.unwrap();
    assert_eq!(read.states, before);
    let began = read.held_since.expect("the hold recorded");
    assert!(
        (began - now).num_milliseconds().abs() < 1000,
        "began {began}"
    );

    let running = env.spawn().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = evaluator.evaluate_once().await.unwrap();
        assert!(out.notices.is_empty(), "{:#?}", out.notices);
        if out.held.is_none() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    running.shutdown().await;
    assert!(out.held.is_none(), "the recount ends");
    assert_eq!(
        ledger.read().await.unwrap().held_since,
        None,
        "the hold is over"
    );
    assert!(
        out.chat.is_none(),
        "no news after the recount: {:?}",
        out.chat
    );
    assert_eq!(ledger.read().await.unwrap().states, before);
}
