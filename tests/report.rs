//! `tiendo report` on figures counted by the real pipeline into a private Redis: the task
//! force's classification in both unit views, its formats, and the HTML report's chart
//! rendered by a real headless Chromium.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{Duration as Span, Utc};

use common::browser::{chromium, count_color};
use common::Env;
use tiendo::events::CodeScheme;

/// Six provinces of the 63-unit table, one per class and two completed (one long ago).
async fn seed(env: &Env) -> tempfile::NamedTempFile {
    let now = Utc::now();
    let deadline = (now.with_timezone(&tiendo::clock::vn_offset()) + Span::days(40)).date_naive();
    let targets = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    let mut csv = String::from("province,dataset,target,deadline,scheme\n");
    for code in ["94", "42", "24", "58", "91", "56"] {
        csv.push_str(&format!("{code},civil_status,100000,{deadline},63\n"));
    }
    std::fs::write(targets.path(), csv).unwrap();

    let mut g = env.generator(31);
    let mut events = Vec::new();
    let mut rec = |code: &str, n: u64, ago: Span| {
        events.push(g.record_for(code, CodeScheme::Provinces63, "civil_status", n, now - ago))
    };
    rec("94", 100_000, Span::days(3)); // Sóc Trăng: done
    rec("56", 100_000, Span::days(45)); // Khánh Hòa: done long ago
    for day in 1..=8 {
        rec("42", 12_000, Span::days(day)); // Hà Tĩnh: 96%
    }
    rec("24", 10_000, Span::days(45)); // Bắc Giang: 70%, 2,000 a day over 30 days
    for day in 1..=20 {
        rec("24", 3_000, Span::days(day));
    }
    rec("58", 16_000, Span::days(45)); // Ninh Thuận: 16%, nothing for 45 days
                                       // Kiên Giang: nothing at all.
    env.publish(&events).await;
    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(60)).await;
    running.shutdown().await;
    targets
}

fn report(env: &Env, targets: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .arg("report")
        .args(args)
        .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
        .env("TIENDO_TARGETS__FILE", targets)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn classes(json: &str) -> Vec<(String, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let d = &v["datasets"][0];
    assert_eq!(d["dataset"], "civil_status");
    d["classes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(class, list)| {
            let names = list
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect();
            (class.clone(), names)
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect()
}

/// Classes in any order (JSON objects are unordered), provinces in the report's order.
fn expect(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = pairs
        .iter()
        .map(|(c, names)| (c.to_string(), names.iter().map(|n| n.to_string()).collect()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classification_matches_the_figures_in_both_views() {
    let env = Env::start();
    let targets = seed(&env).await;

    let json = report(&env, targets.path(), &["--view", "63", "--format", "json"]);
    assert_eq!(
        classes(&json),
        expect(&[
            ("completed", &["Khánh Hòa", "Sóc Trăng"]),
            ("basically_completed", &["Hà Tĩnh"]),
            ("on_track", &["Bắc Giang"]),
            // Kiên Giang has not started: at risk, as the task force counts it.
            ("at_risk", &["Kiên Giang", "Ninh Thuận"]),
        ])
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["datasets"][0]["total"],
        100_000 + 100_000 + 96_000 + 70_000 + 16_000
    );
    assert_eq!(v["datasets"][0]["target"], 600_000);
    let ninh_thuan = v["datasets"][0]["classes"]["at_risk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Ninh Thuận")
        .unwrap();
    assert_eq!(ninh_thuan["projected"], serde_json::Value::Null);
    assert_eq!(v["datasets"][0]["classes"].as_object().unwrap().len(), 4);

    // The 34 units: Ninh Thuận's lag drags the merged Khánh Hòa into the at-risk list;
    // Sóc Trăng's records count for Cần Thơ, Bắc Giang's for Bắc Ninh, Kiên Giang's for
    // An Giang.
    let json = report(&env, targets.path(), &["--format", "json"]);
    assert_eq!(
        classes(&json),
        expect(&[
            ("completed", &["Cần Thơ"]),
            ("basically_completed", &["Hà Tĩnh"]),
            ("on_track", &["Bắc Ninh"]),
            ("at_risk", &["An Giang", "Khánh Hòa"]),
        ])
    );

    let table = report(&env, targets.path(), &["--view", "63"]);
    assert!(table.contains("Nguy cơ chậm"), "{table}");
    assert!(
        table.contains("Ninh Thuận 16,0% (chưa có tiến độ)"),
        "{table}"
    );
    assert!(
        table.contains("Kiên Giang 0,0% (chưa triển khai)"),
        "{table}"
    );
    let md = report(
        &env,
        targets.path(),
        &["--view", "63", "--format", "markdown", "--lang", "en"],
    );
    assert!(
        md.contains(
            "| At risk | 2 | Kiên Giang 0.0% (not started), Ninh Thuận 16.0% (no recent progress) |"
        ),
        "{md}"
    );
    assert!(md.contains("National: 382,000/600,000 (63.7%)"), "{md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_its_chart_in_a_real_browser() {
    let env = Env::start();
    let targets = seed(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    report(
        &env,
        targets.path(),
        &[
            "--view",
            "63",
            "--format",
            "html",
            "--output",
            html.to_str().unwrap(),
        ],
    );
    let shot = dir.path().join("report.png");
    let out = chromium(&[
        "--window-size=900,700",
        &format!("--screenshot={}", shot.display()),
        &format!("file://{}", html.display()),
    ]);
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    // Each class's segment of the stacked bar is painted in its colour; with six provinces
    // the completed and at-risk segments (Kiên Giang has not started) are two sixths of the
    // bar each, the others one sixth.
    let (completed, ..) = count_color(&shot, [0x2e, 0x7d, 0x32]);
    let (at_risk, ..) = count_color(&shot, [0xe5, 0x39, 0x35]);
    let (basically, ..) = count_color(&shot, [0x7c, 0xb3, 0x42]);
    assert!(
        basically > 2_000,
        "basically-completed segment: {basically} pixels"
    );
    let ratio = at_risk as f64 / basically as f64;
    assert!(
        (1.6..2.4).contains(&ratio),
        "at-risk/basically-completed area {ratio:.2}"
    );
    let ratio = completed as f64 / at_risk as f64;
    assert!(
        (0.8..1.25).contains(&ratio),
        "completed/at-risk area {ratio:.2}"
    );
    let _ = std::fs::copy(
        &shot,
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("report.png"),
    );
}
