//! `/api/v1/provinces`: each province's figures and targets (a [`Status`] row), the pace and
//! projection the rules see, and its alert states, sorted by risk (most at risk first).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::AppState;
use crate::rules::ledger::LedgerError;
use crate::rules::state::Phase;
use crate::rules::{evaluate, Rule, Severity};
use crate::status::{ProvinceStatus, Status, View};

#[derive(Debug, Serialize)]
pub struct Provinces {
    pub as_of: DateTime<Utc>,
    pub view: View,
    pub datasets: Vec<String>,
    /// Provinces with a firing alert, by their worst severity.
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
    pub alerts: Vec<AlertView>,
}

#[derive(Debug, Serialize)]
pub struct Pace {
    pub pace_7d: f64,
    pub pace_needed: Option<f64>,
    pub days_left: Option<f64>,
    pub projected: Option<NaiveDate>,
}

#[derive(Debug, Serialize)]
pub struct AlertView {
    pub key: String,
    pub rule: Rule,
    /// Empty for procedure rules.
    pub dataset: String,
    pub severity: Severity,
    pub phase: Phase,
    pub since: DateTime<Utc>,
}

pub async fn build(s: &AppState, view: View) -> Result<Provinces, LedgerError> {
    let now = s.clock.now();
    let snap = s.store.snapshot(now).await?;
    let status = Status::build(&snap, &s.targets, &s.datasets, view);
    let eval = evaluate(&status, now, &s.alerts.rules);
    let read = s.ledger.read().await?;
    let tag = view.tag();
    let mut alerts: BTreeMap<String, Vec<AlertView>> = BTreeMap::new();
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
        if scheme != tag {
            continue;
        }
        alerts.entry(code.to_string()).or_default().push(AlertView {
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
        });
    }
    let mut firing: BTreeMap<&'static str, usize> = BTreeMap::new();
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
            let alerts = alerts.remove(&row.code).unwrap_or_default();
            let worst = alerts
                .iter()
                .filter(|a| matches!(a.phase, Phase::Firing | Phase::Resolving))
                .map(|a| a.severity)
                .max();
            if let Some(w) = worst {
                *firing.entry(w.as_str()).or_default() += 1;
            }
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
                alerts,
            }
        })
        .collect();
    provinces.sort_by(|a, b| {
        b.risk
            .total_cmp(&a.risk)
            .then_with(|| a.status.name.cmp(&b.status.name))
    });
    Ok(Provinces {
        as_of: now,
        view,
        datasets: status.datasets,
        firing,
        provinces,
        national: status.national,
    })
}
