//! The example configuration in deploy/ stays true to the code: it loads, it states the
//! defaults, and it mentions every key.

use std::collections::BTreeSet;
use std::path::Path;

use tiendo::config::Settings;

const EXAMPLE: &str = "deploy/tiendo.example.toml";

fn leaf_paths(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_object() && !v.as_object().unwrap().is_empty() {
                    leaf_paths(&path, v, out);
                } else {
                    out.insert(path);
                }
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn the_example_configuration_loads_and_states_the_defaults() {
    let loaded = Settings::load(Some(Path::new(EXAMPLE))).expect("example loads");
    assert_eq!(loaded, Settings::default().validated().unwrap());
}

#[test]
fn the_example_configuration_mentions_every_key() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let mut paths = BTreeSet::new();
    leaf_paths(
        "",
        &serde_json::to_value(Settings::default()).unwrap(),
        &mut paths,
    );
    for path in paths {
        if text.contains(&format!("[{path}]")) {
            continue; // a map, empty by default, with its own section
        }
        let (section, key) = path.rsplit_once('.').unwrap();
        let header = format!("[{section}]");
        let start = text
            .find(&header)
            .unwrap_or_else(|| panic!("no section {header}"));
        let body = &text[start + header.len()..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        let mentioned = body.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} =")) || l.starts_with(&format!("\"{key}\""))
        });
        assert!(mentioned, "{path} is not in {EXAMPLE}");
    }
}

#[test]
fn the_example_targets_load() {
    let datasets = Settings::default().validation.datasets;
    let t =
        tiendo::targets::Targets::load(Path::new("deploy/targets.example.csv"), &datasets).unwrap();
    assert_eq!(t.by_unit.len(), 34 * 3);
}

#[test]
fn the_readme_lists_every_metric_and_no_other() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let listed: BTreeSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `tiendo_"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let declared: BTreeSet<&str> = tiendo::telemetry::METRICS
        .iter()
        .map(|(name, ..)| name.strip_prefix("tiendo_").unwrap())
        .collect();
    assert_eq!(listed, declared);
}

/// `tiendo check` with these arguments and environment (and nothing else of this process's
/// environment): its standard output, or its error.
fn check(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(args)
        .arg("check")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// What `tiendo run` would refuse on starting, `tiendo check` refuses too, without
/// connecting: a Redis URL that does not parse, a TLS file that is not there, a misspelt
/// librdkafka property (its value, a password, never printed).
#[test]
fn check_refuses_what_run_would() {
    let err = check(&[], &[("TIENDO_REDIS__URL", "redis-prod:6379")]).unwrap_err();
    assert!(err.contains("redis settings"), "{err}");
    let err = check(&[], &[("TIENDO_REDIS__TLS_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
    assert!(
        err.contains("redis settings") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    let err = check(
        &[],
        &[("TIENDO_KAFKA__PROPERTIES__SASL_PASWORD", "hunter2-secret")],
    )
    .unwrap_err();
    assert!(
        err.contains("kafka settings") && err.contains("sasl.pasword"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(check(&[], &[("TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD", "x")]).is_ok());
}

/// Alerts judged in the 63-unit table with targets of the 34-unit table: they would judge
/// nothing, and `tiendo check` says so.
#[test]
fn check_warns_of_targets_the_63_unit_view_cannot_judge() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.csv");
    std::fs::write(
        &file,
        "province,dataset,target,deadline\n56,civil_status,900000,2026-12-31\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .arg("check")
        .env_clear()
        .env("TIENDO_TARGETS__FILE", &file)
        .env("TIENDO_ALERTS__VIEW", "63")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("judge nothing there"), "{err}");
    // And, the switch-over being past, of the view itself.
    assert!(err.contains("after the switch-over to 34 units"), "{err}");
}

/// A target file with a former province's target but not its partner's: `tiendo check`
/// accepts it and warns that the merged province's target covers only part of it, naming it.
#[test]
fn check_warns_of_a_merged_province_whose_target_misses_a_former_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.csv");
    // Ninh Thuận (63:58) merged with Khánh Hòa (63:56) into Khánh Hòa (34:56).
    std::fs::write(
        &file,
        "province,dataset,target,deadline,scheme\n58,civil_status,900000,2026-12-31,63\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .arg("check")
        .env_clear()
        .env("TIENDO_TARGETS__FILE", &file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("34:56") && err.contains("Khánh Hòa") && err.contains("civil_status"),
        "{err}"
    );
}

/// Every way the README gives to configure tiendo, through the binary: the file by flag or by
/// `TIENDO_CONFIG`, environment variables over it, a whole receiver and its secrets from the
/// environment (never printed), variables that are not configuration left alone, and a
/// misspelt one refused by name.
#[test]
fn every_documented_way_to_configure_tiendo() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiendo.toml");
    std::fs::write(
        &file,
        "[kafka]\ngroup_id = \"from-file\"\n[redis]\nkey_prefix = \"file\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let by_flag = check(&["--config", file], &[]).unwrap();
    assert!(by_flag.contains("group_id: \"from-file\""), "{by_flag}");
    assert!(by_flag.contains(&format!("file: {file}")), "{by_flag}");
    let by_env = check(&[], &[("TIENDO_CONFIG", file)]).unwrap();
    assert!(by_env.contains("group_id: \"from-file\""), "{by_env}");
    assert!(by_env.contains("not configuration (ignored): TIENDO_CONFIG"));

    let out = check(
        &["--config", file],
        &[
            ("TIENDO_KAFKA__GROUP_ID", "from-env"),
            ("TIENDO_PIPELINE__BATCH_LINGER", "250ms"),
            ("TIENDO_REDIS__URL", "rediss://tiendo:redis-pw@redis:6380"),
            ("TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD", "kafka-pw"),
            ("TIENDO_ALERTS__RECEIVERS__TASKFORCE__KIND", "telegram"),
            (
                "TIENDO_ALERTS__RECEIVERS__TASKFORCE__TOKEN",
                "123:bot-token",
            ),
            (
                "TIENDO_ALERTS__RECEIVERS__TASKFORCE__CHAT_ID",
                "-1001234567890",
            ),
            ("TIENDO_PORT", "tcp://10.0.0.1:9464"),
            ("TIENDO_SERVICE_HOST", "10.0.0.1"),
            ("TIENDO_REPORT__SCHEDULE", "Mon 08:00,daily 17:30"),
            ("TIENDO_COMMANDS__TELEGRAM", "taskforce"),
            ("TIENDO_COMMANDS__CHATS", "-1001234567890,-1009876543210"),
            ("TIENDO_COMMANDS__SILENCERS", "123456789"),
            ("TIENDO_COMMANDS__SLACK_SIGNING_SECRET", "slack-signing"),
        ],
    )
    .unwrap();
    for shown in [
        "group_id: \"from-env\"",
        "key_prefix: \"file\"",
        "batch_linger: 250ms",
        "chat_id: \"-1001234567890\"",
        "kind: Telegram",
        "configuration ok: 0 targets, 1 receivers",
        "not configuration (ignored): TIENDO_PORT TIENDO_SERVICE_HOST",
        "\"Mon 08:00\",",
        "\"daily 17:30\",",
        "telegram: \"taskforce\"",
        "\"-1009876543210\",",
        "\"123456789\",",
    ] {
        assert!(out.contains(shown), "{shown} missing from:\n{out}");
    }
    for secret in ["redis-pw", "kafka-pw", "bot-token", "slack-signing"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }

    // A schedule and a command receiver that cannot work are refused at start.
    let err = check(&[], &[("TIENDO_REPORT__SCHEDULE", "Monday at eight")]).unwrap_err();
    assert!(
        err.contains("report.schedule: \"Monday at eight\" is not"),
        "{err}"
    );
    let err = check(&[], &[("TIENDO_COMMANDS__TELEGRAM", "nobody")]).unwrap_err();
    assert!(
        err.contains("commands.telegram: \"nobody\" is not a telegram receiver"),
        "{err}"
    );

    let err = check(&[], &[("TIENDO_REDIS__URLL", "redis://x")]).unwrap_err();
    assert!(err.contains("TIENDO_REDIS__URLL"), "{err}");
    let err = check(&["--config", "/nonexistent.toml"], &[]).unwrap_err();
    assert!(err.contains("/nonexistent.toml does not exist"), "{err}");
}
