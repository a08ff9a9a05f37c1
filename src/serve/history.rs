//! `/api/v1/provinces/{code}/history?dataset=…&days=…&view=34|63&scheme=34|63`: a province's
//! daily series (records done by the end of each day, records that day, percent of target),
//! from the day buckets, in either unit view. Without `dataset`, every dataset the province
//! has.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{parse_view, AppState};
use crate::history::{self, Series, MAX_DAYS};
use crate::provinces::View;

#[derive(Deserialize)]
pub struct HistoryQuery {
    pub view: Option<String>,
    /// The unit table of the code ("34" or "63"), where the view has rows of both.
    pub scheme: Option<String>,
    pub dataset: Option<String>,
    pub days: Option<usize>,
}

#[derive(Serialize)]
struct History {
    view: View,
    code: String,
    name: String,
    days: usize,
    series: Vec<Series>,
}

pub async fn handler(
    State(s): State<Arc<AppState>>,
    Path(code): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let (view, scheme) = match (
        parse_view(q.view.as_deref()),
        parse_scheme(q.scheme.as_deref()),
    ) {
        (Ok(v), Ok(s)) => (v, s),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let days = q.days.unwrap_or(56);
    if days == 0 || days > MAX_DAYS {
        let msg = format!("days lies between 1 and {MAX_DAYS}\n");
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    let datasets: Vec<String> = match &q.dataset {
        Some(d) if !s.datasets.contains(d) => {
            let msg = format!(
                "unknown dataset {d}; datasets are {}\n",
                s.datasets.join(", ")
            );
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
        Some(d) => vec![d.clone()],
        None => s.datasets.clone(),
    };
    let statuses = match statuses(&s, view, days).await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let Some(row) = statuses
        .last()
        .and_then(|(_, st)| history::row(st, &code, scheme))
    else {
        return no_province(&code, view, scheme);
    };
    let series = datasets
        .iter()
        .filter_map(|d| history::series(&statuses, row, d))
        .collect();
    let (name, code) = (row.name.clone(), row.code.clone());
    Json(History {
        view,
        code,
        name,
        days,
        series,
    })
    .into_response()
}

/// What the figures were at the end of each of the last `days` days, in `view`; else the
/// answer to give.
pub(super) async fn statuses(
    s: &AppState,
    view: View,
    days: usize,
) -> Result<Vec<(i64, crate::status::Status)>, Response> {
    let now = s.clock.now();
    let read = async {
        let snap = s.store.snapshot(now).await?;
        let daily = s.store.daily(now, days).await?;
        Ok::<_, crate::store::StoreError>((snap, daily))
    };
    match read.await {
        Ok((snap, daily)) => Ok(history::statuses(
            &snap,
            &daily,
            &s.targets,
            &s.datasets,
            view,
            days,
        )),
        Err(error) => {
            tracing::warn!(%error, "cannot read history");
            let msg = format!("figures unavailable: {error}\n");
            Err((StatusCode::SERVICE_UNAVAILABLE, msg).into_response())
        }
    }
}

/// `?scheme=`: which unit table a code is of, when the view has rows of both.
pub(super) fn parse_scheme(
    scheme: Option<&str>,
) -> Result<Option<&'static str>, (StatusCode, String)> {
    match scheme {
        None => Ok(None),
        Some("34") => Ok(Some("34")),
        Some("63") => Ok(Some("63")),
        Some(other) => Err((
            StatusCode::BAD_REQUEST,
            format!("scheme must be 34 or 63, not {other}\n"),
        )),
    }
}

pub(super) fn no_province(code: &str, view: View, scheme: Option<&str>) -> Response {
    let msg = match scheme {
        Some(s) if s != view.tag() => format!(
            "no province {code} of the {s}-unit table with figures in the {}-unit view\n",
            view.tag()
        ),
        _ => format!("no province {code} in the {}-unit table\n", view.tag()),
    };
    (StatusCode::NOT_FOUND, msg).into_response()
}
