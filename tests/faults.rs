//! Faults of the parts around tiendo, on librdkafka's mock cluster (which can take its broker
//! down and fail requests on cue): the Kafka broker down for 30 s mid-stream, and the
//! dead-letter topic refusing writes for a while. Counts stay exact; no poison is lost; good
//! events wait no longer than the outage.

mod common;

use std::time::{Duration, Instant};

use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

use common::{events, Broker, Env, Expected};

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
    // From now on the next 40 produce requests fail for good: only tiendo's dead-letter
    // producer produces.
    let errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 40];
    mock(&env)
        .cluster()
        .request_errors(RDKafkaApiKey::Produce, &errors);
    let started = Instant::now();
    let running = env.spawn().await;
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    let took = started.elapsed();
    running.shutdown().await;
    expected.assert_matches(&snap);
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
    println!("counted in {took:?} with 40 refused dead-letter writes");
}
