//! Settings from environment variables: `TIENDO_<SECTION>__<KEY>`, levels joined by `__`
//! (`TIENDO_REDIS__URL`, `TIENDO_ALERTS__RECEIVERS__TASKFORCE__CHAT_ID`).
//!
//! Only names with `__` are configuration. Other `TIENDO_*` variables are not and are left
//! alone: `TIENDO_CONFIG` names the file, and Kubernetes injects `TIENDO_SERVICE_HOST`,
//! `TIENDO_PORT`, `TIENDO_PORT_9464_TCP_ADDR`… into every pod of a namespace that has a
//! Service named `tiendo`. A configuration name must reach a key that exists, or startup stops
//! with a message naming the variable (`TIENDO_REDIS__URLL`).
//!
//! Each value is read as the type its key has in the settings, not guessed from its text:
//! `-1001234567890` for a chat id is text, `10000` for a batch size a number, `true` a
//! boolean, `civil_status,land` (or `["civil_status","land"]`) a list, `15m` a duration.
//! figment's own `Env` provider guesses types from the text and takes every `TIENDO_*` name
//! for a key, which is why this provider exists.

use std::collections::BTreeMap;
use std::ffi::OsString;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde_json::Value as Shape;

use super::{ConfigError, ReceiverKind, ReceiverSettings, Secret, Settings};

pub const PREFIX: &str = "TIENDO_";
/// Separates levels in a variable name.
const SEPARATOR: &str = "__";
/// Stands for "any key" in a shape: the entries of maps such as `kafka.properties`.
const ANY: &str = "*";

/// The configuration found in the environment, ready to merge over the file.
#[derive(Debug, Default)]
pub struct EnvOverrides {
    values: Dict,
    /// Configuration variables applied, by name (values not kept: they may be secrets).
    pub applied: Vec<String>,
    /// `TIENDO_*` variables that are not configuration (no `__`), by name.
    pub ignored: Vec<String>,
}

impl EnvOverrides {
    /// Reads this process's environment.
    pub fn from_env() -> Result<EnvOverrides, ConfigError> {
        EnvOverrides::read(std::env::vars_os())
    }

    /// Reads the `TIENDO_*` variables among `vars`.
    pub fn read(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<EnvOverrides, ConfigError> {
        let shape = shape();
        let mut out = EnvOverrides::default();
        let mut vars: Vec<(String, OsString)> = vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
            .filter(|(k, _)| k.starts_with(PREFIX))
            .collect();
        vars.sort();
        for (name, value) in vars {
            let rest = &name[PREFIX.len()..];
            if !rest.contains(SEPARATOR) {
                out.ignored.push(name);
                continue;
            }
            let Some(value) = value.to_str() else {
                return Err(invalid(&name, "its value is not UTF-8"));
            };
            let path: Vec<String> = rest.split(SEPARATOR).map(str::to_lowercase).collect();
            let leaf = leaf(&shape, &path).map_err(|m| invalid(&name, &m))?;
            let typed = typed(leaf, value).map_err(|m| invalid(&name, &m))?;
            insert(&mut out.values, &path, typed);
            out.applied.push(name);
        }
        Ok(out)
    }
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        // figment names the offending key in its errors; name it as the variable.
        Metadata::named("environment variable").interpolater(|_: &Profile, keys: &[&str]| {
            format!("{PREFIX}{}", keys.join(SEPARATOR).to_uppercase())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Default, self.values.clone())]))
    }
}

fn invalid(name: &str, message: &str) -> ConfigError {
    ConfigError::Invalid(format!("environment variable {name}: {message}"))
}

/// Every key's type, from the defaults with each optional key given and each map given one
/// entry under [`ANY`]: new settings are covered without being listed here.
fn shape() -> Shape {
    let mut s = Settings::default();
    s.targets.file = Some("targets.csv".into());
    let any = || BTreeMap::from([(ANY.to_string(), Secret::default())]);
    s.kafka.properties = any();
    s.kafka.consumer_properties = any();
    s.kafka.producer_properties = any();
    s.alerts.receivers.insert(
        ANY.into(),
        ReceiverSettings {
            kind: ReceiverKind::Telegram,
            url: Secret::default(),
            token: Secret::default(),
            chat_id: String::new(),
            language: Some(Default::default()),
            max_chars: Some(0),
            routes: vec![super::Route::Taskforce],
        },
    );
    serde_json::to_value(s).expect("settings serialize")
}

/// The shape of the key at `path`, or why there is none.
fn leaf<'a>(shape: &'a Shape, path: &[String]) -> Result<&'a Shape, String> {
    let mut here = shape;
    for (depth, segment) in path.iter().enumerate() {
        let Shape::Object(keys) = here else {
            return Err(format!(
                "{} is a value, not a section",
                path[..depth].join(".")
            ));
        };
        if segment.is_empty() {
            return Err("empty level (three or more underscores in a row?)".into());
        }
        here = match keys.get(segment.as_str()).or_else(|| keys.get(ANY)) {
            Some(next) => next,
            None => {
                let known: Vec<&str> = keys.keys().map(String::as_str).collect();
                let within = if depth == 0 {
                    "there is no section".to_string()
                } else {
                    format!("{} has no key", path[..depth].join("."))
                };
                return Err(format!(
                    "{within} {segment:?} (known: {})",
                    known.join(", ")
                ));
            }
        };
    }
    if let Shape::Object(keys) = here {
        let example = keys.keys().next().map(String::as_str).unwrap_or("KEY");
        return Err(format!(
            "{} is a section; set one of its keys, e.g. …__{}",
            path.join("."),
            example.to_uppercase()
        ));
    }
    Ok(here)
}

/// `raw` read as a value of `shape`'s type.
fn typed(shape: &Shape, raw: &str) -> Result<Value, String> {
    Ok(match shape {
        Shape::Bool(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Value::from(true),
            "false" | "0" | "no" | "off" => Value::from(false),
            _ => return Err(format!("expected true or false, found {raw:?}")),
        },
        Shape::Number(n) => {
            let t = raw.trim();
            let number = if n.is_f64() {
                t.parse::<f64>().ok().map(Value::from)
            } else {
                (t.parse::<u64>().ok().map(Value::from))
                    .or_else(|| t.parse::<i64>().ok().map(Value::from))
            };
            number.ok_or_else(|| format!("expected a number, found {raw:?}"))?
        }
        Shape::Array(items) => {
            let item = items.first().unwrap_or(&Shape::Null);
            list(raw)?
                .iter()
                .map(|s| typed(item, s))
                .collect::<Result<Vec<Value>, String>>()?
                .into()
        }
        // Text, durations, dates, enums, secrets: the key's own deserializer checks them.
        Shape::String(_) | Shape::Null => Value::from(raw.to_string()),
        Shape::Object(_) => unreachable!("leaf() returns values only"),
    })
}

/// `a,b` or a JSON array `["a","b"]`; empty for an empty value.
fn list(raw: &str) -> Result<Vec<String>, String> {
    let t = raw.trim();
    if t.starts_with('[') {
        let items: Vec<Shape> =
            serde_json::from_str(t).map_err(|e| format!("not a JSON array: {e}"))?;
        return Ok(items
            .into_iter()
            .map(|v| match v {
                Shape::String(s) => s,
                other => other.to_string(),
            })
            .collect());
    }
    Ok(t.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

fn insert(dict: &mut Dict, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("at least two levels");
    let mut here = dict;
    for p in parents {
        let entry = here
            .entry(p.clone())
            .or_insert_with(|| Value::from(Dict::new()));
        if !matches!(entry, Value::Dict(..)) {
            *entry = Value::from(Dict::new());
        }
        let Value::Dict(_, next) = entry else {
            unreachable!("made a dict above")
        };
        here = next;
    }
    here.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<EnvOverrides, ConfigError> {
        EnvOverrides::read(vars.iter().map(|(k, v)| (k.into(), v.into())))
    }

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_with(None, read(vars)?)
    }

    #[test]
    fn kubernetes_service_links_and_the_file_name_are_not_configuration() {
        let env = read(&[
            ("TIENDO_CONFIG", "/etc/tiendo/tiendo.toml"),
            ("TIENDO_SERVICE_HOST", "10.0.0.1"),
            ("TIENDO_SERVICE_PORT", "9464"),
            ("TIENDO_SERVICE_PORT_HTTP_METRICS", "9464"),
            ("TIENDO_PORT", "tcp://10.0.0.1:9464"),
            ("TIENDO_PORT_9464_TCP", "tcp://10.0.0.1:9464"),
            ("TIENDO_PORT_9464_TCP_PROTO", "tcp"),
            ("TIENDO_PORT_9464_TCP_PORT", "9464"),
            ("TIENDO_PORT_9464_TCP_ADDR", "10.0.0.1"),
            ("TIENDO_REDIS_SERVICE_HOST", "10.0.0.2"),
            ("HOME", "/root"),
        ])
        .unwrap();
        assert!(env.applied.is_empty());
        assert_eq!(env.ignored.len(), 10);
        assert_eq!(
            Settings::load_with(None, env).unwrap(),
            Settings::default().validated().unwrap()
        );
    }

    #[test]
    fn values_take_the_type_of_their_key() {
        let s = load(&[
            ("TIENDO_ALERTS__RECEIVERS__TASKFORCE__KIND", "telegram"),
            ("TIENDO_ALERTS__RECEIVERS__TASKFORCE__TOKEN", "123:abc"),
            (
                "TIENDO_ALERTS__RECEIVERS__TASKFORCE__CHAT_ID",
                "-1001234567890",
            ),
            ("TIENDO_ALERTS__RECEIVERS__TASKFORCE__MAX_CHARS", "3000"),
            ("TIENDO_KAFKA__GROUP_ID", "12345"),
            (
                "TIENDO_KAFKA__CONSUMER_PROPERTIES__SESSION_TIMEOUT_MS",
                "6000",
            ),
            ("TIENDO_PIPELINE__BATCH_MAX_MESSAGES", "2000"),
            ("TIENDO_PIPELINE__BATCH_LINGER", "250ms"),
            ("TIENDO_ALERTS__ENABLED", "false"),
            ("TIENDO_ALERTS__VIEW", "63"),
            ("TIENDO_ALERTS__RULES__ONLINE_SHARE_MIN", "0.75"),
            ("TIENDO_ALERTS__RULES__ONLINE_MIN_DOSSIERS", "20"),
            ("TIENDO_VALIDATION__DATASETS", "civil_status, land"),
            ("TIENDO_VALIDATION__PROGRAMME_START", "2022-02-01"),
            (
                "TIENDO_REDIS__CLUSTER_URLS",
                r#"["redis://a:1","redis://b:2"]"#,
            ),
            ("TIENDO_TARGETS__FILE", "/etc/tiendo/targets.csv"),
        ])
        .unwrap();
        let r = &s.alerts.receivers["taskforce"];
        assert_eq!(r.chat_id, "-1001234567890");
        assert_eq!(r.max_chars, Some(3000));
        assert_eq!(r.token.expose(), "123:abc");
        assert_eq!(s.kafka.group_id, "12345");
        assert_eq!(
            s.kafka.consumer_properties["session.timeout.ms"].expose(),
            "6000"
        );
        assert_eq!(s.pipeline.batch_max_messages, 2000);
        assert_eq!(s.pipeline.batch_linger.as_millis(), 250);
        assert!(!s.alerts.enabled);
        assert_eq!(s.alerts.view, crate::provinces::View::Legacy63);
        assert_eq!(s.alerts.rules.online_share_min, 0.75);
        assert_eq!(s.alerts.rules.online_min_dossiers, 20);
        assert_eq!(s.validation.datasets, ["civil_status", "land"]);
        assert_eq!(s.redis.cluster_urls.len(), 2);
        assert_eq!(
            s.targets.file.as_deref(),
            Some(std::path::Path::new("/etc/tiendo/targets.csv"))
        );
    }

    #[test]
    fn a_misspelt_key_is_refused_naming_the_variable() {
        let err = load(&[("TIENDO_REDIS__URLL", "redis://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TIENDO_REDIS__URLL"), "{err}");
        assert!(err.contains("redis has no key \"urll\""), "{err}");
        for (name, value) in [
            ("TIENDO_REDSI__URL", "redis://x"),
            ("TIENDO_KAFKA__TOPICS", "x"),
            ("TIENDO_REDIS__URL__X", "x"),
            ("TIENDO_PIPELINE__BATCH_MAX_MESSAGES", "many"),
            ("TIENDO_ALERTS__ENABLED", "maybe"),
            ("TIENDO_ALERTS__RECEIVERS__X__COLOUR", "red"),
        ] {
            let err = load(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
        // A value of the right type the key still refuses: figment's message names it too.
        let err = load(&[("TIENDO_ALERTS__VIEW", "35")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TIENDO_ALERTS__VIEW"), "{err}");
    }
}
