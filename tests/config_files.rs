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

/// `tiendo check` on a configuration file, with the environment a deployment adds.
fn check(config: &Path, env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .env("TIENDO_TARGETS__FILE", "deploy/targets.example.csv")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{} refused: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_deployment_configurations_are_accepted_by_tiendo_itself() {
    let out = check(Path::new("deploy/compose/tiendo.toml"), &[]);
    assert!(
        out.contains("configuration ok: 102 targets, 0 receivers"),
        "{out}"
    );

    // The ConfigMap's tiendo.toml, as Kubernetes mounts it, with the Secret's variables.
    let yaml = std::fs::read_to_string("deploy/k8s/configmap.yaml").unwrap();
    let start = yaml
        .find("  tiendo.toml: |\n")
        .expect("tiendo.toml in the ConfigMap")
        + 17;
    let toml: String = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiendo.toml");
    std::fs::write(&file, toml).unwrap();
    let out = check(
        &file,
        &[
            ("TIENDO_REDIS__URL", "rediss://tiendo:pw@redis:6380"),
            ("TIENDO_ALERTS__RECEIVERS__TASKFORCE__TOKEN", "123:abc"),
            ("TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
        ],
    );
    assert!(
        out.contains("configuration ok: 102 targets, 1 receivers"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2") && !out.contains("123:abc") && !out.contains(":pw@"),
        "{out}"
    );
}
