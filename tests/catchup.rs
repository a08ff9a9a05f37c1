//! The figures-current check against real brokers: it says "catching up" while Redis holds
//! less than the topics, and "current" once the pipeline has counted what was there.

mod common;

use std::time::Duration;

use chrono::Utc;

use common::{events, Env};
use tiendo::catchup::Watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_until_redis_holds_what_the_topics_held() {
    let env = Env::start();
    let mut g = env.generator(1);
    env.publish(&events(&mut g, 2_000)).await;
    let watch = Watch::new(&env.settings, env.reader().await).unwrap();
    let c = watch.check(Utc::now()).await;
    assert!(!c.current, "{c:?}");
    assert_eq!(c.behind, 2_000, "{c:?}");
    assert_eq!(c.partitions, 6, "{c:?}");

    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(60)).await;
    let c = watch.check(Utc::now()).await;
    assert!(c.current, "{c:?}");
    assert_eq!(c.behind, 0, "{c:?}");
    running.shutdown().await;
}
