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
}
