//! Where digests go: Telegram's Bot API, Slack-compatible incoming webhooks, a generic JSON
//! webhook, and the Kafka alerts topic. Each turns a digest into the requests it needs
//! ([`Sink::prepare`]) and says of a failed request whether to retry and when
//! ([`SendError`]); the dispatcher does the rest.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::FutureRecord;
use reqwest::StatusCode;
use serde_json::json;

use super::message::{plain, render, split, Markup, Style};
use crate::config::{AlertSettings, ReceiverKind, ReceiverSettings};
use crate::events::v1;
use crate::rules::ledger::{Digest, Document, Notice};
use crate::rules::state::Change;
use crate::rules::{Route, Rule, Severity};

/// Telegram's limit on a message's text.
pub const TELEGRAM_MAX: usize = 4096;
/// Slack truncates long messages; this keeps each well inside what it shows in full.
pub const SLACK_MAX: usize = 3500;
const TELEGRAM_API: &str = "https://api.telegram.org";
/// Longest Retry-After honoured, so a confused receiver cannot park an outbox for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: the receiver is down, overloaded or rate-limiting.
    #[error("{reason}")]
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The receiver refuses this request for good (a bad payload).
    #[error("{0}")]
    Rejected(String),
    /// The receiver refuses the chat it was sent to, or every request (see
    /// [`refuses_everything`]): retried until mended when it is the receiver's own chat.
    #[error("{0}")]
    Refused(String),
}

/// One request to a receiver.
#[derive(Debug, Clone)]
pub enum Prepared {
    Http(serde_json::Value),
    /// Telegram `sendDocument`: a file to a chat.
    Document {
        chat_id: String,
        document: Document,
    },
    Kafka(Vec<(String, Vec<u8>)>),
}

pub enum Sink {
    Http {
        kind: ReceiverKind,
        client: reqwest::Client,
        /// Full endpoint; for Telegram the bot's API root (`…/bot<token>`), to which the
        /// method is added. It holds the token, so it is never logged.
        endpoint: String,
        chat_id: String,
        style: Style,
    },
    Kafka {
        producer: crate::source::Producer,
        topic: String,
    },
}

impl Sink {
    /// Whether a backlog in this outbox is merged before it is sent: for chats, where people
    /// read it. The alerts topic and webhooks record every transition, so they get each digest.
    pub fn merges_backlog(&self) -> bool {
        matches!(self, Sink::Http { kind, .. } if kind.is_chat())
    }

    /// A chat or webhook receiver; messages link to `public_url` when it is set.
    pub fn http(r: &ReceiverSettings, alerts: &AlertSettings, public_url: &str) -> Sink {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("tiendo/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        let endpoint = match r.kind {
            ReceiverKind::Telegram => telegram_bot(r),
            ReceiverKind::Slack | ReceiverKind::Webhook => r.url.expose().to_string(),
        };
        let max_chars = r.max_chars.unwrap_or(match r.kind {
            ReceiverKind::Telegram => TELEGRAM_MAX,
            ReceiverKind::Slack => SLACK_MAX,
            ReceiverKind::Webhook => usize::MAX / 2,
        });
        let style = Style {
            language: r.language.unwrap_or(alerts.language),
            markup: match r.kind {
                ReceiverKind::Telegram => Markup::TelegramHtml,
                ReceiverKind::Slack => Markup::Slack,
                ReceiverKind::Webhook => Markup::Plain,
            },
            max_chars,
            group_at: alerts.group_at,
            link: (!public_url.is_empty()).then(|| public_url.to_string()),
        };
        Sink::Http {
            kind: r.kind,
            client,
            endpoint,
            chat_id: r.chat_id.clone(),
            style,
        }
    }

    /// The requests that deliver `digest`, in order.
    pub fn prepare(&self, digest: &Digest) -> Vec<Prepared> {
        if !digest.texts.is_empty() || digest.document.is_some() {
            return self.prepare_texts(digest);
        }
        match self {
            Sink::Http {
                kind,
                chat_id,
                style,
                ..
            } => match kind {
                ReceiverKind::Telegram => render(digest, style)
                    .into_iter()
                    .map(|text| {
                        Prepared::Http(json!({
                            "chat_id": chat_id,
                            "text": text,
                            "parse_mode": "HTML",
                            "disable_web_page_preview": true,
                        }))
                    })
                    .collect(),
                ReceiverKind::Slack => render(digest, style)
                    .into_iter()
                    .map(|text| Prepared::Http(json!({ "text": text, "mrkdwn": true })))
                    .collect(),
                ReceiverKind::Webhook => vec![Prepared::Http(webhook_body(digest, style))],
            },
            Sink::Kafka { .. } => vec![Prepared::Kafka(
                digest
                    .notices
                    .iter()
                    .map(|n| (n.alert_key.clone(), alert(n).encode_to_vec()))
                    .collect(),
            )],
        }
    }

    /// Text rendered ahead: each text as a message (split if the receiver needs it), to the
    /// recipient if there is one, then the document.
    fn prepare_texts(&self, digest: &Digest) -> Vec<Prepared> {
        let Sink::Http {
            kind,
            chat_id,
            style,
            ..
        } = self
        else {
            return Vec::new();
        };
        let chat = digest
            .to
            .as_ref()
            .map_or(chat_id.as_str(), |t| t.chat_id.as_str());
        let reply_to = digest.to.as_ref().and_then(|t| t.reply_to);
        let texts = digest
            .texts
            .iter()
            .flat_map(|t| split(t, style.max_chars.max(1)));
        let mut out: Vec<Prepared> = match kind {
            ReceiverKind::Telegram => texts
                .map(|text| {
                    let mut body = json!({
                        "chat_id": chat,
                        "text": text,
                        "parse_mode": "HTML",
                        "disable_web_page_preview": true,
                    });
                    if let Some(id) = reply_to {
                        body["reply_parameters"] =
                            json!({ "message_id": id, "allow_sending_without_reply": true });
                    }
                    Prepared::Http(body)
                })
                .collect(),
            ReceiverKind::Slack => texts
                .map(|text| Prepared::Http(json!({ "text": text, "mrkdwn": true })))
                .collect(),
            ReceiverKind::Webhook => vec![Prepared::Http(json!({
                "schema": "tiendo.message.v1",
                "digest_id": digest.id,
                "at": digest.at,
                "kind": digest.kind,
                "language": style.language,
                "text": digest.texts.join("\n\n"),
            }))],
        };
        if let (ReceiverKind::Telegram, Some(document)) = (kind, &digest.document) {
            out.push(Prepared::Document {
                chat_id: chat.to_string(),
                document: document.clone(),
            });
        }
        out
    }

    pub async fn send(&self, request: &Prepared, digest_id: &str) -> Result<(), SendError> {
        match (self, request) {
            (
                Sink::Http {
                    client,
                    endpoint,
                    kind,
                    ..
                },
                Prepared::Http(body),
            ) => {
                let url = match kind {
                    ReceiverKind::Telegram => format!("{endpoint}/sendMessage"),
                    _ => endpoint.clone(),
                };
                let response = client
                    .post(url)
                    .header("Idempotency-Key", digest_id)
                    .json(body)
                    .send()
                    .await
                    .map_err(|e| {
                        // without_url: a Telegram URL carries the bot token.
                        let builder = e.is_builder();
                        let reason = e.without_url().to_string();
                        if builder {
                            SendError::Rejected(reason)
                        } else {
                            SendError::Retry {
                                after: None,
                                reason,
                            }
                        }
                    })?;
                classify(response).await
            }
            (
                Sink::Http {
                    client, endpoint, ..
                },
                Prepared::Document { chat_id, document },
            ) => {
                let file = reqwest::multipart::Part::text(document.content.clone())
                    .file_name(document.file_name.clone())
                    .mime_str("text/html; charset=utf-8")
                    .map_err(|e| SendError::Rejected(e.to_string()))?;
                let form = reqwest::multipart::Form::new()
                    .text("chat_id", chat_id.clone())
                    .text("caption", document.caption.clone())
                    .text("parse_mode", "HTML")
                    .part("document", file);
                let response = client
                    .post(format!("{endpoint}/sendDocument"))
                    .header("Idempotency-Key", digest_id)
                    .multipart(form)
                    .send()
                    .await
                    .map_err(|e| SendError::Retry {
                        after: None,
                        reason: e.without_url().to_string(),
                    })?;
                classify(response).await
            }
            (Sink::Kafka { producer, topic }, Prepared::Kafka(messages)) => {
                let sends = messages.iter().map(|(key, payload)| {
                    producer.send(
                        FutureRecord::to(topic).key(key).payload(payload),
                        Duration::from_secs(30),
                    )
                });
                for result in futures::future::join_all(sends).await {
                    result.map_err(|(e, _)| SendError::Retry {
                        after: None,
                        reason: e.to_string(),
                    })?;
                }
                Ok(())
            }
            _ => Err(SendError::Rejected("request of another receiver".into())),
        }
    }
}

/// The Bot API root of a Telegram receiver's bot (`…/bot<token>`), to which methods are
/// added. It holds the token: never log it.
pub fn telegram_bot(r: &ReceiverSettings) -> String {
    let base = if r.url.expose().is_empty() {
        TELEGRAM_API
    } else {
        r.url.expose()
    };
    format!("{}/bot{}", base.trim_end_matches('/'), r.token.expose())
}

/// 2xx delivered; 408, 429 and 5xx retried (after Retry-After, or Telegram's
/// `retry_after`); a refusal of the receiver or chat itself (see [`refuses_everything`]) told
/// apart; any other status is a refusal of this message that no retry will fix.
async fn classify(response: reqwest::Response) -> Result<(), SendError> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let header = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let body = response.text().await.unwrap_or_default();
    let json = serde_json::from_str::<serde_json::Value>(&body).ok();
    let from_body = json
        .as_ref()
        .and_then(|v| v["parameters"]["retry_after"].as_u64());
    let after = header
        .or(from_body)
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let reason = format!(
        "HTTP {}: {}",
        status.as_u16(),
        body.chars().take(200).collect::<String>()
    );
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Err(SendError::Retry { after, reason })
    } else if refuses_everything(status, json.as_ref()) {
        Err(SendError::Refused(reason))
    } else {
        Err(SendError::Rejected(reason))
    }
}

/// A `Retry-After` header's seconds: a number of them, or an HTTP date.
fn retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    value.parse().ok().or_else(|| {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        Some((at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64)
    })
}

/// A refusal that says the receiver or its chat is broken, not the message: a revoked token
/// or removed app (401, 403, a bot blocked), a webhook or bot that is gone (404, 410), or
/// Telegram's chat not found or upgraded to a supergroup (400 naming the new id).
fn refuses_everything(status: StatusCode, body: Option<&serde_json::Value>) -> bool {
    if matches!(status.as_u16(), 401 | 403 | 404 | 410) {
        return true;
    }
    let Some(body) = body else {
        return false;
    };
    let description = body["description"].as_str().unwrap_or("").to_lowercase();
    status == StatusCode::BAD_REQUEST
        && (!body["parameters"]["migrate_to_chat_id"].is_null()
            || description.contains("chat not found")
            || description.contains("group chat was upgraded"))
}

/// The generic webhook's body; its schema is documented in the README. It carries every
/// notice, whatever the text groups or sums up.
pub fn webhook_body(digest: &Digest, style: &Style) -> serde_json::Value {
    let mut body = json!({
        "schema": "tiendo.alerts.v1",
        "digest_id": digest.id,
        "at": digest.at,
        "language": style.language,
        "text": plain(digest, style.language, style.link.as_deref()),
        "notices": digest.notices,
    });
    if let Some(summary) = &digest.summary {
        body["summary"] = json!(summary);
    }
    body
}

/// A notice as the protobuf `Alert` of the alerts topic.
pub fn alert(n: &Notice) -> v1::Alert {
    let f = &n.facts;
    let feed = f.feed.as_ref();
    // A source system's subject is no province: its fields stay empty.
    let source = n.subject.is_source();
    let province = |v: String| if source { String::new() } else { v };
    let ts = |at: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    };
    v1::Alert {
        alert_id: n.alert_key.clone(),
        transition_id: n.id.clone(),
        transition: match n.change {
            Change::Firing { .. } => v1::Transition::Firing,
            Change::Repeated => v1::Transition::Repeated,
            Change::Resolved => v1::Transition::Resolved,
            Change::Completed => v1::Transition::Completed,
            Change::Flapping => v1::Transition::Flapping,
        } as i32,
        rule: match n.rule {
            Rule::Silent => v1::Rule::Silent,
            Rule::BehindPace => v1::Rule::BehindPace,
            Rule::ProjectedMiss => v1::Rule::ProjectedMiss,
            Rule::Completed => v1::Rule::Completed,
            Rule::OnlineShareLow => v1::Rule::OnlineShareLow,
            Rule::ProceduresSilent => v1::Rule::ProceduresSilent,
            Rule::SourceQuiet => v1::Rule::SourceQuiet,
            Rule::SourceRejecting => v1::Rule::SourceRejecting,
        } as i32,
        severity: match n.severity {
            Severity::Info => v1::Severity::Info,
            Severity::Warning => v1::Severity::Warning,
            Severity::Critical => v1::Severity::Critical,
        } as i32,
        province_code: province(n.subject.code.clone()),
        code_scheme: match n.subject.scheme.as_str() {
            "63" => v1::CodeScheme::Provinces63,
            "34" => v1::CodeScheme::Provinces34,
            _ => v1::CodeScheme::Unspecified,
        } as i32,
        province_name: province(n.subject.name.clone()),
        dataset: province(n.subject.dataset.clone()),
        evaluated_at: Some(ts(n.at)),
        percent_done: f.percent.unwrap_or(0.0),
        pace_7d: f.pace_7d,
        pace_needed: f.pace_needed.unwrap_or(0.0),
        days_left: f.days_left.map(|d| d.floor() as i64).unwrap_or(0),
        projected_date: f.projected.map(|d| d.to_string()).unwrap_or_default(),
        last_event: f.last_event.map(ts),
        online_share: f.online_share.unwrap_or(0.0),
        silenced: n.silenced_by.is_some(),
        deadline: f.deadline.map(|d| d.to_string()).unwrap_or_default(),
        route: match n.rule.route() {
            Route::Taskforce => v1::Route::Taskforce,
            Route::Ops => v1::Route::Ops,
        } as i32,
        source_system: if source {
            n.subject.code.clone()
        } else {
            String::new()
        },
        source_messages_24h: feed.map_or(0, |x| x.messages.max(0) as u64),
        source_rejected_24h: feed.map_or(0, |x| x.rejected.max(0) as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date() {
        assert_eq!(retry_after(" 120 "), Some(120));
        let at = chrono::Utc::now() + chrono::Duration::seconds(600);
        let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let secs = retry_after(&date).unwrap();
        assert!((598..=600).contains(&secs), "{secs}");
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn a_broken_receiver_is_told_from_a_bad_message() {
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        for status in [401, 403, 404, 410] {
            assert!(refuses_everything(
                StatusCode::from_u16(status).unwrap(),
                None
            ));
        }
        let upgraded = json(
            r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001234}}"#,
        );
        assert!(refuses_everything(StatusCode::BAD_REQUEST, Some(&upgraded)));
        let lost = json(r#"{"ok":false,"description":"Bad Request: chat not found"}"#);
        assert!(refuses_everything(StatusCode::BAD_REQUEST, Some(&lost)));
        let markup = json(r#"{"ok":false,"description":"Bad Request: can't parse entities"}"#);
        assert!(!refuses_everything(StatusCode::BAD_REQUEST, Some(&markup)));
        assert!(!refuses_everything(StatusCode::PAYLOAD_TOO_LARGE, None));
    }
}
