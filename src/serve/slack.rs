//! `/slack/commands`: Slack and Mattermost slash commands, answered in the response.
//!
//! A Slack request must carry a valid `X-Slack-Signature` (HMAC-SHA256 of `v0:<timestamp>:<body>`
//! with the signing secret) and a timestamp within five minutes of now, so a captured request
//! cannot be replayed. A Mattermost request must carry the slash command's token. Either kind is
//! answered only when its secret is configured; anything else gets 401 and is counted.
//!
//! Slack shows the asker only an error when the answer takes over 3 s, and shows no body of a
//! reply that is not 200: every answer, failures included, is a 200 within [`ANSWER_WITHIN`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::AppState;
use crate::chat::{Asker, Via};
use crate::notify::message::Markup;
use crate::telemetry;

/// How old a signed request may be.
const MAX_AGE_SECS: i64 = 300;
/// Within Slack's 3 s, with room for the way there and back.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(2500);

#[derive(Debug, Deserialize)]
struct Form {
    #[serde(default)]
    token: String,
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    user_name: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    text: String,
}

pub async fn handler(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(chat) = &s.chat else {
        return (StatusCode::NOT_FOUND, "chat commands are not configured\n").into_response();
    };
    let commands = &chat.settings().commands;
    let form: Form = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => return (StatusCode::BAD_REQUEST, "not a slash command form\n").into_response(),
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let via = match (
        header("x-slack-signature"),
        header("x-slack-request-timestamp"),
    ) {
        (Some(signature), Some(timestamp)) => {
            let secret = commands.slack_signing_secret.expose();
            match verify(secret, timestamp, &body, signature, now) {
                Ok(()) => Via::Slack,
                Err(why) => return refuse(why),
            }
        }
        _ => {
            let token = commands.mattermost_token.expose();
            if token.is_empty() || !same(token.as_bytes(), form.token.as_bytes()) {
                return refuse("no valid signature or token");
            }
            Via::Mattermost
        }
    };
    let asker = Asker {
        via,
        chat: form.channel_id,
        user: form.user_id,
        name: form.user_name,
    };
    let vi = chat.settings().alerts.language == crate::config::Language::Vi;
    match tokio::time::timeout(
        ANSWER_WITHIN,
        answer(&s, chat, &form.command, &form.text, &asker),
    )
    .await
    {
        Ok(reply) => reply,
        Err(_) => {
            tracing::warn!(
                command = form.command,
                "chat command not answered within Slack's time: Redis slow or unreachable"
            );
            ephemeral(if vi {
                "tiendo: số liệu đang chậm, xin thử lại sau một phút. Nếu vừa tạm im, xem /tinh trước khi gửi lại."
            } else {
                "tiendo: figures are slow to come; try again in a minute. If you asked for a silence, see /province before asking again."
            })
        }
    }
}

/// The answer to a verified command, with its silence stored.
async fn answer(
    s: &AppState,
    chat: &crate::chat::Conversation,
    command: &str,
    text: &str,
    asker: &Asker,
) -> Response {
    let lang = chat.settings().alerts.language;
    let vi = lang == crate::config::Language::Vi;
    // Mattermost reads Slack's mrkdwn too.
    let markup = Markup::Slack;
    let answer = match chat.answer_slash(command, text, asker, lang, markup).await {
        Ok(Some(a)) => a,
        Ok(None) => return StatusCode::OK.into_response(),
        Err(error) => {
            tracing::warn!(%error, "chat command not answered: figures unavailable");
            return ephemeral(if vi {
                "tiendo: chưa đọc được số liệu, xin thử lại sau một phút."
            } else {
                "tiendo: figures unavailable, try again in a minute."
            });
        }
    };
    if let Some(change) = &answer.change {
        let done = match change {
            crate::rules::ledger::SilenceChange::Add(silence) => {
                s.ledger.add_silence(silence).await
            }
            crate::rules::ledger::SilenceChange::Remove(id) => {
                s.ledger.remove_silence(id).await.map(|_| ())
            }
        };
        if let Err(error) = done {
            tracing::warn!(%error, "silence from chat not stored");
            return ephemeral(if vi {
                "tiendo: chưa lưu được lệnh tạm im, xin thử lại."
            } else {
                "tiendo: the silence was not stored, try again."
            });
        }
    }
    Json(serde_json::json!({
        "response_type": if answer.private { "ephemeral" } else { "in_channel" },
        "text": answer.texts.join("\n\n"),
    }))
    .into_response()
}

/// A 200 only the asker sees: Slack shows no body of another status.
fn ephemeral(text: &str) -> Response {
    Json(serde_json::json!({"response_type": "ephemeral", "text": text})).into_response()
}

fn refuse(why: &'static str) -> Response {
    tracing::warn!(why, "slash command refused");
    metrics::counter!(
        telemetry::CHAT_COMMANDS,
        "via" => "slack",
        "command" => "unknown",
        "outcome" => "unauthenticated"
    )
    .increment(1);
    (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response()
}

/// Checks Slack's request signature: `v0=` and the hex HMAC-SHA256 of `v0:<ts>:<body>`.
pub fn verify(
    secret: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: i64,
) -> Result<(), &'static str> {
    if secret.is_empty() {
        return Err("Slack signing secret not configured");
    }
    let ts: i64 = timestamp.trim().parse().map_err(|_| "bad timestamp")?;
    if (now - ts).abs() > MAX_AGE_SECS {
        return Err("request older than five minutes");
    }
    let given = signature
        .strip_prefix("v0=")
        .and_then(unhex)
        .ok_or("malformed signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "bad secret")?;
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| "signature mismatch")
}

/// The signature Slack would send (for tests and tools).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Equal bytes, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_and_expire() {
        let body = b"command=%2Ftinh&text=58";
        let sig = sign("s3cret", 1_000_000, body);
        assert_eq!(verify("s3cret", "1000000", body, &sig, 1_000_100), Ok(()));
        assert_eq!(
            verify("s3cret", "1000000", body, &sig, 1_000_301),
            Err("request older than five minutes")
        );
        assert_eq!(
            verify("other", "1000000", body, &sig, 1_000_000),
            Err("signature mismatch")
        );
        assert_eq!(
            verify("s3cret", "1000000", b"command=%2Fimlang", &sig, 1_000_000),
            Err("signature mismatch")
        );
        assert_eq!(
            verify("", "1000000", body, &sig, 1_000_000),
            Err("Slack signing secret not configured")
        );
        assert_eq!(
            verify("s3cret", "1000000", body, "v0=zz", 1_000_000),
            Err("malformed signature")
        );
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
