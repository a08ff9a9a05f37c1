//! Progress over time, from the day buckets (kept 400 days): what a province had done at the
//! end of each Vietnam calendar day, what each day added, and the share of its target. The
//! figures of a past day are today's less what later days added ([`Snapshot::at_end_of`]),
//! read through the same [`Status`] as the live ones, so both unit views, legacy codes folded
//! and targets work the same way.

use chrono::{NaiveDate, TimeZone};
use serde::Serialize;

use crate::buckets::Tier;
use crate::clock::vn_offset;
use crate::provinces::View;
use crate::status::{ProvinceStatus, Status};
use crate::store::{Daily, Snapshot};
use crate::targets::Targets;

/// Longest series served: the day buckets' retention.
pub const MAX_DAYS: usize = 400;

/// One day of one province's dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub day: NaiveDate,
    /// Records done by the end of the day.
    pub total: i64,
    /// Records that day.
    pub added: i64,
    /// Of the target, at the end of the day.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// A province's daily series for one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub scheme: &'static str,
    pub code: String,
    pub name: String,
    pub dataset: String,
    pub target: Option<u64>,
    pub deadline: Option<NaiveDate>,
    pub points: Vec<Point>,
}

/// The calendar day (Vietnam time) of a day bucket.
pub fn date(day: i64) -> NaiveDate {
    vn_offset()
        .timestamp_opt(Tier::Day.start(day), 0)
        .single()
        .expect("in range")
        .date_naive()
}

/// What the figures were at the end of each of the last `days` days (today last), read in
/// `view`. `daily` must cover those days and, for their windows, the 30 days before.
pub fn statuses(
    snap: &Snapshot,
    daily: &Daily,
    targets: &Targets,
    datasets: &[String],
    view: View,
    days: usize,
) -> Vec<(i64, Status)> {
    let today = daily.last() - 1; // the last day held is tomorrow
    snap.at_ends_of(daily, today + 1 - days as i64, today)
        .into_iter()
        .map(|(d, past)| (d, Status::build(&past, targets, datasets, view)))
        .collect()
}

/// The row of `code` in a status, of `scheme`'s table ("34" or "63") or else the view's own
/// first: a 63-unit view also has rows for events reported with 34-unit codes, and those
/// codes are old provinces' too (the 34-unit Lào Cai is 15, the old Yên Bái's code).
pub fn row<'a>(status: &'a Status, code: &str, scheme: Option<&str>) -> Option<&'a ProvinceStatus> {
    let of = |s: &str| {
        status
            .provinces
            .iter()
            .find(|r| r.code == code && r.scheme == s)
    };
    match scheme {
        Some(s) => of(s),
        None => of(status.view.tag()).or_else(|| status.provinces.iter().find(|r| r.code == code)),
    }
}

/// The series of `row` (a row of the last status) for `dataset` over the days of `statuses`.
pub fn series(statuses: &[(i64, Status)], row: &ProvinceStatus, dataset: &str) -> Option<Series> {
    let d = row.datasets.get(dataset)?;
    let points = statuses
        .iter()
        .map(|(day, status)| {
            // The same unit's row that day (every row of a table is always there; a row of
            // the other table only once it has figures).
            let then = status
                .provinces
                .iter()
                .find(|r| r.code == row.code && r.scheme == row.scheme)
                .and_then(|r| r.datasets.get(dataset));
            Point {
                day: date(*day),
                total: then.map_or(0, |t| t.total),
                added: then
                    .and_then(|t| t.windows.get("24h").copied())
                    .unwrap_or(0),
                percent: then.and_then(|t| t.percent),
            }
        })
        .collect();
    Some(Series {
        scheme: row.scheme,
        code: row.code.clone(),
        name: row.name.clone(),
        dataset: dataset.to_string(),
        target: d.target,
        deadline: d.deadline,
        points,
    })
}
