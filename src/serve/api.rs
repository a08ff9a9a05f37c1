//! `/api/v1/provinces`: each province's figures and targets (a [`Status`] row), the pace and
//! projection the rules see, and its alert states, sorted by risk (most at risk first), with
//! whether the figures are current.
//!
//! Alerts live in the table of `alerts.view`. A row of the other table shows the alerts of the
//! unit it belongs to (a 63-unit row, those of the 34-unit unit that absorbed it; a 34-unit
//! row, those of the 63-unit units it absorbed), marked with where they come from, so neither
//! view is silent while alerts fire.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::AppState;
use crate::catchup::Currency;
use crate::provinces::{provinces, Scheme};
use crate::rules::ledger::LedgerError;
use crate::rules::state::Phase;
use crate::rules::{evaluate, Rule, Severity};
use crate::status::{ProvinceStatus, Status, View};

#[derive(Debug, Serialize)]
pub struct Provinces {
    pub as_of: DateTime<Utc>,
    pub view: View,
    /// Whether Redis holds what the event topics hold; while not, alerts are held. `None`
    /// where this process cannot tell (no Kafka to ask).
    pub figures: Option<Currency>,
    pub datasets: Vec<String>,
    /// Units of `alerts.view`'s table with a firing alert, by their worst severity.
    pub firing: BTreeMap<&'static str, usize>,
    pub provinces: Vec<ProvinceView>,
    pub national: ProvinceStatus,
}

#[derive(Debug, Serialize)]
pub struct ProvinceView {
    #[serde(flatten)]
    pub status: ProvinceStatus,
    /// Higher is worse: firing severity first, then how far behind the furthest-behind
    /// dataset is.
    pub risk: f64,
    /// What the rules see per dataset with a target.
    pub pace: BTreeMap<String, Pace>,
    /// Records added in each of the last [`WEEKS`] weeks (oldest first, the week to now
    /// last), per dataset with figures: the page's sparklines.
    pub weeks: BTreeMap<String, Vec<i64>>,
    pub alerts: Vec<AlertView>,
}

#[derive(Debug, Serialize)]
pub struct Pace {
    pub pace_7d: f64,
    pub pace_needed: Option<f64>,
    pub days_left: Option<f64>,
    pub projected: Option<NaiveDate>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    pub key: String,
    pub rule: Rule,
    /// Empty for procedure rules.
    pub dataset: String,
    pub severity: Severity,
    pub phase: Phase,
    pub since: DateTime<Utc>,
    /// Held firing because it flapped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
    /// For an alert of another unit table: that unit, as `scheme:code`, and its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Via {
    pub unit: String,
    pub name: String,
}

/// Weeks of sparkline.
pub const WEEKS: usize = 8;

/// Each row's total per dataset, by (scheme, code).
type Totals = BTreeMap<(&'static str, String), BTreeMap<String, i64>>;

pub async fn build(s: &AppState, view: View) -> Result<Provinces, LedgerError> {
    let now = s.clock.now();
    let snap = s.store.snapshot(now).await?;
    let status = Status::build(&snap, &s.targets, &s.datasets, view);
    // Totals at the end of today and of the same weekday in each of the weeks before.
    let daily = s.store.daily(now, 7 * WEEKS + 1).await?;
    let today = daily.last() - 1;
    let ends: Vec<Totals> = (0..=WEEKS as i64)
        .rev()
        .map(|w| {
            let past = snap.at_end_of(&daily, today - 7 * w);
            Status::build(&past, &s.targets, &s.datasets, view)
                .provinces
                .into_iter()
                .map(|r| {
                    let totals = r
                        .datasets
                        .iter()
                        .map(|(d, f)| (d.clone(), f.total))
                        .collect();
                    ((r.scheme, r.code), totals)
                })
                .collect()
        })
        .collect();
    let eval = evaluate(&status, now, &s.alerts.rules);
    let read = s.ledger.read().await?;
    let figures = match &s.watch {
        Some(w) => Some(w.recent(std::time::Duration::from_secs(10), now).await),
        None => None,
    };
    // Alert states by unit, in the table of `alerts.view`.
    let mut by_unit: BTreeMap<(String, String), Vec<AlertView>> = BTreeMap::new();
    for (key, state) in &read.states {
        let mut parts = key.split(':');
        let (Some(scheme), Some(code), Some(what), Some(rule)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(rule) = Rule::parse(rule) else {
            continue;
        };
        if rule.route() != crate::rules::Route::Taskforce {
            continue; // feeds: `tiendo sources` and /api/v1/sources
        }
        if state.phase == Phase::Resolved {
            continue; // kept only for flap damping
        }
        by_unit
            .entry((scheme.to_string(), code.to_string()))
            .or_default()
            .push(AlertView {
                key: key.clone(),
                rule,
                dataset: if what == "procedures" {
                    String::new()
                } else {
                    what.to_string()
                },
                severity: state.severity,
                phase: state.phase,
                since: state.since,
                flapping: state.flapping,
                via: None,
            });
    }
    let alerts_of = |scheme: &str, code: &str| -> Vec<AlertView> {
        if scheme == s.alerts.view.tag() {
            return by_unit
                .get(&(scheme.to_string(), code.to_string()))
                .cloned()
                .unwrap_or_default();
        }
        let table = provinces();
        let Ok(code) = code.parse::<u8>() else {
            return Vec::new();
        };
        // The units of the alerts' table this row belongs to.
        let units: Vec<u8> = match s.alerts.view.scheme() {
            Scheme::Current34 => table
                .get(Scheme::Legacy63, code)
                .map(|p| vec![p.current_code])
                .unwrap_or_default(),
            Scheme::Legacy63 => table.members(code).collect(),
        };
        let tag = s.alerts.view.tag();
        units
            .into_iter()
            .flat_map(|u| {
                let unit = format!("{u:02}");
                let via = Via {
                    unit: format!("{tag}:{unit}"),
                    name: table
                        .get(s.alerts.view.scheme(), u)
                        .map(|p| p.name_vi.clone())
                        .unwrap_or_default(),
                };
                by_unit
                    .get(&(tag.to_string(), unit))
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |mut a| {
                        a.via = Some(via.clone());
                        a
                    })
            })
            .collect()
    };
    // Worst firing severity per unit of the alerts' table (a unit may show on several rows).
    let mut worst_by_unit: BTreeMap<String, Severity> = BTreeMap::new();
    let mut provinces: Vec<ProvinceView> = status
        .provinces
        .into_iter()
        .map(|row| {
            let mut pace = BTreeMap::new();
            for name in row.datasets.keys() {
                let key = format!("{}:{}:{}", row.scheme, row.code, name);
                if let Some((_, f)) = eval.facts.get(&key) {
                    pace.insert(
                        name.clone(),
                        Pace {
                            pace_7d: f.pace_7d,
                            pace_needed: f.pace_needed,
                            days_left: f.days_left,
                            projected: f.projected,
                        },
                    );
                }
            }
            let key = (row.scheme, row.code.clone());
            let weeks = row
                .datasets
                .iter()
                .filter(|(_, d)| d.total > 0 || d.target.is_some())
                .map(|(name, _)| {
                    let at = |end: &Totals| {
                        end.get(&key)
                            .and_then(|t| t.get(name))
                            .copied()
                            .unwrap_or(0)
                    };
                    let added = ends.windows(2).map(|w| at(&w[1]) - at(&w[0])).collect();
                    (name.clone(), added)
                })
                .collect();
            let alerts = alerts_of(row.scheme, &row.code);
            for a in alerts.iter().filter(|a| a.phase.active()) {
                let unit = a.via.as_ref().map_or_else(
                    || format!("{}:{}", row.scheme, row.code),
                    |v| v.unit.clone(),
                );
                let w = worst_by_unit.entry(unit).or_insert(a.severity);
                *w = (*w).max(a.severity);
            }
            let worst = alerts
                .iter()
                .filter(|a| a.phase.active())
                .map(|a| a.severity)
                .max();
            let behind = row
                .datasets
                .values()
                .filter_map(|d| d.percent)
                .map(|p| (100.0 - p).clamp(0.0, 100.0))
                .fold(0.0, f64::max);
            let rank = match worst {
                Some(Severity::Critical) => 3.0,
                Some(Severity::Warning) => 2.0,
                Some(Severity::Info) | None => 0.0,
            };
            ProvinceView {
                risk: rank * 1000.0 + behind,
                status: row,
                pace,
                weeks,
                alerts,
            }
        })
        .collect();
    let mut firing: BTreeMap<&'static str, usize> = BTreeMap::new();
    for w in worst_by_unit.values() {
        *firing.entry(w.as_str()).or_default() += 1;
    }
    provinces.sort_by(|a, b| {
        b.risk
            .total_cmp(&a.risk)
            .then_with(|| a.status.name.cmp(&b.status.name))
    });
    Ok(Provinces {
        as_of: now,
        view,
        figures,
        datasets: status.datasets,
        firing,
        provinces,
        national: status.national,
    })
}
