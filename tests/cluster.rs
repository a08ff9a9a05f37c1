//! The same pipeline on a Redis Cluster: every key of a partition shares a hash tag, claims are
//! spread over their own tags, and the counts come out exact.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{events, Env, Expected};
use tiendo::config::Secret;
use tiendo::embedded::RedisServer;

fn start_cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .expect("cluster node starts")
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs (package redis-tools)");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &node.port().to_string(), "cluster", "info"])
                .output()
                .expect("redis-cli");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_on_a_redis_cluster() {
    let nodes = start_cluster();
    let mut env = Env::start();
    env.settings.redis.cluster_urls = nodes.iter().map(|n| Secret::new(n.url())).collect();

    let mut g = env.generator(8);
    let first = events(&mut g, 2000);
    let again: Vec<_> = first.iter().step_by(4).cloned().collect();
    let mut expected = Expected::default();
    expected.add_all(&first);
    expected.add_all(&again);

    let running = env.spawn().await;
    env.publish(&first).await;
    env.publish(&again).await;
    let snap = env.wait_consumed(Duration::from_secs(90)).await;
    running.shutdown().await;
    expected.assert_matches(&snap);

    // The keys really are spread over the nodes.
    let mut nodes_with_keys = 0;
    for node in &nodes {
        let out = Command::new("redis-cli")
            .args(["-p", &node.port().to_string(), "dbsize"])
            .output()
            .unwrap();
        let n: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        nodes_with_keys += (n > 0) as u32;
    }
    assert!(
        nodes_with_keys >= 2,
        "keys on {nodes_with_keys} node(s) only"
    );

    // The alert ledger's scripts run there too: an evaluation commits, two evaluators at once
    // commit once, and a digest is delivered out of the outbox.
    let mut settings = env.settings.clone();
    settings.alerts.rules.pending_for = Duration::ZERO;
    settings.alerts.receivers.insert(
        "ops".into(),
        tiendo::config::ReceiverSettings {
            kind: tiendo::config::ReceiverKind::Webhook,
            url: Secret::new("http://127.0.0.1:9/hook"),
            token: Secret::default(),
            chat_id: String::new(),
            language: None,
            max_chars: None,
            routes: vec![tiendo::rules::Route::Taskforce],
        },
    );
    let targets = tiendo::targets::Targets::parse(
        include_str!("../deploy/targets.example.csv"),
        &settings.validation.datasets,
    )
    .unwrap();
    let clock: tiendo::clock::SharedClock = std::sync::Arc::new(tiendo::clock::SystemClock);
    // Each with its own catch-up check, reading stored offsets across the cluster's nodes.
    let watch = || async { tiendo::run::watch(&settings).await.unwrap() };
    let e1 = tiendo::run::evaluator(&settings, targets.clone(), clock.clone(), watch().await)
        .await
        .unwrap();
    let e2 = tiendo::run::evaluator(&settings, targets, clock, watch().await)
        .await
        .unwrap();
    let (a, b) = tokio::join!(e1.evaluate_once(), e2.evaluate_once());
    let (a, b) = (a.unwrap().notices.len(), b.unwrap().notices.len());
    assert!(a + b > 0 && (a == 0 || b == 0), "committed {a} and {b}");
    let ledger = tiendo::rules::ledger::Ledger::new(
        tiendo::store::connect(&settings.redis).await.unwrap(),
        &settings.redis.key_prefix,
    );
    assert_eq!(ledger.pending("ops").await.unwrap(), 1);
    let lock = ledger
        .lock("ops", "t", 30_000)
        .await
        .unwrap()
        .expect("lock");
    let head = ledger.head("ops").await.unwrap().expect("a digest");
    assert!(ledger.sent_parts(&lock, &head.digest.id, 1).await.unwrap());
    assert_eq!(ledger.head("ops").await.unwrap().unwrap().parts_sent, 1);
    assert!(ledger.delivered(&lock, &head.digest.id).await.unwrap());
    assert_eq!(ledger.pending("ops").await.unwrap(), 0);
}
