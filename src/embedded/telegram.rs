//! A stand-in for Telegram's Bot API, for the demo and the tests: people "say" things in chats
//! ([`BotApi::say`]); the bot reads them with `getUpdates` (long polling, offsets confirming
//! what was read, 409 for a second poller at once, as Telegram does) and answers with
//! `sendMessage` and `sendDocument` (multipart), which are recorded. `getMe` names the bot.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The bot's username in the stand-in.
pub const BOT: &str = "tiendo_bot";

/// One message or document the bot sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// `sendMessage` or `sendDocument`.
    pub method: String,
    pub chat_id: String,
    /// The message text, or the document's caption.
    pub text: String,
    pub reply_to: Option<i64>,
    pub file_name: Option<String>,
    pub document: Option<String>,
}

#[derive(Default)]
struct Shared {
    /// Updates not yet confirmed by an offset past them.
    updates: Vec<Value>,
    next_id: i64,
    sent: Vec<Sent>,
    /// `getUpdates` calls in progress, and the most ever at once (refused ones included).
    polling: usize,
    most_polling: usize,
    /// Requests answered with an error on purpose, next first (HTTP status).
    fail_next: Vec<u16>,
}

pub struct BotApi {
    pub addr: SocketAddr,
    shared: Arc<(Mutex<Shared>, Notify)>,
    task: JoinHandle<()>,
}

impl BotApi {
    pub async fn start() -> std::io::Result<BotApi> {
        let shared = Arc::new((
            Mutex::new(Shared {
                next_id: 1000,
                ..Shared::default()
            }),
            Notify::new(),
        ));
        let app = axum::Router::new()
            .route("/{bot}/{method}", axum::routing::any(method))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(BotApi { addr, shared, task })
    }

    /// The base URL to configure as a Telegram receiver's `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `user` (with `username`) writes `text` in `chat` now; returns the update id.
    pub fn say(&self, chat: i64, user: i64, username: &str, text: &str) -> i64 {
        self.say_at(chat, user, username, text, chrono::Utc::now().timestamp())
    }

    /// Like [`BotApi::say`], written at unix time `date`.
    pub fn say_at(&self, chat: i64, user: i64, username: &str, text: &str, date: i64) -> i64 {
        let (lock, notify) = &*self.shared;
        let mut s = lock.lock().expect("stand-in state");
        let id = s.next_id;
        s.next_id += 1;
        s.updates.push(json!({
            "update_id": id,
            "message": {
                "message_id": id * 10,
                "from": {"id": user, "is_bot": false, "first_name": username, "username": username},
                "chat": {"id": chat, "type": if chat < 0 { "supergroup" } else { "private" }},
                "date": date,
                "text": text,
            }
        }));
        drop(s);
        notify.notify_waiters();
        id
    }

    /// Numbers the next updates from `id` on, as Telegram does after a week without any (at
    /// random, so possibly below ids already handed out).
    pub fn renumber(&self, id: i64) {
        self.shared.0.lock().expect("stand-in state").next_id = id;
    }

    /// The next `n` requests of any method fail with `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = self.shared.0.lock().expect("stand-in state");
        s.fail_next.extend(std::iter::repeat_n(status, n));
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.shared.0.lock().expect("stand-in state").sent.clone()
    }

    /// Updates said but not yet confirmed by the bot.
    pub fn unconfirmed(&self) -> usize {
        self.shared.0.lock().expect("stand-in state").updates.len()
    }

    /// The most `getUpdates` calls that were ever in progress at once.
    pub fn most_polling(&self) -> usize {
        self.shared.0.lock().expect("stand-in state").most_polling
    }

    /// Waits until at least `n` messages or documents were sent, and returns them all.
    pub async fn wait_sent(&self, n: usize, timeout: Duration) -> Vec<Sent> {
        let deadline = Instant::now() + timeout;
        loop {
            let sent = self.sent();
            if sent.len() >= n || Instant::now() >= deadline {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for BotApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared2 = Arc<(Mutex<Shared>, Notify)>;

async fn method(
    State(shared): State<Shared2>,
    Path((bot, method)): Path<(String, String)>,
    request: Request,
) -> Response {
    if !bot.starts_with("bot") {
        return error(404, "Not Found");
    }
    if let Some(status) = {
        let mut s = shared.0.lock().expect("stand-in state");
        (!s.fail_next.is_empty()).then(|| s.fail_next.remove(0))
    } {
        return error(status, "scripted failure");
    }
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    let fields: Value = if multipart {
        let Ok(mut form) = Multipart::from_request(request, &()).await else {
            return error(400, "Bad Request: bad multipart");
        };
        let mut fields = serde_json::Map::new();
        while let Ok(Some(field)) = form.next_field().await {
            let name = field.name().unwrap_or_default().to_string();
            if let Some(file) = field.file_name().map(String::from) {
                fields.insert("file_name".into(), Value::from(file));
            }
            let text = field.text().await.unwrap_or_default();
            fields.insert(name, Value::from(text));
        }
        Value::Object(fields)
    } else {
        let bytes = axum::body::to_bytes(request.into_body(), 10 << 20)
            .await
            .unwrap_or_default();
        if bytes.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) => return error(400, "Bad Request: not JSON"),
            }
        }
    };
    match method.as_str() {
        "getMe" => ok(json!({"id": 1, "is_bot": true, "first_name": "tiendo", "username": BOT})),
        "getUpdates" => get_updates(shared, fields).await,
        "sendMessage" | "sendDocument" => {
            let text = |k: &str| match &fields[k] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let chat_id = text("chat_id");
            if chat_id.is_empty() {
                return error(400, "Bad Request: chat_id is empty");
            }
            let sent = Sent {
                method: method.clone(),
                chat_id,
                text: if method == "sendMessage" {
                    text("text")
                } else {
                    text("caption")
                },
                reply_to: fields["reply_parameters"]["message_id"].as_i64(),
                file_name: fields["file_name"].as_str().map(String::from),
                document: fields["document"].as_str().map(String::from),
            };
            if method == "sendMessage" && sent.text.is_empty() {
                return error(400, "Bad Request: message text is empty");
            }
            if method == "sendDocument" && sent.document.is_none() {
                return error(400, "Bad Request: there is no document in the request");
            }
            shared.0.lock().expect("stand-in state").sent.push(sent);
            ok(json!({"message_id": 1}))
        }
        _ => error(404, "Not Found: method not found"),
    }
}

/// Confirms updates before `offset`, then waits up to `timeout` seconds for any at or after it.
async fn get_updates(shared: Shared2, fields: Value) -> Response {
    let offset = fields["offset"].as_i64().unwrap_or(0);
    let timeout = Duration::from_secs(fields["timeout"].as_u64().unwrap_or(0).min(50));
    {
        let mut s = shared.0.lock().expect("stand-in state");
        // Counted before refusing, so a second poller shows even though it is refused.
        s.most_polling = s.most_polling.max(s.polling + 1);
        if s.polling > 0 {
            return error(
                409,
                "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
            );
        }
        s.polling += 1;
        s.updates
            .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
    }
    // Counted down even when the poller hangs up mid-wait and this future is dropped.
    struct Polling(Shared2);
    impl Drop for Polling {
        fn drop(&mut self) {
            if let Ok(mut s) = self.0 .0.lock() {
                s.polling -= 1;
            }
        }
    }
    let _polling = Polling(shared.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    let result = loop {
        let notified = shared.1.notified();
        let ready: Vec<Value> = shared.0.lock().expect("stand-in state").updates.clone();
        if !ready.is_empty() || tokio::time::Instant::now() >= deadline {
            break ready;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    };
    ok(Value::from(result))
}

fn ok(result: Value) -> Response {
    Json(json!({"ok": true, "result": result})).into_response()
}

fn error(status: u16, description: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        Json(json!({"ok": false, "error_code": status, "description": description})),
    )
        .into_response()
}
