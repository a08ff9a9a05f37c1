//! Each registry's view of its own feed, from the real binary: `tiendo run` counts per source
//! (known names, everything else `other`), `/api/v1/sources` and `tiendo sources` (JSON and
//! table) show events, records, re-sends and rejects with examples, a source that sends
//! nothing but rejects, a quiet one, and no series for names nobody configured.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Env;
use tiendo::decode::Reason;
use tiendo::events::Kind;
use tiendo::generator::Generated;

fn named(mut m: Generated, source: &str) -> Generated {
    match &mut m {
        Generated::Record(r) => r.source_system = source.into(),
        Generated::Procedure(p) => p.source_system = source.into(),
        Generated::Poison { .. } => {}
    }
    m
}

/// A record of `source` dated three days ahead: rejected as `future_time`.
fn from_the_future(
    g: &mut tiendo::generator::Generator,
    now: chrono::DateTime<chrono::Utc>,
    source: &str,
) -> Generated {
    let Generated::Record(mut r) = g.record(now) else {
        unreachable!()
    };
    r.occurred_at = Some(prost_types::Timestamp {
        seconds: (now + chrono::Duration::days(3)).timestamp(),
        nanos: 0,
    });
    r.source_system = source.into();
    Generated::Record(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_sees_its_feed_and_unknown_names_add_no_series() {
    let env = Env::start();
    let mut g = env.generator(14);
    let now = chrono::Utc::now();
    let mut stream = Vec::new();
    // hotich: 200 records events, 20 of them sent twice, 10 with an unknown dataset.
    let hotich: Vec<Generated> = (0..200).map(|_| named(g.record(now), "hotich")).collect();
    stream.extend(hotich.iter().cloned());
    stream.extend(hotich[..20].iter().cloned());
    let mut records: i64 = 0;
    for m in &hotich {
        if let Generated::Record(r) = m {
            records += r.record_count as i64;
        }
    }
    for _ in 0..10 {
        let Generated::Record(mut r) = g.record(now) else {
            unreachable!()
        };
        r.dataset = "weather".into();
        r.source_system = "hotich".into();
        stream.push(Generated::Record(r));
    }
    // dat-dai sends nothing but rejects: times in the future.
    stream.extend((0..30).map(|_| from_the_future(&mut g, now, "dat-dai")));
    // Fifty names nobody configured, and bytes too broken to name a source: all `other`.
    for i in 0..50 {
        stream.push(named(g.procedure(now), &format!("evil-{i}")));
    }
    for _ in 0..5 {
        stream.extend(g.poison_of(Kind::Records, Reason::Undecodable, now));
    }
    env.publish(&stream).await;

    let port = tiendo::embedded::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = env
        .process_command()
        .env("TIENDO_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("TIENDO_SOURCES__KNOWN", "hotich,dat-dai,quiet-one")
        .env("TIENDO_SOURCES__QUIET_AFTER", "1h")
        .spawn()
        .map(common::Killed)
        .unwrap();
    env.wait_consumed(Duration::from_secs(120)).await;

    let api: serde_json::Value = reqwest::get(format!("{base}/api/v1/sources"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Read once the series have their values (asserted below).
    let expected_series: [(&str, &[&str], &str); 4] = [
        // Never heard from: quiet in the listing, but nothing for Prometheus to page on.
        ("tiendo_source_quiet{", &[r#"source="quiet-one""#], "0"),
        (
            "tiendo_dead_letters_total{",
            &[r#"reason="future_time""#, r#"source="dat-dai""#],
            "30",
        ),
        (
            "tiendo_source_events_total{",
            &[r#"source="other""#, r#"topic="procedure_completed""#],
            "50",
        ),
        // Valid events, counted and re-sent alike; rejects are not among them.
        (
            "tiendo_source_events_total{",
            &[r#"source="hotich""#, r#"topic="record_digitized""#],
            "220",
        ),
    ];
    let metrics = common::wait_metrics(&base, Duration::from_secs(30), |page| {
        expected_series
            .iter()
            .all(|(name, labels, want)| series(page, name, labels).as_deref() == Some(*want))
    })
    .await;
    common::signal(&child, "TERM");
    child.wait().unwrap();
    // The storer waited at least for the first batch; the collector's series is there too.
    let waited = |stage: &str| {
        let prefix = format!("tiendo_pipeline_wait_seconds_sum{{stage=\"{stage}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.parse::<f64>().ok())
    };
    assert!(waited("storer").is_some_and(|s| s > 0.0), "{metrics}");
    assert!(waited("collector").is_some(), "{metrics}");

    let by_name = |name: &str| {
        api.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {api:#}"))
            .clone()
    };
    let names: Vec<&str> = api
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hotich", "dat-dai", "quiet-one", "other"]);

    let h = by_name("hotich");
    for window in ["last_24h", "last_7d", "total"] {
        assert_eq!(h[window]["events"], 200, "{window}");
        assert_eq!(h[window]["records"], records, "{window}");
        assert_eq!(h[window]["duplicates"], 20, "{window}");
        assert_eq!(h[window]["rejects"]["unknown_dataset"], 10, "{window}");
    }
    assert_eq!(h["quiet"], false);
    assert!(h["last_seen"].is_string() && h["last_event"].is_string());
    let example = &h["examples"][0];
    assert_eq!(example["reason"], "unknown_dataset");
    assert_eq!(example["detail"], "weather");

    let d = by_name("dat-dai");
    assert_eq!(d["last_24h"]["events"], 0);
    assert_eq!(d["last_24h"]["rejected"], 30);
    assert_eq!(d["last_24h"]["reject_ratio"], 1.0);
    assert_eq!(d["last_24h"]["rejects"]["future_time"], 30);
    assert!(d["last_event"].is_null(), "nothing of dat-dai was counted");
    assert!(d["last_seen"].is_string(), "but it was heard from");
    assert_eq!(d["quiet"], false);
    assert!(d["examples"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("ahead of now"));

    let q = by_name("quiet-one");
    assert_eq!(q["quiet"], true);
    assert!(q["last_seen"].is_null());

    let o = by_name("other");
    assert_eq!(o["last_24h"]["events"], 50);
    assert_eq!(o["last_24h"]["rejects"]["undecodable"], 5);
    assert_eq!(o["known"], false);

    // Metric labels: the configured names and `other`, nothing a publisher made up.
    assert!(!metrics.contains("evil-"), "no series per unknown name");
    for (name, labels, want) in &expected_series {
        let got = series(&metrics, name, labels);
        assert_eq!(got.as_deref(), Some(*want), "{name} {labels:?} in /metrics");
    }

    // The same from the command line, as an operator on a replica would ask.
    let cli = |format: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tiendo"))
            .args(["sources", "--format", format])
            .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
            .env(
                "TIENDO_SOURCES__KNOWN",
                r#"["hotich","dat-dai","quiet-one"]"#,
            )
            .env("TIENDO_SOURCES__QUIET_AFTER", "1h")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&cli("json")).unwrap();
    assert_eq!(json[0]["last_24h"]["events"], 200);
    assert_eq!(json[1]["last_24h"]["rejected"], 30);
    let table = cli("table");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("{name} in\n{table}"))
            .to_string()
    };
    assert!(row("dat-dai").contains("30 (100.0%)"), "{table}");
    assert!(row("quiet-one").contains("never") && row("quiet-one").contains("quiet"));
    assert!(table.contains("dat-dai: recent rejects"), "{table}");
}

/// A catch-up reads days of a feed in a minute: each message counts in the hour its Kafka
/// timestamp says it was sent, so the last 24 hours hold what was sent in them, not all that
/// was read now, and a feed that fell silent before tiendo stopped is still quiet after it
/// catches up. A timestamp ahead of the clock counts as now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_counts_each_message_in_the_hour_it_was_sent() {
    use rdkafka::producer::FutureRecord;

    let env = Env::start();
    let mut g = env.generator(41);
    let now = chrono::Utc::now();
    let hours_ago = |h: i64| (now - chrono::Duration::hours(h)).timestamp_millis();
    // (source, how many, sent at): hotich spoke 10 days, 3 days and 2 hours ago; dat-dai
    // last 30 hours ago; bhxh's producer clock runs two hours ahead.
    let plan = [
        ("hotich", 10, hours_ago(240)),
        ("hotich", 100, hours_ago(72)),
        ("hotich", 40, hours_ago(2)),
        ("dat-dai", 30, hours_ago(30)),
        ("bhxh", 5, hours_ago(-2)),
    ];
    let producer = env.independent_producer();
    let topic = &env.settings.kafka.topics.records;
    for (source, n, sent) in plan {
        for _ in 0..n {
            let m = named(g.record(now), source);
            let (key, payload) = (m.key(), m.encode());
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .timestamp(sent);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .expect("publish");
        }
    }

    let mut settings = env.settings.clone();
    settings.sources.known = ["hotich", "dat-dai", "bhxh"].map(String::from).to_vec();
    let running = env.spawn_with(settings).await;
    env.wait_consumed(Duration::from_secs(120)).await;
    running.shutdown().await;

    let out = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(["sources", "--format", "json"])
        .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
        .env("TIENDO_SOURCES__KNOWN", "hotich,dat-dai,bhxh")
        .env("TIENDO_SOURCES__QUIET_AFTER", "6h")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let source = |name: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {json:#}"))
            .clone()
    };
    let seen = |s: &serde_json::Value| {
        let at: chrono::DateTime<chrono::Utc> = s["last_seen"].as_str().unwrap().parse().unwrap();
        (now - at).num_minutes()
    };
    let events = |s: &serde_json::Value, window: &str| s[window]["events"].as_i64().unwrap();

    let h = source("hotich");
    assert_eq!(events(&h, "last_24h"), 40, "{h:#}");
    assert_eq!(events(&h, "last_7d"), 140, "{h:#}");
    assert_eq!(events(&h, "total"), 150, "{h:#}");
    assert!(
        (119..=121).contains(&seen(&h)),
        "last heard 2 hours ago: {h:#}"
    );
    assert_eq!(h["quiet"], false);

    let d = source("dat-dai");
    assert_eq!(events(&d, "last_24h"), 0, "{d:#}");
    assert_eq!(events(&d, "last_7d"), 30, "{d:#}");
    assert!(
        (1799..=1801).contains(&seen(&d)),
        "last heard 30 hours ago: {d:#}"
    );
    assert_eq!(
        d["quiet"], true,
        "silent before the catch-up, silent after it"
    );

    let b = source("bhxh");
    assert_eq!(events(&b, "last_24h"), 5, "{b:#}");
    assert!(seen(&b) >= 0, "never heard from in the future: {b:#}");
    assert_eq!(b["quiet"], false);
}

/// Feeds' health reaches ops, never the task force: with one bot in two chats (a receiver of
/// route `taskforce`, one of route `ops`), a source whose messages are all rejected and then
/// sources gone quiet are told to the ops chat only, a quiet source that speaks again is
/// resolved, and the task force's chat hears nothing of feeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_alerts_reach_the_ops_chat_only() {
    const TASKFORCE: &str = "-1001";
    const OPS: &str = "-1002";
    let env = Env::start();
    let bot = tiendo::embedded::telegram::BotApi::start().await.unwrap();
    let mut g = env.generator(15);
    let now = chrono::Utc::now();
    let mut stream: Vec<Generated> = (0..100).map(|_| named(g.record(now), "hotich")).collect();
    stream.extend((0..30).map(|_| from_the_future(&mut g, now, "dat-dai")));
    env.publish(&stream).await;

    // Ops know dat-dai is being moved and silence its quiet alert from the command line,
    // before it could fire: done later, it would race the quiet timer.
    let out = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args([
            "silence",
            "add",
            "--source",
            "dat-dai",
            "--rule",
            "source_quiet",
        ])
        .args(["--for", "1h", "--reason", "moving servers"])
        .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
        .env("TIENDO_SOURCES__KNOWN", "hotich,dat-dai,never-sent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let receiver = |cmd: &mut Command, name: &str, chat: &str, routes: Option<&str>| {
        let var = |key: &str| format!("TIENDO_ALERTS__RECEIVERS__{name}__{key}");
        cmd.env(var("KIND"), "telegram")
            .env(var("URL"), bot.url())
            .env(var("TOKEN"), "123:secret")
            .env(var("CHAT_ID"), chat);
        if let Some(routes) = routes {
            cmd.env(var("ROUTES"), routes);
        }
    };
    let mut cmd = env.process_command();
    receiver(&mut cmd, "TASKFORCE", TASKFORCE, None);
    receiver(&mut cmd, "OPS", OPS, Some("ops"));
    let quiet_after = Duration::from_secs(10);
    // Nothing can arrive before tiendo starts: a lower bound on the last arrival that does
    // not depend on how soon the test sees it counted.
    let started = std::time::Instant::now();
    let child = cmd
        .env("TIENDO_SOURCES__KNOWN", "hotich,dat-dai,never-sent")
        .env("TIENDO_SOURCES__QUIET_AFTER", "10s")
        .env("TIENDO_SOURCES__REJECT_MIN_MESSAGES", "20")
        .env("TIENDO_ALERTS__INTERVAL", "1s")
        .env("TIENDO_ALERTS__RULES__PENDING_FOR", "0s")
        .env("TIENDO_ALERTS__RULES__CLEAR_FOR", "0s")
        .spawn()
        .unwrap();
    // Killed if an assertion fails, so no replica outlives the test.
    let mut child = common::Killed(child);
    env.wait_consumed(Duration::from_secs(120)).await;

    let to = |chat: &str| -> Vec<String> {
        bot.sent()
            .into_iter()
            .filter(|s| s.chat_id == chat)
            .map(|s| s.text)
            .collect()
    };
    let bot = &bot;
    let wait_for = |chat: &'static str, what: &'static str| {
        let to = &to;
        async move {
            for _ in 0..600 {
                if to(chat).iter().any(|t| t.contains(what)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{what:?} never reached chat {chat}: {:#?}", bot.sent());
        }
    };
    // dat-dai: 30 of 30 messages rejected.
    wait_for(OPS, "nhiều tin bị từ chối").await;
    let ops = to(OPS).join("\n");
    assert!(ops.contains("<b>dat-dai</b> · Nguồn dữ liệu"), "{ops}");
    assert!(
        ops.contains("30 tin, 30 bị từ chối (100,0%); lý do: future_time 30"),
        "{ops}"
    );
    assert!(ops.contains("nguồn dữ liệu · 1 thay đổi"), "{ops}");
    assert!(!ops.contains("hotich"), "hotich rejects nothing: {ops}");

    // Then nothing arrives for `quiet_after`: hotich goes quiet; dat-dai too, silenced; the
    // one never heard from is not alerted (nothing is normal for it yet).
    wait_for(OPS, "không gửi tin").await;
    // Not before `quiet_after` (arrivals are kept in whole seconds, so a second's slack).
    assert!(started.elapsed() + Duration::from_secs(1) >= quiet_after);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet: Vec<String> = to(OPS)
        .iter()
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| l.contains("không gửi tin"))
        .collect();
    assert_eq!(quiet.len(), 1, "hotich, once: {quiet:#?}");
    assert!(quiet[0].contains("hotich"), "{quiet:#?}");

    // hotich speaks again: its quiet alert resolves.
    env.publish(&[named(g.record(chrono::Utc::now()), "hotich")])
        .await;
    wait_for(OPS, "đã hết").await;
    let resolved: Vec<String> = to(OPS)
        .iter()
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| l.contains("đã hết"))
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    assert!(resolved[0].contains("hotich") && resolved[0].contains("không gửi tin"));

    common::signal(&child.0, "TERM");
    child.0.wait().unwrap();

    // The task force heard the start, and nothing about feeds.
    let taskforce = to(TASKFORCE);
    assert!(!taskforce.is_empty(), "the start is announced");
    for text in &taskforce {
        assert!(
            !text.contains("Nguồn") && !text.contains("hotich") && !text.contains("dat-dai"),
            "{text}"
        );
    }
    // Ops heard no start summary, only feeds.
    assert!(
        to(OPS).iter().all(|t| t.contains("nguồn dữ liệu")),
        "{:#?}",
        to(OPS)
    );
}

/// The value of the first series of `/metrics` named `name` (with its `{`) that has every
/// label of `labels`.
fn series(page: &str, name: &str, labels: &[&str]) -> Option<String> {
    page.lines()
        .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}
