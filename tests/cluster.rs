//! The same pipeline on a Redis Cluster: every key of a partition shares a hash tag, claims are
//! spread over their own tags, and the counts come out exact.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::batches::Batches;
use common::{events, Env, Expected};
use tiendo::config::{Secret, Settings};
use tiendo::embedded::RedisServer;
use tiendo::store::{self, Store};

/// What `redis-cli` prints for `args` sent to `node`, trimmed.
fn ask(node: &RedisServer, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &node.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (package redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

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
            if ask(node, &["cluster", "info"]).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    nodes
}

/// The nodes' URLs, as `redis.cluster_urls` takes them.
fn urls(nodes: &[RedisServer]) -> Vec<Secret> {
    nodes.iter().map(|n| Secret::new(n.url())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_on_a_redis_cluster() {
    let nodes = start_cluster();
    let mut env = Env::start();
    env.settings.redis.cluster_urls = urls(&nodes);

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
        let n: u64 = ask(node, &["dbsize"]).parse().unwrap_or(0);
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

/// The directory is a key of its own node: a failover to a replica that had not received its
/// last writes, or a restart that lost them, would drop partitions from it that only their next
/// batch lists again, and a quiet partition may send none. The pipeline lists what it holds
/// again every few seconds, with no message needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_the_directory_lost_are_listed_again() {
    let nodes = start_cluster();
    let mut env = Env::start();
    env.settings.redis.cluster_urls = urls(&nodes);

    let mut g = env.generator(8);
    let sent = events(&mut g, 500);
    let mut expected = Expected::default();
    expected.add_all(&sent);
    let running = env.spawn().await;
    env.publish(&sent).await;
    env.wait_consumed(Duration::from_secs(90)).await;

    let directory = format!("{}:partitions", env.settings.redis.key_prefix);
    let node = &nodes[node_of(&nodes, &directory)];
    let members = || {
        let mut tags: Vec<String> = ask(node, &["smembers", &directory])
            .lines()
            .map(str::to_string)
            .collect();
        tags.sort();
        tags
    };
    let listed = members();
    assert!(listed.len() > 1, "listed: {listed:?}");
    assert_eq!(ask(node, &["del", &directory]), "1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while members() != listed {
        assert!(Instant::now() < deadline, "listed again: {:?}", members());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expected.assert_matches(&env.snapshot().await);
    running.shutdown().await;
}

/// Slots moving between nodes while batches are stored (`redis-cli --cluster reshard`, which
/// moves their keys with MIGRATE): a node's pipeline meets MOVED or ASK, the client sends it
/// again where it is told, or past its retries the round trip goes call by call and the slot
/// map is read again; the counts stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_while_slots_move_between_nodes() {
    let metrics = tiendo::telemetry::install_prometheus().unwrap();
    let nodes = start_cluster();
    let mut env = Env::start();
    env.settings.redis.cluster_urls = urls(&nodes);
    let mut g = env.generator(9);
    let first = events(&mut g, 2000);
    let mut rest = events(&mut g, 6000);
    // Re-sends of the first events among the later ones.
    rest.extend(first.iter().step_by(5).cloned());
    let mut expected = Expected::default();
    expected.add_all(&first);
    expected.add_all(&rest);

    let running = env.spawn().await;
    env.publish(&first).await;
    env.wait_progress(1, Duration::from_secs(60)).await;
    let id = |node: &RedisServer| ask(node, &["cluster", "myid"]);
    // A third of the slots, from the first node to the second, then back, while the rest is
    // published a little at a time.
    let (from, to) = (id(&nodes[0]), id(&nodes[1]));
    let seed = format!("127.0.0.1:{}", nodes[0].port());
    let reshard = tokio::task::spawn_blocking(move || {
        for (a, b) in [(&from, &to), (&to, &from)] {
            let out = Command::new("redis-cli")
                .args(["--cluster", "reshard", &seed])
                .args(["--cluster-from", a, "--cluster-to", b])
                .args(["--cluster-slots", "5000", "--cluster-yes"])
                .output()
                .expect("redis-cli");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    });
    let mut chunks = rest.chunks(200);
    let mut published_while_moving = 0;
    while !reshard.is_finished() {
        let Some(chunk) = chunks.next() else {
            break;
        };
        env.publish(chunk).await;
        published_while_moving += chunk.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for chunk in chunks {
        env.publish(chunk).await;
    }
    reshard.await.expect("slots moved");
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    running.shutdown().await;
    eprintln!("{published_while_moving} events published while slots moved");
    // Those that went call by call (reason `error`: 6 to 8 in a run here) are counted; the slot
    // map itself could always be read.
    let fallbacks = call_by_call(&metrics);
    eprintln!("round trips call by call: {fallbacks:?}");
    assert!(!fallbacks.contains_key("slot_map"), "{fallbacks:?}");
    assert!(
        published_while_moving > 0,
        "the slots moved before any event"
    );
    expected.assert_matches(&snap);
}

/// Each node's count of reads from its clients (`total_reads_processed`), the read of the
/// INFO that asks for it included.
fn reads(nodes: &[RedisServer]) -> Vec<i64> {
    nodes
        .iter()
        .map(|node| {
            ask(node, &["info", "stats"])
                .lines()
                .find_map(|l| l.strip_prefix("total_reads_processed:"))
                .expect("total_reads_processed")
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

/// `tiendo_redis_cluster_call_by_call_total` by reason, as `/metrics` would show it.
fn call_by_call(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> BTreeMap<String, u64> {
    let prefix = "tiendo_redis_cluster_call_by_call_total{reason=\"";
    metrics
        .render()
        .lines()
        .filter_map(|line| line.strip_prefix(prefix)?.split_once("\"} "))
        .map(|(reason, n)| (reason.to_string(), n.parse().unwrap()))
        .collect()
}

/// On a cluster, a batch is one script call per claim shard and one per partition, but each
/// node gets its share of each round trip together: Redis reads a batch's commands in two
/// reads per node (each an event-loop pass, so under `appendfsync always` two fsyncs), not
/// one per call. Small batches, so that a node's share of a round trip fits one read. Only
/// the first round trips go call by call, to load the scripts, and the metric says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reaches_each_node_in_two_reads_on_a_cluster() {
    // This test's own recorder: the store is driven from this thread, and other tests of the
    // file run beside it.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let nodes = start_cluster();
    let mut settings = Settings::default();
    settings.redis.cluster_urls = urls(&nodes);
    let store = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        "rt",
        settings.validation.datasets.clone(),
        3600,
    );
    let mut batches = Batches::new(&settings, 6);
    // The first batches load the scripts on every node (EVALSHA, NOSCRIPT, SCRIPT LOAD).
    for _ in 0..3 {
        batches.store_next(&store, 200).await;
    }
    let loading = call_by_call(&metrics);
    eprintln!("round trips call by call while the scripts loaded: {loading:?}");
    assert!(loading.get("noscript").is_some_and(|n| *n > 0));
    assert_eq!(loading.keys().collect::<Vec<_>>(), ["noscript"]);
    const BATCHES: i64 = 10;
    let before = reads(&nodes);
    for _ in 0..BATCHES {
        batches.store_next(&store, 200).await;
    }
    let after = reads(&nodes);
    // Less two reads of `redis-cli`: the first's close (a read of nothing) and the second INFO.
    let per_node: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b - 2).collect();
    eprintln!("reads per node for {BATCHES} batches: {per_node:?}");
    for n in per_node {
        assert!(n <= 2 * BATCHES, "{n} reads for {BATCHES} batches");
    }
    assert_eq!(call_by_call(&metrics), loading, "a pipeline fell back");
}

/// The node of `nodes` that serves `key`'s slot.
fn node_of(nodes: &[RedisServer], key: &str) -> usize {
    let slot: u16 = ask(&nodes[0], &["cluster", "keyslot", key])
        .parse()
        .unwrap();
    nodes
        .iter()
        .position(|node| {
            let listing = ask(node, &["cluster", "nodes"]);
            let mine = listing.lines().find(|l| l.contains("myself")).unwrap();
            mine.split_whitespace().skip(8).any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                (a.parse().unwrap()..=b.parse().unwrap()).contains(&slot)
            })
        })
        .expect("a node serves every slot")
}

/// On a cluster the directory of partitions, which readers sum, is a key of its own node. A
/// partition's first batch must not be stored unless it is listed: were it stored and then the
/// process killed before the listing, a quiet partition would stay out of every figure. So
/// with the directory's node down, a first batch for a partition on another node stores
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_listed_before_its_first_batch_is_stored() {
    use tiendo::decode::Validator;
    use tiendo::events::Kind;
    use tiendo::pipeline::{Batch, HeldCounters, Origin};

    let mut nodes = start_cluster();
    let mut settings = Settings::default();
    settings.redis.cluster_urls = urls(&nodes);
    let store = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        "first",
        settings.validation.datasets.clone(),
        3600,
    );
    let directory = node_of(&nodes, "first:partitions");
    let offset_key = |p: i32| format!("first:{{records/{p}}}:off");
    let partition = (0..64)
        .find(|p| node_of(&nodes, &offset_key(*p)) != directory)
        .expect("a partition on another node");
    // One undecodable message: a part with no claims, so its one round trip is the write.
    let validator = Validator::new(&settings.validation);
    let now = chrono::Utc::now().timestamp();
    let mut batch = Batch::default();
    let from = Origin {
        t: 0,
        kind: Kind::Records,
        topic: "records",
        partition,
        offset: 0,
        sent: None,
    };
    batch.push(from, None, &[0xff, 0xff], &validator, now);
    let home = node_of(&nodes, &offset_key(partition));
    nodes[directory].kill();
    let held = HeldCounters::new();
    let stored = tokio::time::timeout(Duration::from_secs(30), batch.store(&store, &held, now));
    assert!(
        !matches!(stored.await, Ok(Ok(_))),
        "stored without its directory"
    );
    assert_eq!(
        ask(&nodes[home], &["get", &offset_key(partition)]),
        "",
        "the first batch stored while it could not be listed"
    );
}
