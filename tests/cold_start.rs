//! A cold start, as a new deployment meets it: the event topics already hold seven weeks of
//! the 2024 season (moved to end today), Redis is empty, and three `tiendo run` replicas start
//! at once with alerts firing without delay (`pending_for = 0s`). Whatever reaches the chat
//! must be what the caught-up figures say: no alert they would not also send, nothing about a
//! province that is on track, and one summary rather than a line per alert. Prometheus sees
//! `tiendo_figures_current` at 0 while catching up. Run on librdkafka's mock cluster and on
//! Tansu.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::Utc;

use common::chat::ChatServer;
use common::{season_until_now, signal, Env, Killed};
use tiendo::rules::{evaluate, Rule};
use tiendo::status::{Status, View};
use tiendo::targets::Targets;

/// SIGTERM to each replica, as Kubernetes stops a pod; each must leave cleanly.
fn stop(children: Vec<Killed>) {
    for child in &children {
        signal(child, "TERM");
    }
    for mut child in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "tiendo run exited with {status}");
    }
}

async fn cold_start(env: Env) {
    let now = Utc::now();
    let datasets = env.settings.validation.datasets.clone();
    let (events, targets_csv) = season_until_now(now, &datasets);
    env.publish(&events).await;
    let dir = tempfile::tempdir().unwrap();
    let targets_file = dir.path().join("targets.csv");
    std::fs::write(&targets_file, &targets_csv).unwrap();

    // Every notice goes to the webhook; the task force's Telegram gets what chat gets.
    let webhook = ChatServer::start(vec![]).await;
    let telegram = ChatServer::start(vec![]).await;
    // The first replica serves /metrics, as Prometheus scrapes it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let replicas: Vec<Killed> = (0..3)
        .map(|i| {
            let listen = if i == 0 {
                format!("127.0.0.1:{port}")
            } else {
                String::new()
            };
            env.process_command()
                .env("TIENDO_HTTP__LISTEN", listen)
                .env("TIENDO_TARGETS__FILE", &targets_file)
                .env("TIENDO_ALERTS__VIEW", "63")
                .env("TIENDO_ALERTS__INTERVAL", "1s")
                .env("TIENDO_ALERTS__RULES__PENDING_FOR", "0s")
                .env("TIENDO_ALERTS__RECEIVERS__ARCHIVE__KIND", "webhook")
                .env("TIENDO_ALERTS__RECEIVERS__ARCHIVE__URL", webhook.url())
                .env("TIENDO_ALERTS__RECEIVERS__TASKFORCE__KIND", "telegram")
                .env("TIENDO_ALERTS__RECEIVERS__TASKFORCE__URL", telegram.url())
                .env("TIENDO_ALERTS__RECEIVERS__TASKFORCE__TOKEN", "123:SECRET")
                .env(
                    "TIENDO_ALERTS__RECEIVERS__TASKFORCE__CHAT_ID",
                    "-1001234567890",
                )
                .spawn()
                .map(Killed)
                .expect("tiendo run starts")
        })
        .collect();

    // While catching up the gauge says 0, with how far behind; then 1. Once current it stays
    // so, unless a check could not measure some partition (a probe that got no answer in
    // time on a loaded machine), which the unanswered gauge shows.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while seen.last().map(|&(c, b, _)| (c, b)) != Some((1, 0)) {
        assert!(Instant::now() < deadline, "figures never current: {seen:?}");
        let gauge = |text: &str, name: &str| common::metric(text, name).map(|v| v as u64);
        if let Some(text) = common::metrics_page(&format!("http://127.0.0.1:{port}")).await {
            let current = gauge(&text, "tiendo_figures_current");
            let behind = gauge(&text, "tiendo_figures_behind_messages");
            let unanswered = gauge(&text, "tiendo_figures_unanswered_partitions");
            if let (Some(c), Some(b), Some(u)) = (current, behind, unanswered) {
                if seen.last() != Some(&(c, b, u)) {
                    seen.push((c, b, u));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.iter().any(|&(c, b, _)| c == 0 && b > 0),
        "catching up was shown: {seen:?}"
    );
    let first_current = seen.iter().position(|&(c, _, _)| c == 1).unwrap();
    assert!(
        seen[first_current..]
            .iter()
            .all(|&(c, _, u)| c == 1 || u > 0),
        "{seen:?}"
    );

    // Everything counted, and the first evaluation delivered; then a few more evaluations,
    // which must add nothing.
    let snap = env.wait_consumed(Duration::from_secs(180)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while webhook.accepted().is_empty() || telegram.accepted().is_empty() {
        assert!(Instant::now() < deadline, "no digest delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop(replicas);

    // What the caught-up figures say.
    let targets = Targets::parse(&targets_csv, &datasets).unwrap();
    let status = Status::build(&snap, &targets, &datasets, View::Legacy63);
    let holds: BTreeSet<String> = evaluate(&status, Utc::now(), &env.settings.alerts.rules)
        .findings
        .into_iter()
        .map(|f| f.key)
        .collect();
    let on_track: BTreeSet<String> = targets
        .by_unit
        .keys()
        .map(|(unit, _)| format!("{:02}", unit.code))
        .filter(|code| !holds.iter().any(|k| k.starts_with(&format!("63:{code}:"))))
        .collect();
    assert!(
        on_track.len() >= 5 && holds.len() >= 10,
        "a season with both: {on_track:?} {holds:?}"
    );

    let notices: Vec<serde_json::Value> = webhook
        .accepted()
        .iter()
        .flat_map(|r| r.body["notices"].as_array().unwrap().clone())
        .collect();
    let told: BTreeSet<String> = notices
        .iter()
        .map(|n| n["alert_key"].as_str().unwrap().to_string())
        .collect();
    let unsupported: Vec<&String> = told.difference(&holds).collect();
    assert!(unsupported.is_empty(), "false alerts: {unsupported:?}");
    assert_eq!(told, holds, "every alert the figures support, once");
    assert_eq!(notices.len(), holds.len(), "each notice once");
    assert!(notices.iter().all(|n| n["change"] != "resolved"));
    for code in &on_track {
        assert!(
            !told.iter().any(|k| k.starts_with(&format!("63:{code}:"))),
            "on-track province {code} alerted"
        );
    }
    assert!(told.iter().any(|k| k.ends_with(Rule::Completed.as_str())));

    // The chat got one message: the summary.
    let tg = telegram.accepted();
    assert_eq!(tg.len(), 1, "{tg:?}");
    let text = tg[0].body["text"].as_str().unwrap();
    assert!(text.starts_with("<b>tiendo · bắt đầu theo dõi"), "{text}");
    assert_eq!(tg[0].body["chat_id"], "-1001234567890");
    assert_eq!(tg[0].path, "/bot123:SECRET/sendMessage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_tells_only_what_the_caught_up_figures_support() {
    cold_start(Env::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_on_tansu_tells_only_what_the_caught_up_figures_support() {
    cold_start(Env::start_tansu()).await;
}
