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
    for _ in 0..30 {
        let Generated::Record(mut r) = g.record(now) else {
            unreachable!()
        };
        r.occurred_at = Some(prost_types::Timestamp {
            seconds: (now + chrono::Duration::days(3)).timestamp(),
            nanos: 0,
        });
        r.source_system = "dat-dai".into();
        stream.push(Generated::Record(r));
    }
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
        .unwrap();
    env.wait_consumed(Duration::from_secs(120)).await;

    let api: serde_json::Value = reqwest::get(format!("{base}/api/v1/sources"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::signal(&child, "TERM");
    child.wait().unwrap();

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
    let value = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .unwrap_or_else(|| panic!("{name} {labels:?} in /metrics"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    let dat_dai = [r#"reason="future_time""#, r#"source="dat-dai""#];
    assert_eq!(value("tiendo_dead_letters_total{", &dat_dai), "30");
    let other = [r#"source="other""#, r#"topic="procedure_completed""#];
    assert_eq!(value("tiendo_source_events_total{", &other), "50");

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
