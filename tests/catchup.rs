//! The figures-current check against real brokers, librdkafka's mock cluster and Tansu (whose
//! offset queries answer low): it says "catching up", with how far behind, while Redis holds
//! less than the topics, and "current" once the pipeline has counted what was there.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;

use common::{events, Env};
use tiendo::catchup::Watch;

async fn catching_up_until_counted(env: Env) {
    let mut g = env.generator(1);
    env.publish(&events(&mut g, 2_000)).await;
    let watch = Watch::new(&env.settings, env.reader().await).unwrap();
    let started = Instant::now();
    let c = watch.check(Utc::now()).await;
    let took = started.elapsed();
    assert!(!c.current, "{c:?}");
    assert_eq!(c.behind, 2_000, "{c:?}");
    assert_eq!((c.partitions, c.unknown), (6, 0), "{c:?}");
    assert_eq!(c.reason.as_deref(), Some("catching up"));
    eprintln!("one check took {took:?}");

    let running = env.spawn().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let c = loop {
        let c = watch.check(Utc::now()).await;
        if c.current || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(c.current, "{c:?}");
    // Current means everything noted at the first check is counted.
    assert_eq!(env.snapshot().await.offsets.values().sum::<i64>(), 2_000);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_until_redis_holds_what_the_topics_held() {
    catching_up_until_counted(Env::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_until_redis_holds_what_the_topics_held_on_tansu() {
    catching_up_until_counted(Env::start_tansu()).await;
}
