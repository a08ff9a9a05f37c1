//! A real HTTP server standing in for Telegram's Bot API or a Slack-compatible webhook: it
//! answers from a script (500s, 429s with Retry-After, then success) and records every request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::task::JoinHandle;

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    Status(u16),
    /// This status with this Bot API `description`.
    Described(u16, &'static str),
    /// 429 with a `Retry-After` header of this many seconds.
    TooManyHeader(u64),
    /// 429 with Telegram's `parameters.retry_after` in the body.
    TooManyBody(u64),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub body: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub at: Instant,
    /// Whether it was answered with success.
    pub accepted: bool,
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Reply>,
    requests: Vec<Request>,
}

pub struct ChatServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl ChatServer {
    pub async fn start(script: Vec<Reply>) -> ChatServer {
        ChatServer::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Vec<Reply>) -> ChatServer {
        let shared = Arc::new(Mutex::new(Shared {
            script: script.into(),
            requests: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        ChatServer { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    pub fn accepted(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.accepted).collect()
    }

    /// Waits until `n` requests were accepted.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages accepted in {timeout:?}: {:?}",
                got.len(),
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(shared): State<Arc<Mutex<Shared>>>,
    uri: Uri,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let mut s = shared.lock().unwrap();
    let reply = s.script.pop_front().unwrap_or(Reply::Ok);
    s.requests.push(Request {
        path: uri.path().to_string(),
        body,
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        at: Instant::now(),
        accepted: matches!(reply, Reply::Ok),
    });
    match reply {
        Reply::Ok => Json(serde_json::json!({"ok": true})).into_response(),
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            Json(serde_json::json!({"ok": false, "error_code": code, "description": "scripted"})),
        )
            .into_response(),
        Reply::Described(code, description) => (
            StatusCode::from_u16(code).unwrap(),
            Json(serde_json::json!({"ok": false, "error_code": code, "description": description})),
        )
            .into_response(),
        Reply::TooManyHeader(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "rate limited",
        )
            .into_response(),
        Reply::TooManyBody(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(serde_json::json!({
                "ok": false,
                "error_code": 429,
                "description": "Too Many Requests: retry after",
                "parameters": {"retry_after": secs}
            })),
        )
            .into_response(),
    }
}
