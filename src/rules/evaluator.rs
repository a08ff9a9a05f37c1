//! The periodic evaluation: read the figures, find what holds, step every alert's state, and
//! commit the new states with the digests to send, all against the ledger's generation (see
//! [`super::ledger`]). Any number of replicas may run it; time comes from the injected clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::ledger::{Commit, Digest, Ledger, LedgerError, Notice};
use super::state::{step, Change, Phase, Timing};
use super::{evaluate, Evaluation, Rule, Severity};
use crate::clock::SharedClock;
use crate::config::AlertSettings;
use crate::status::Status;
use crate::store::Store;
use crate::targets::Targets;
use crate::telemetry;

/// Name of the outbox the Kafka alerts topic is fed from.
pub const KAFKA_OUTBOX: &str = "kafka";

/// Commit attempts before an evaluation gives up until the next tick.
const ATTEMPTS: usize = 5;

pub struct Evaluator {
    store: Store,
    ledger: Ledger,
    targets: Targets,
    datasets: Vec<String>,
    settings: AlertSettings,
    clock: SharedClock,
    /// Whether the Kafka alerts topic gets every notice, silenced ones included.
    kafka: bool,
}

/// What one evaluation did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Notices this evaluator committed (empty if another replica got there first).
    pub notices: Vec<Notice>,
}

impl Evaluator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        ledger: Ledger,
        targets: Targets,
        datasets: Vec<String>,
        settings: AlertSettings,
        clock: SharedClock,
        kafka: bool,
    ) -> Evaluator {
        Evaluator {
            store,
            ledger,
            targets,
            datasets,
            settings,
            clock,
            kafka,
        }
    }

    /// Evaluates every `alerts.interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.evaluate_once().await {
                Ok(out) => {
                    backoff = Duration::from_millis(200);
                    if let Err(error) = self.ledger.prune_silences(self.clock.now()).await {
                        tracing::debug!(%error, "ended silences not pruned");
                    }
                    for n in &out.notices {
                        tracing::info!(
                            alert = n.alert_key,
                            change = n.change.as_str(),
                            severity = n.severity.as_str(),
                            silenced = n.silenced_by.is_some(),
                            "alert transition"
                        );
                    }
                }
                Err(error) => {
                    metrics::counter!(telemetry::ALERT_EVALUATIONS, "outcome" => "error")
                        .increment(1);
                    tracing::warn!(%error, "alert evaluation failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.settings.interval);
                }
            }
        }
    }

    /// One evaluation at the clock's now, retried if another replica commits first.
    pub async fn evaluate_once(&self) -> Result<Outcome, LedgerError> {
        for _ in 0..ATTEMPTS {
            let now = self.clock.now();
            let read = self.ledger.read().await?;
            let snap = self.store.snapshot(now).await?;
            let status = Status::build(&snap, &self.targets, &self.datasets, self.settings.view);
            let eval = evaluate(&status, now, &self.settings.rules);
            publish_figures(&eval);
            let commit = self.plan(&read, &eval, now);
            let firing = firing(&read.states, &commit);
            if commit.states.is_empty() && commit.notices.is_empty() {
                metrics::counter!(telemetry::ALERT_EVALUATIONS, "outcome" => "unchanged")
                    .increment(1);
                publish_firing(&firing);
                return Ok(Outcome {
                    notices: Vec::new(),
                });
            }
            if self.ledger.commit(read.generation, &commit).await? {
                metrics::counter!(telemetry::ALERT_EVALUATIONS, "outcome" => "committed")
                    .increment(1);
                for n in &commit.notices {
                    metrics::counter!(
                        telemetry::ALERT_TRANSITIONS,
                        "rule" => n.rule.as_str(),
                        "change" => n.change.as_str()
                    )
                    .increment(1);
                    if n.silenced_by.is_some() {
                        metrics::counter!(telemetry::NOTIFICATIONS_SILENCED, "rule" => n.rule.as_str())
                            .increment(1);
                    }
                }
                publish_firing(&firing);
                return Ok(Outcome {
                    notices: commit.notices,
                });
            }
            metrics::counter!(telemetry::ALERT_EVALUATIONS, "outcome" => "conflict").increment(1);
        }
        Ok(Outcome::default())
    }

    /// New states and notices from what held at `now`.
    fn plan(&self, read: &super::ledger::Read, eval: &Evaluation, now: DateTime<Utc>) -> Commit {
        let timing = Timing {
            pending_for: chrono::Duration::from_std(self.settings.rules.pending_for)
                .unwrap_or_default(),
            clear_for: chrono::Duration::from_std(self.settings.rules.clear_for)
                .unwrap_or_default(),
            repeat_interval: chrono::Duration::from_std(self.settings.repeat_interval)
                .unwrap_or_default(),
        };
        let found: BTreeMap<&str, &super::Finding> =
            eval.findings.iter().map(|f| (f.key.as_str(), f)).collect();
        let keys: BTreeSet<&str> = found
            .keys()
            .copied()
            .chain(read.states.keys().map(String::as_str))
            .collect();
        let mut commit = Commit::default();
        for key in keys {
            let prev = read.states.get(key);
            let finding = found.get(key).copied();
            let (next, change) = step(prev, finding, now, &timing);
            if next.as_ref() != prev {
                commit.states.insert(key.to_string(), next.clone());
            }
            let Some(change) = change else { continue };
            let (subject, facts) = match (finding, eval.about(key)) {
                (_, Some((s, f))) => (s.clone(), f.clone()),
                (Some(f), None) => (f.subject.clone(), Default::default()),
                (None, None) => continue, // a subject no longer evaluated (target removed)
            };
            let rule = finding
                .map(|f| f.rule)
                .or_else(|| key.rsplit(':').next().and_then(Rule::parse))
                .unwrap_or(Rule::Silent);
            let severity = match change {
                Change::Resolved => prev.map(|p| p.severity).unwrap_or(Severity::Info),
                _ => next.as_ref().map(|s| s.severity).unwrap_or(Severity::Info),
            };
            let mut notice = Notice {
                id: format!("{key}@{}", now.timestamp_millis()),
                alert_key: key.to_string(),
                rule,
                severity,
                change,
                subject,
                facts,
                at: now,
                silenced_by: None,
            };
            notice.silenced_by = read
                .silences
                .iter()
                .find(|s| s.matches(&notice, now))
                .map(|s| s.id.clone());
            commit.notices.push(notice);
        }
        if !commit.notices.is_empty() {
            let id = format!("{}-{}", read.generation + 1, now.timestamp_millis());
            let loud: Vec<Notice> = commit
                .notices
                .iter()
                .filter(|n| n.silenced_by.is_none())
                .cloned()
                .collect();
            if !loud.is_empty() {
                // Each chat receiver gets a digest of every unsilenced notice.
                for outbox in self.settings.receivers.keys() {
                    let digest = Digest {
                        id: format!("{outbox}-{id}"),
                        at: now,
                        notices: loud.clone(),
                    };
                    commit.digests.push((outbox.clone(), digest));
                }
            }
            if self.kafka {
                let digest = Digest {
                    id: format!("{KAFKA_OUTBOX}-{id}"),
                    at: now,
                    notices: commit.notices.clone(),
                };
                commit.digests.push((KAFKA_OUTBOX.to_string(), digest));
            }
        }
        commit
    }
}

fn firing(
    before: &BTreeMap<String, super::state::AlertState>,
    commit: &Commit,
) -> BTreeMap<(Rule, Severity), u64> {
    let mut out = BTreeMap::new();
    let after = before
        .iter()
        .filter(|(k, _)| !commit.states.contains_key(*k))
        .map(|(k, s)| (k.as_str(), Some(s)))
        .chain(commit.states.iter().map(|(k, s)| (k.as_str(), s.as_ref())));
    for (key, state) in after {
        let Some(state) = state else { continue };
        if !matches!(state.phase, Phase::Firing | Phase::Resolving) {
            continue;
        }
        if let Some(rule) = key.rsplit(':').next().and_then(Rule::parse) {
            *out.entry((rule, state.severity)).or_default() += 1;
        }
    }
    out
}

fn publish_firing(firing: &BTreeMap<(Rule, Severity), u64>) {
    for rule in Rule::ALL {
        for severity in [Severity::Info, Severity::Warning, Severity::Critical] {
            let n = firing.get(&(rule, severity)).copied().unwrap_or(0);
            metrics::gauge!(
                telemetry::ALERTS_FIRING,
                "rule" => rule.as_str(),
                "severity" => severity.as_str()
            )
            .set(n as f64);
        }
    }
}

/// The business gauges: what each province's figures look like to the rules. Labels come
/// from the code table and the configured datasets only, never from event contents.
fn publish_figures(eval: &Evaluation) {
    for (subject, f) in eval.facts.values() {
        let (code, name) = (subject.code.clone(), subject.name.clone());
        if subject.dataset.is_empty() {
            if let Some(share) = f.online_share {
                metrics::gauge!(telemetry::ONLINE_SHARE, "province" => code, "name" => name)
                    .set(share);
            }
            continue;
        }
        let labels = [
            ("province", code),
            ("name", name),
            ("dataset", subject.dataset.clone()),
        ];
        if let Some(p) = f.percent {
            metrics::gauge!(telemetry::PROGRESS, &labels).set(p / 100.0);
        }
        metrics::gauge!(telemetry::PACE, &labels).set(f.pace_7d);
        metrics::gauge!(telemetry::NEEDED_PACE, &labels).set(f.pace_needed.unwrap_or(0.0));
        if let Some(d) = f.days_left {
            metrics::gauge!(telemetry::DAYS_LEFT, &labels).set(d);
        }
    }
}
