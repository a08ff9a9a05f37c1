//! `/province/{code}?view=34|63&days=…&scheme=34|63`: one province's page, drawn on the server. Per dataset
//! a chart of records done by the end of each day, with the target as a dashed line, from the
//! day buckets ([`crate::history`]); inline SVG, no script, no external assets.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};

use super::history::{parse_scheme, HistoryQuery};
use super::{parse_view, AppState};
use crate::config::Language;
use crate::history::{self, Series, MAX_DAYS};
use crate::notify::message::{dataset_name, number};

/// Days shown when the link does not say.
const DEFAULT_DAYS: usize = 180;
const W: f64 = 640.0;
const H: f64 = 240.0;
/// Room for the axis labels.
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 22.0;

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
    let days = q.days.unwrap_or(DEFAULT_DAYS).clamp(2, MAX_DAYS);
    let statuses = match super::history::statuses(&s, view, days).await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let Some(row) = statuses
        .last()
        .and_then(|(_, st)| history::row(st, &code, scheme))
    else {
        return super::history::no_province(&code, view, scheme);
    };
    let (name, code, table) = (row.name.clone(), row.code.clone(), row.scheme);
    let mut body = String::new();
    for d in &s.datasets {
        let Some(series) = history::series(&statuses, row, d) else {
            continue;
        };
        if series.target.is_none() && series.points.iter().all(|p| p.total == 0) {
            continue;
        }
        let _ = write!(
            body,
            "<section><h2>{}</h2>{}</section>",
            esc(&dataset_name(d, Language::Vi)),
            chart(&series)
        );
    }
    if body.is_empty() {
        body.push_str("<p>Chưa có số liệu.</p>");
    }
    Html(format!(
        "<!doctype html><html lang=\"vi\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · tiendo</title><style>\
         body{{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:760px;padding:12px 16px;color:#1c2430}}\
         h1{{font-size:20px;margin:4px 0}}h2{{font-size:16px;margin:22px 0 6px}}\
         svg{{width:100%;height:auto;background:#fff}}a{{color:#1565c0}}\
         .meta{{color:#5d6b7a;font-size:13px}}\
         </style></head><body><a href=\"../?view={tag}\">← Tất cả tỉnh, thành</a>\
         <h1>{title}</h1><p class=\"meta\">Mã {code} · bảng {table} tỉnh · {days} ngày gần nhất, \
         số bản ghi đã số hóa đến hết mỗi ngày (giờ VN)</p>{body}</body></html>\n",
        title = esc(&name),
        tag = view.tag(),
    ))
    .into_response()
}

/// Records done by the end of each day (a line) and the target (a dashed line).
fn chart(s: &Series) -> String {
    let last = s.points.last().map_or(0, |p| p.total).max(0) as f64;
    let top = (s.target.unwrap_or(0) as f64).max(last).max(1.0) * 1.08;
    let n = s.points.len().max(2) - 1;
    let x = |i: usize| LEFT + (W - LEFT - 8.0) * i as f64 / n as f64;
    let y = |v: f64| (H - BOTTOM) - (H - BOTTOM - 8.0) * v / top;
    let points: Vec<String> = s
        .points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.total as f64)))
        .collect();
    let mut svg = format!(
        "<svg class=\"history\" data-dataset=\"{ds}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{label}\"><line x1=\"{LEFT}\" y1=\"{base:.1}\" x2=\"{right}\" y2=\"{base:.1}\" \
         stroke=\"#90a4ae\"/>",
        ds = esc(&s.dataset),
        label = esc(&format!("{} theo ngày", dataset_name(&s.dataset, Language::Vi))),
        base = y(0.0),
        right = W - 8.0,
    );
    if let Some(target) = s.target {
        let ty = y(target as f64);
        let _ = write!(
            svg,
            "<line class=\"target\" data-target=\"{target}\" x1=\"{LEFT}\" y1=\"{ty:.1}\" x2=\"{right}\" \
             y2=\"{ty:.1}\" stroke=\"#c62828\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{LEFT}\" y=\"{ly:.1}\" font-size=\"12\" fill=\"#c62828\">Chỉ tiêu {t}{deadline}</text>",
            right = W - 8.0,
            ly = ty - 5.0,
            t = number(target as f64, Language::Vi),
            deadline = s
                .deadline
                .map(|d| format!(" · hạn {}", d.format("%d/%m/%Y")))
                .unwrap_or_default(),
        );
    }
    let _ = write!(
        svg,
        "<polyline class=\"total\" data-points=\"{count}\" points=\"{pts}\" fill=\"none\" \
         stroke=\"#1565c0\" stroke-width=\"2.5\"/>\
         <text x=\"{lx}\" y=\"{ty:.1}\" font-size=\"12\" text-anchor=\"end\" fill=\"#5d6b7a\">{max}</text>\
         <text x=\"{lx}\" y=\"{by:.1}\" font-size=\"12\" text-anchor=\"end\" fill=\"#5d6b7a\">0</text>",
        count = s.points.len(),
        pts = points.join(" "),
        lx = LEFT - 6.0,
        ty = y(top / 1.08) + 4.0,
        max = number(top / 1.08, Language::Vi),
        by = y(0.0) + 4.0,
    );
    if let (Some(first), Some(last)) = (s.points.first(), s.points.last()) {
        let _ = write!(
            svg,
            "<text x=\"{LEFT}\" y=\"{H}\" font-size=\"12\" fill=\"#5d6b7a\">{}</text>\
             <text x=\"{r}\" y=\"{H}\" font-size=\"12\" text-anchor=\"end\" fill=\"#5d6b7a\">{}</text>",
            first.day.format("%d/%m/%Y"),
            last.day.format("%d/%m/%Y"),
            r = W - 8.0,
        );
    }
    svg.push_str("</svg>");
    let now = s.points.last().map(|p| (p.total, p.percent));
    if let Some((total, percent)) = now {
        let _ = write!(
            svg,
            "<p class=\"meta\">Đến nay {}{}</p>",
            number(total as f64, Language::Vi),
            percent
                .map(|p| format!(
                    " · {} chỉ tiêu",
                    crate::notify::message::percent(p, Language::Vi)
                ))
                .unwrap_or_default()
        );
    }
    svg
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
