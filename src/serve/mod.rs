//! Stage 7: serving. One HTTP server for operators and the task force: `/metrics`
//! (Prometheus), `/healthz` (the process answers), `/readyz` (the consumer group has assigned
//! this replica its partitions, none for a standby, and Redis answers: fit for Kubernetes
//! probes), `/api/v1/provinces` (every province's figures,
//! targets and alert states), `/api/v1/provinces/{code}/history` (its daily series),
//! `/slack/commands` (chat commands from Slack and Mattermost), `/report` (the report as a
//! page), `/province/{code}` (its history as a chart) and `/`, a status page a phone can read.

mod api;
mod history;
mod province;
pub mod slack;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::AlertSettings;
use crate::rules::ledger::Ledger;
use crate::source::Assignment;
use crate::status::View;
use crate::store::{RedisConn, Store};
use crate::targets::Targets;

pub use api::{ProvinceView, Provinces};

/// The status page: one file, no build step, no external assets (it must load on a phone
/// inside a government network).
const PAGE: &str = include_str!("page.html");

/// What the handlers read from.
pub struct AppState {
    pub conn: RedisConn,
    pub store: Store,
    pub ledger: Ledger,
    pub targets: Targets,
    pub datasets: Vec<String>,
    pub alerts: AlertSettings,
    pub clock: SharedClock,
    pub metrics: Option<PrometheusHandle>,
    /// The consumer's partitions; `None` where no consumer runs (then readiness is Redis only).
    pub assignment: Option<Arc<Assignment>>,
    /// Whether the figures are current (shared with the evaluator); `None` without Kafka.
    pub watch: Option<crate::catchup::Watch>,
    /// Answers slash commands at `/slack/commands`; `None` where no chat is configured.
    pub chat: Option<Arc<crate::chat::Conversation>>,
    pub sources: crate::config::SourceSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
}

/// Binds `listen` and serves until `shutdown`; returns the bound address (port 0 picks one).
pub async fn serve(
    listen: &str,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Bind(listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(listen.to_string(), e))?;
    let app = router(Arc::new(state));
    let task = tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::error!(%error, "http server failed");
        }
    });
    tracing::info!(%addr, "http server listening");
    Ok((addr, task))
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/provinces", get(provinces))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/provinces/{code}/history", get(history::handler))
        .route("/slack/commands", axum::routing::post(slack::handler))
        .route("/report", get(report))
        .route("/province/{code}", get(province::handler))
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let mut conn = s.conn.clone();
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await;
    let redis_ok = matches!(ping, Ok(Ok(_)));
    let partitions = s.assignment.as_ref().map(|a| a.count());
    let joined = s.assignment.as_ref().is_none_or(|a| a.joined());
    let ready = redis_ok && joined;
    let body = serde_json::json!({
        "ready": ready,
        "redis": redis_ok,
        "joined": joined,
        "partitions": partitions,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are not recorded here\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ViewQuery {
    view: Option<String>,
}

/// `?view=`: 34 (the default) or 63; else the 400 to answer.
fn parse_view(view: Option<&str>) -> Result<View, (StatusCode, String)> {
    match view {
        None | Some("34") => Ok(View::Current34),
        Some("63") => Ok(View::Legacy63),
        Some(other) => Err((
            StatusCode::BAD_REQUEST,
            format!("view must be 34 or 63, not {other}\n"),
        )),
    }
}

#[derive(serde::Deserialize)]
struct ReportQuery {
    view: Option<String>,
    lang: Option<crate::config::Language>,
}

/// `/report`: the report as a page (what Slack's scheduled report links to).
async fn report(State(s): State<Arc<AppState>>, Query(q): Query<ReportQuery>) -> Response {
    let Some(chat) = &s.chat else {
        return (StatusCode::NOT_FOUND, "no report here\n").into_response();
    };
    let settings = chat.settings();
    let view = match q.view.as_deref() {
        None => settings.alerts.view,
        Some(v) => match parse_view(Some(v)) {
            Ok(v) => v,
            Err(r) => return r.into_response(),
        },
    };
    let lang = q.lang.unwrap_or(settings.alerts.language);
    let now = s.clock.now();
    match crate::report::build(&s.store, &s.targets, settings, view, lang, now).await {
        Ok(r) => Html(r.html()).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot read figures for the report");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("figures unavailable: {error}\n"),
            )
                .into_response()
        }
    }
}

async fn sources(State(s): State<Arc<AppState>>) -> Response {
    let now = s.clock.now();
    match s.store.sources(now).await {
        Ok(stored) => Json(crate::sources::view(
            &s.sources.known,
            &stored,
            s.sources.quiet_after,
            now,
        ))
        .into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot read sources for the API");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("sources unavailable: {error}\n"),
            )
                .into_response()
        }
    }
}

async fn provinces(State(s): State<Arc<AppState>>, Query(q): Query<ViewQuery>) -> Response {
    let view = match parse_view(q.view.as_deref()) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    match api::build(&s, view).await {
        Ok(p) => Json(p).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot read figures for the API");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("figures unavailable: {error}\n"),
            )
                .into_response()
        }
    }
}
