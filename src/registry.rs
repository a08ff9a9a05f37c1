//! The optional Schema Registry check: with `kafka.schema_registry.url` set, the schema id of
//! each Confluent frame is looked up once (`GET /schemas/ids/{id}`) and remembered, and a frame
//! whose id the registry does not know, whose schema is of another type, or whose schema has
//! another message at the frame's index is dead-lettered as `unknown_schema_id`.
//!
//! Lookups happen in the consume loop before a message is decoded ([`Registry::learn`]);
//! decoding only reads what was learnt ([`Registry::verdict`]), so it stays synchronous. A
//! registry that cannot be reached is no reason to refuse events that decode and validate: for a
//! while (`RETRY_AFTER`) ids not yet known are judged by their bytes alone, as without a
//! registry, and counted in `tiendo_schema_registry_lookups_total{outcome="error"}`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::Secret;
use crate::telemetry;

/// How long ids not yet known go unchecked after the registry could not be reached.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Verdicts kept; past this (ids a hostile producer made up) the cache starts over.
const MAX_KEPT: usize = 10_000;

/// What the registry says of one schema id.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A protobuf schema and its top-level messages, in order (message index `[i]` is the
    /// i-th), or a JSON schema (`messages` empty).
    Known { json: bool, messages: Vec<String> },
    /// Not a schema tiendo can read: the detail says why.
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry: {0}")]
    Http(#[from] reqwest::Error),
    #[error("schema registry answered {0}")]
    Status(reqwest::StatusCode),
}

#[derive(Deserialize)]
struct Schema {
    #[serde(default)]
    schema: String,
    /// Absent means Avro, the registry's first type.
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// Debug shows no URL: it may hold a password.
pub struct Registry {
    client: reqwest::Client,
    base: Secret,
    /// Shared, so reading one per message copies no schema.
    verdicts: RwLock<HashMap<u32, Arc<Verdict>>>,
    /// Set while the registry is taken to be unreachable.
    down_until: RwLock<Option<Instant>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "verdicts",
                &self.verdicts.read().map(|v| v.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(url: &Secret) -> Registry {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .user_agent(concat!("tiendo/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        Registry {
            client,
            base: Secret::new(url.expose().trim_end_matches('/').to_string()),
            verdicts: RwLock::new(HashMap::new()),
            down_until: RwLock::new(None),
        }
    }

    /// What was learnt of `id`; `None` if nothing (then the frame is judged by its bytes).
    pub fn verdict(&self, id: u32) -> Option<Arc<Verdict>> {
        self.verdicts.read().expect("verdicts").get(&id).cloned()
    }

    /// Records what is known of `id`, as a lookup would.
    pub fn remember(&self, id: u32, verdict: Verdict) {
        let mut verdicts = self.verdicts.write().expect("verdicts");
        if verdicts.len() >= MAX_KEPT {
            verdicts.clear();
        }
        verdicts.insert(id, Arc::new(verdict));
    }

    /// Looks `id` up unless it is known or the registry is down.
    pub async fn learn(&self, id: u32) {
        if self.verdicts.read().expect("verdicts").contains_key(&id) {
            return;
        }
        if self
            .down_until
            .read()
            .expect("down")
            .is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        match self.fetch(id).await {
            Ok(verdict) => {
                let outcome = match verdict {
                    Verdict::Known { .. } => "known",
                    Verdict::Refused(_) => "refused",
                };
                metrics::counter!(telemetry::SCHEMA_LOOKUPS, "outcome" => outcome).increment(1);
                self.remember(id, verdict);
            }
            Err(error) => {
                metrics::counter!(telemetry::SCHEMA_LOOKUPS, "outcome" => "error").increment(1);
                tracing::warn!(
                    %error,
                    schema_id = id,
                    retry_in = ?RETRY_AFTER,
                    "schema registry not reached; frames judged by their bytes meanwhile"
                );
                *self.down_until.write().expect("down") = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    async fn fetch(&self, id: u32) -> Result<Verdict, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base.expose());
        let response = self
            .client
            .get(url)
            .header("Accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(reqwest::Error::without_url)?; // the URL may hold a password
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Verdict::Refused(format!(
                "schema id {id} is not in the schema registry"
            )));
        }
        if !status.is_success() {
            return Err(RegistryError::Status(status));
        }
        let schema: Schema = response.json().await.map_err(reqwest::Error::without_url)?;
        Ok(match schema.schema_type.as_deref().unwrap_or("AVRO") {
            "PROTOBUF" => Verdict::Known {
                json: false,
                messages: top_level_messages(&schema.schema),
            },
            "JSON" => Verdict::Known {
                json: true,
                messages: Vec::new(),
            },
            other => Verdict::Refused(format!(
                "schema id {id} is an {other} schema, not protobuf or JSON"
            )),
        })
    }
}

/// The names of a .proto text's top-level messages, in order: what Confluent's message
/// indexes count.
pub fn top_level_messages(proto: &str) -> Vec<String> {
    let text = strip_comments(proto);
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut word = String::new();
    let mut expect_name = false;
    // Braces set the depth; `message NAME` at depth 0 is a top-level message.
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            if expect_name {
                out.push(std::mem::take(&mut word));
                expect_name = false;
            } else if depth == 0 && word == "message" {
                expect_name = true;
            }
            word.clear();
        }
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    out
}

/// The text with `//` and `/* */` comments and string literals blanked.
fn strip_comments(proto: &str) -> String {
    let mut out = String::with_capacity(proto.len());
    let mut chars = proto.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            ('"' | '\'', _) => {
                let quote = c;
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == quote {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_messages_are_counted_in_order() {
        let proto = include_str!("../proto/tiendo/v1/events.proto");
        assert_eq!(
            top_level_messages(proto),
            ["RecordDigitized", "ProcedureCompleted"]
        );
        let tricky = r#"
            syntax = "proto3";
            // message Commented {}
            /* message Blocked { } */
            message Outer { message Inner {} string s = 1 [default = "message Quoted {"]; }
            enum E { A = 0; }
            message Second {}
        "#;
        assert_eq!(top_level_messages(tricky), ["Outer", "Second"]);
    }
}
