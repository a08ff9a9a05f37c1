//! The `tiendo` binary as a user runs it: `status` reads what the pipeline stored, in both
//! unit views, as a table and as JSON; a bad configuration is refused with a clear message.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{events, Env, Expected};

fn status(env: &Env, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .arg("status")
        .args(args)
        .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
        .env("TIENDO_TARGETS__FILE", "deploy/targets.example.csv")
        .output()
        .expect("tiendo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_was_counted_in_both_views() {
    let env = Env::start();
    let mut g = env.generator(9);
    let batch = events(&mut g, 800);
    let mut expected = Expected::default();
    expected.add_all(&batch);
    env.publish(&batch).await;
    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(90)).await;
    running.shutdown().await;

    for view in ["34", "63"] {
        let json: serde_json::Value =
            serde_json::from_str(&status(&env, &["--format", "json", "--view", view])).unwrap();
        let national: i64 = json["national"]["datasets"]
            .as_object()
            .unwrap()
            .values()
            .map(|d| d["total"].as_i64().unwrap())
            .sum();
        assert_eq!(national, expected.records(), "view {view}");
        let rows = json["provinces"].as_array().unwrap().len();
        assert!(
            if view == "34" { rows == 34 } else { rows >= 63 },
            "{rows} rows"
        );
        // Targets apply in the 34-unit view (the example file is written for it).
        if view == "34" {
            assert!(json["provinces"][0]["datasets"]["civil_status"]["target"]
                .as_u64()
                .is_some());
        }
    }
    let table = status(&env, &[]);
    assert!(
        table.contains("Hà Nội") && table.contains("Toàn quốc"),
        "{table}"
    );
}

#[test]
fn a_bad_configuration_is_refused_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .arg("status")
        .env("TIENDO_VALIDATION__MAX_RECORD_COUNT", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_record_count"), "{err}");
}

fn tiendo(redis_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(args)
        .env("TIENDO_REDIS__URL", redis_url)
        .output()
        .expect("tiendo runs")
}

#[test]
fn silences_are_added_listed_and_removed() {
    let redis = tiendo::embedded::RedisServer::start().expect("redis-server");
    let url = redis.url();
    let out = tiendo(
        &url,
        &[
            "silence",
            "add",
            "--province",
            "56",
            "--dataset",
            "land",
            "--rule",
            "behind_pace",
            "--for",
            "3d",
            "--reason",
            "đang đối soát",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap();
    let id = id.split_whitespace().next().unwrap().to_string();

    let out = tiendo(&url, &["silence", "list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["province"], "56");
    assert_eq!(list[0]["scheme"], "34");
    assert_eq!(list[0]["rule"], "behind_pace");
    assert_eq!(list[0]["reason"], "đang đối soát");

    // Unknown provinces and rules are refused with the reason.
    let out = tiendo(
        &url,
        &[
            "silence",
            "add",
            "--province",
            "99",
            "--for",
            "1h",
            "--reason",
            "x",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown province 99"));
    let out = tiendo(
        &url,
        &[
            "silence",
            "add",
            "--province",
            "01",
            "--rule",
            "sad",
            "--for",
            "1h",
            "--reason",
            "x",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown rule sad"));
    // A procedure rule has no dataset: a silence naming one would never hold.
    let out = tiendo(
        &url,
        &[
            "silence",
            "add",
            "--province",
            "01",
            "--dataset",
            "land",
            "--rule",
            "online_share_low",
            "--for",
            "1h",
            "--reason",
            "x",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name no dataset"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ninh Thuận's old code, as upstream still sends it, silences the unit it is part of;
    // the time is Vietnam's.
    let out = tiendo(
        &url,
        &[
            "silence",
            "add",
            "--province",
            "58",
            "--for",
            "3d",
            "--reason",
            "sáp nhập",
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("+07:00 (34:56 Khánh Hòa)"), "{said}");
    let merged = said.split_whitespace().next().unwrap().to_string();
    assert!(tiendo(&url, &["silence", "remove", &merged])
        .status
        .success());

    assert!(tiendo(&url, &["silence", "remove", &id]).status.success());
    assert!(!tiendo(&url, &["silence", "remove", &id]).status.success());
    let out = tiendo(&url, &["silence", "list", "--format", "json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = tiendo(&url, &["alerts", "--format", "json"]);
    assert!(out.status.success());
}
