//! Hostile input at a high rate: 10,000 poison messages of every reason on both topics
//! (`unknown_schema_id` aside: it needs a Schema Registry, and `tests/encodings.rs` has one),
//! among valid events, and messages of 1 MiB, in the payload or in the key, that are too large
//! for the dead-letter topic. Every valid event is counted exactly, every poison message lands
//! in the dead-letter topic with its reason (the huge ones cut, their size in a header), and
//! no partition is held.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Env, Expected, Letter};
use rdkafka::producer::FutureRecord;
use tiendo::config::Secret;
use tiendo::decode::Reason;
use tiendo::events::Kind;
use tiendo::generator::{publish, Generated};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_poison_messages_of_every_reason_and_huge_ones_on_both_topics() {
    let env = Env::start();
    let mut g = env.generator(12);
    let now = chrono::Utc::now();
    let kinds = [Kind::Records, Kind::Procedures];
    let mut combos = Vec::new();
    for kind in kinds {
        for reason in Reason::ALL {
            if g.poison_of(kind, reason, now).is_some() {
                combos.push((kind, reason));
            }
        }
    }
    assert_eq!(
        combos.len(),
        28,
        "every reason on the topics that can have it"
    );
    let mut stream = Vec::new();
    let mut i = 0;
    while stream.len() < 10_000 + 2_000 {
        let (kind, reason) = combos[i % combos.len()];
        stream.push(g.poison_of(kind, reason, now).unwrap());
        if i % 5 == 0 {
            stream.push(if i % 2 == 0 {
                g.record(now)
            } else {
                g.procedure(now)
            });
        }
        i += 1;
    }
    // 1 MiB of garbage on each topic: larger than the dead-letter producer takes here.
    for kind in kinds {
        stream.push(Generated::Poison {
            kind,
            bytes: vec![0xff; 1 << 20],
            reason: Reason::Undecodable,
        });
    }
    let mut expected = Expected::default();
    expected.add_all(&stream);
    assert_eq!(expected.dead.values().sum::<i64>(), 10_002);
    let mut big = env.settings.kafka.clone();
    big.producer_properties
        .insert("message.max.bytes".into(), Secret::new("4000000"));
    let producer = tiendo::source::producer(&big, "test producer").unwrap();
    for chunk in stream.chunks(2000) {
        publish(&producer, &env.settings.kafka.topics, chunk)
            .await
            .unwrap();
    }
    // A small undecodable payload under a 1 MiB key: the payload alone cannot be cut to fit.
    let key = vec![b'k'; 1 << 20];
    producer
        .send(
            FutureRecord::to(&env.settings.kafka.topics.records)
                .key(&key[..])
                .payload(&[0xff_u8; 10][..]),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    *expected.dead.entry("undecodable".into()).or_default() += 1;

    // The dead-letter topic takes less than the event topics do.
    let mut settings = env.settings.clone();
    settings
        .kafka
        .producer_properties
        .insert("message.max.bytes".into(), Secret::new("500000"));
    let running = env.spawn_with(settings).await;
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    running.shutdown().await;
    expected.assert_matches(&snap);

    let letters = env.letters();
    let mut by_reason: BTreeMap<String, i64> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in &letters {
        // A letter sent twice (a batch retried) is one: the origin headers tell.
        if seen.insert((l.topic.clone(), l.partition.clone(), l.offset.clone())) {
            *by_reason.entry(l.reason.clone()).or_default() += 1;
        }
    }
    assert_eq!(by_reason, expected.dead);
    // Each once, though a batch sent again may have sent its letters twice.
    let once = |cut: fn(&Letter) -> bool| -> Vec<&Letter> {
        let by_origin: BTreeMap<_, _> = letters
            .iter()
            .filter(|l| cut(l))
            .map(|l| ((&l.topic, &l.partition, &l.offset), l))
            .collect();
        by_origin.into_values().collect()
    };
    let huge = once(|l| !l.truncated.is_empty());
    assert_eq!(huge.len(), 2, "{huge:?}");
    for l in huge {
        assert_eq!(l.truncated, (1 << 20).to_string());
        assert_eq!(l.bytes, tiendo::deadletter::TRUNCATED_TO);
        assert_eq!(l.reason, "undecodable");
    }
    assert!(letters
        .iter()
        .all(|l| l.truncated.is_empty() == (l.bytes < tiendo::deadletter::TRUNCATED_TO)));
    let long_keys = once(|l| !l.key_truncated.is_empty());
    assert_eq!(long_keys.len(), 1, "{long_keys:?}");
    assert_eq!(long_keys[0].key_truncated, (1 << 20).to_string());
    assert_eq!(long_keys[0].key_bytes, tiendo::deadletter::KEY_TRUNCATED_TO);
    assert_eq!(long_keys[0].reason, "undecodable");
}
