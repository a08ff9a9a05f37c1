//! The periodic evaluation: check that the figures are current, read them, find what holds,
//! step every alert's state, and commit the new states with the digests to send, all against
//! the ledger's generation (see [`super::ledger`]). Any number of replicas may run it; time
//! comes from the injected clock.
//!
//! While the figures are catching up ([`crate::catchup`]) nothing is evaluated: no alert
//! fires or resolves, states hold. The first evaluation of a deployment, and the first after
//! figures were catching up, tell chat receivers the whole picture in one summary instead of
//! a line per alert; at the first, rules that hold fire at once (the figures are complete, so
//! there is nothing to wait out). Only a hold of two evaluation intervals or more is summed up
//! after: a replica just started notes the log's ends at its first check and is not current
//! until it sees Redis reach them, a moment later, and a rolling update should not turn the
//! next alerts into a "figures complete again" summary.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::ledger::{
    Commit, Digest, Ledger, LedgerError, Notice, Occasion, Read, Summary, Tally, HELD, STARTED,
};
use super::state::{step, AlertState, Change, Phase, Timing};
use super::{evaluate_holding, evaluate_sources, Evaluation, Route, Rule, Severity, Subject};
use crate::catchup::{Currency, Watch};
use crate::clock::SharedClock;
use crate::config::{AlertSettings, ReceiverSettings, SourceSettings, KAFKA_OUTBOX};
use crate::status::Status;
use crate::store::Store;
use crate::targets::Targets;
use crate::telemetry;

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
    /// Whether the figures are current; without one they are taken to be (tests that feed
    /// Redis directly).
    watch: Option<Watch>,
    /// Upstream source systems, watched for route `ops` (see [`super::evaluate_sources`]).
    sources: Option<SourceSettings>,
}

/// What one evaluation did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Notices this evaluator committed (empty if another replica got there first).
    pub notices: Vec<Notice>,
    /// The digest every chat receiver of route `taskforce` gets from this evaluation, if any.
    pub chat: Option<Digest>,
    /// The digest receivers of route `ops` get: source systems' notices.
    pub ops: Option<Digest>,
    /// Set when the figures were not current, so nothing was evaluated.
    pub held: Option<Currency>,
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
            watch: None,
            sources: None,
        }
    }

    /// Also watches the upstream source systems, for receivers of route `ops`.
    pub fn with_sources(mut self, settings: SourceSettings) -> Evaluator {
        self.sources = Some(settings);
        self
    }

    /// Evaluates only while `watch` says the figures are current.
    pub fn with_watch(mut self, watch: Watch) -> Evaluator {
        self.watch = Some(watch);
        self
    }

    /// Evaluates every `alerts.interval` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(200);
        let mut was_held = false;
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
                    match (&out.held, was_held) {
                        (Some(c), false) => tracing::warn!(
                            behind = c.behind,
                            unknown = c.unknown,
                            reason = c.reason.as_deref().unwrap_or(""),
                            "figures not current: alerts held"
                        ),
                        (None, true) => tracing::info!("figures current: alerts evaluated again"),
                        _ => {}
                    }
                    was_held = out.held.is_some();
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
            // Asked before the ledger is read: with Redis down that read fails, and the check
            // is what sets the figures' gauge to "not current".
            let currency = match &self.watch {
                Some(watch) => Some(watch.check(now).await),
                None => None,
            };
            let read = self.ledger.read().await?;
            if let Some(currency) = currency {
                if !currency.current {
                    // Remember when the hold began, so that the next evaluation can sum up.
                    if read.held_since.is_none() {
                        let hold = Commit {
                            meta: vec![(HELD, Some(now.to_rfc3339()))],
                            ..Commit::default()
                        };
                        if !self.ledger.commit(read.generation, &hold).await? {
                            continue;
                        }
                    }
                    metrics::counter!(telemetry::ALERT_EVALUATIONS, "outcome" => "held")
                        .increment(1);
                    publish_firing(&firing(&read.states, &Commit::default()));
                    return Ok(Outcome {
                        held: Some(currency),
                        ..Outcome::default()
                    });
                }
            }
            let snap = self.store.snapshot(now).await?;
            let status = Status::build(&snap, &self.targets, &self.datasets, self.settings.view);
            let active: BTreeMap<String, Severity> = read
                .states
                .iter()
                .filter(|(_, s)| s.phase.active())
                .map(|(k, s)| (k.clone(), s.severity))
                .collect();
            let mut eval = evaluate_holding(&status, now, &self.settings.rules, &active);
            if let Some(sources) = &self.sources {
                let stored = self.store.sources(now).await?;
                let views = crate::sources::view(&sources.known, &stored, sources.quiet_after, now);
                evaluate_sources(&views, sources, &active, &mut eval);
            }
            publish_figures(&eval);
            let grace = chrono::Duration::from_std(self.settings.interval * 2).unwrap_or_default();
            let occasion = if !read.started {
                Some(Occasion::Started)
            } else if read.held_since.is_some_and(|since| now - since >= grace) {
                Some(Occasion::Resumed)
            } else {
                None
            };
            let (commit, chat, ops) = self.plan(&read, &eval, now, occasion);
            let firing = firing(&read.states, &commit);
            if commit.is_empty() {
                metrics::counter!(telemetry::ALERT_EVALUATIONS, "outcome" => "unchanged")
                    .increment(1);
                publish_firing(&firing);
                return Ok(Outcome::default());
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
                    chat,
                    ops,
                    held: None,
                });
            }
            metrics::counter!(telemetry::ALERT_EVALUATIONS, "outcome" => "conflict").increment(1);
        }
        Ok(Outcome::default())
    }

    fn timing(&self, occasion: Option<Occasion>) -> Timing {
        let d = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
        let rules = &self.settings.rules;
        Timing {
            // At the start, what holds on complete figures is established: fire at once.
            pending_for: if occasion == Some(Occasion::Started) {
                chrono::Duration::zero()
            } else {
                d(rules.pending_for)
            },
            clear_for: d(rules.clear_for),
            repeat_interval: d(self.settings.repeat_interval),
            flap_max: rules.flap_max,
            flap_window: d(rules.flap_window),
            flap_clear_for: d(rules.flap_clear_for),
        }
    }

    /// The notice of `change` to the alert `key`, silenced where a silence matches it. A
    /// subject of `view` no longer evaluated (its target removed) is named from the key,
    /// without facts: its alert's end is told too, or the chat would think it firing still.
    /// Those of another view (`alerts.view` changed) end untold: a page of endings of what
    /// the other view's alerts carry on would say nothing new.
    #[allow(clippy::too_many_arguments)]
    fn notice(
        view: &str,
        read: &Read,
        eval: &Evaluation,
        key: &str,
        finding: Option<&super::Finding>,
        prev: Option<&AlertState>,
        next: Option<&AlertState>,
        change: Change,
        now: DateTime<Utc>,
    ) -> Option<Notice> {
        let (subject, facts) = match (finding, eval.about(key)) {
            (_, Some((s, f))) => (s.clone(), f.clone()),
            (Some(f), None) => (f.subject.clone(), Default::default()),
            (None, None) => {
                let subject = Subject::of_key(key)?;
                if subject.scheme != view && subject.scheme != super::SOURCE_SCHEME {
                    return None;
                }
                (subject, Default::default())
            }
        };
        let rule = finding
            .map(|f| f.rule)
            .or_else(|| key.rsplit(':').next().and_then(Rule::parse))
            .unwrap_or(Rule::Silent);
        let severity = match change {
            Change::Resolved | Change::Flapping => {
                prev.map(|p| p.severity).unwrap_or(Severity::Info)
            }
            _ => next.map(|s| s.severity).unwrap_or(Severity::Info),
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
        Some(notice)
    }

    /// New states, notices and digests from what held at `now`, and the digests of each
    /// route (task force, ops).
    fn plan(
        &self,
        read: &Read,
        eval: &Evaluation,
        now: DateTime<Utc>,
        occasion: Option<Occasion>,
    ) -> (Commit, Option<Digest>, Option<Digest>) {
        let timing = self.timing(occasion);
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
            let (mut next, change) = step(prev, finding, now, &timing);
            // A firing alert whose notices a silence kept from the chat is news to it once no
            // silence does, and while it still holds: else the chat's first word of it would
            // be a repeat up to a day later. Its end, or its flapping, is no news to a chat
            // that never saw it fire: kept from it, as by the silence that hid the rest.
            let unheard = prev
                .filter(|p| p.phase.active())
                .and_then(|p| p.unheard.clone());
            let announce = change.is_none()
                && unheard.is_some()
                && prev.is_some_and(|p| p.phase == Phase::Firing)
                && finding.is_some();
            let told = change.or(announce.then_some(Change::Repeated));
            let notice = told
                .and_then(|c| {
                    let view = self.settings.view.tag();
                    Self::notice(view, read, eval, key, finding, prev, next.as_ref(), c, now)
                })
                .filter(|n| change.is_some() || n.silenced_by.is_none());
            if let Some(mut n) = notice {
                if unheard.is_some() && n.silenced_by.is_none() {
                    match n.change {
                        Change::Repeated | Change::Firing { .. } => {
                            n.change = Change::Firing { previous: None };
                        }
                        Change::Resolved | Change::Flapping => n.silenced_by = unheard.clone(),
                        Change::Completed => {}
                    }
                }
                if let Some(s) = next.as_mut().filter(|s| s.phase.active()) {
                    s.unheard = n.silenced_by.clone();
                    if change.is_none() {
                        s.notified_at = Some(now);
                    }
                }
                commit.notices.push(n);
            }
            if next.as_ref() != prev {
                commit.states.insert(key.to_string(), next);
            }
        }
        if occasion == Some(Occasion::Started) {
            commit.meta.push((STARTED, Some(now.to_rfc3339())));
        }
        if read.held_since.is_some() {
            commit.meta.push((HELD, None));
        }
        let id = format!("{}-{}", read.generation + 1, now.timestamp_millis());
        let loud = |route: Route| -> Vec<Notice> {
            commit
                .notices
                .iter()
                .filter(|n| n.silenced_by.is_none() && n.rule.route() == route)
                .cloned()
                .collect()
        };
        let (loud, ops_loud) = (loud(Route::Taskforce), loud(Route::Ops));
        // The start is always announced; a return from catching up only with news. Feeds'
        // notices are ops' and stay out of the task force's summary.
        let summary = match occasion {
            Some(Occasion::Started) => Some(Occasion::Started),
            Some(Occasion::Resumed) if !loud.is_empty() => Some(Occasion::Resumed),
            _ => None,
        }
        .map(|occasion| summarize(occasion, read, &commit, now));
        let chat = (summary.is_some() || !loud.is_empty()).then(|| Digest {
            id: String::new(),
            at: now,
            notices: loud,
            summary,
            ..Digest::default()
        });
        let ops = (!ops_loud.is_empty()).then(|| Digest {
            id: String::new(),
            at: now,
            notices: ops_loud,
            ..Digest::default()
        });
        let resolved_silently: Vec<&Notice> = commit
            .notices
            .iter()
            .filter(|n| n.silenced_by.is_some() && n.change == Change::Resolved)
            .collect();
        commit.digests.extend(per_receiver(
            &self.settings.receivers,
            chat.as_ref(),
            ops.as_ref(),
            &resolved_silently,
            &id,
            now,
        ));
        if self.kafka && !commit.notices.is_empty() {
            let digest = Digest {
                id: format!("{KAFKA_OUTBOX}-{id}"),
                at: now,
                notices: commit.notices.clone(),
                summary: None,
                ..Digest::default()
            };
            commit.digests.push((KAFKA_OUTBOX.to_string(), digest));
        }
        (commit, chat, ops)
    }
}

/// What each receiver gets of one evaluation: one digest with the notices of every route it
/// takes. A receiver of both routes gets them in one message, since the budget of one message
/// per evaluation is the receiver's, not the route's. A chat also hears which of its alerts
/// a silence resolved, so that a merged backlog does not show them as firing: in a digest of
/// its own if nothing else came (queued only behind another digest; taken off unsent).
fn per_receiver(
    receivers: &BTreeMap<String, ReceiverSettings>,
    chat: Option<&Digest>,
    ops: Option<&Digest>,
    resolved_silently: &[&Notice],
    id: &str,
    now: DateTime<Utc>,
) -> Vec<(String, Digest)> {
    receivers
        .iter()
        .filter_map(|(outbox, receiver)| {
            let chat = chat.filter(|_| receiver.takes(Route::Taskforce));
            let ops = ops.filter(|_| receiver.takes(Route::Ops));
            let quiet: Vec<String> = resolved_silently
                .iter()
                .filter(|n| receiver.kind.is_chat() && receiver.takes(n.rule.route()))
                .map(|n| n.alert_key.clone())
                .collect();
            let mut digest = match (chat, ops) {
                (Some(chat), Some(ops)) => Digest {
                    id: format!("{outbox}-{id}"),
                    notices: chat.notices.iter().chain(&ops.notices).cloned().collect(),
                    ..chat.clone()
                },
                (Some(chat), None) => Digest {
                    id: format!("{outbox}-{id}"),
                    ..chat.clone()
                },
                (None, Some(ops)) => Digest {
                    id: format!("{outbox}-ops-{id}"),
                    ..ops.clone()
                },
                (None, None) if !quiet.is_empty() => Digest {
                    id: format!("{outbox}-{id}"),
                    at: now,
                    ..Digest::default()
                },
                (None, None) => return None,
            };
            digest.resolved_silently = quiet;
            Some((outbox.clone(), digest))
        })
        .collect()
}

/// Every state after `commit`.
fn after<'a>(
    before: &'a BTreeMap<String, AlertState>,
    commit: &'a Commit,
) -> impl Iterator<Item = (&'a str, &'a AlertState)> {
    before
        .iter()
        .filter(|(k, _)| !commit.states.contains_key(*k))
        .map(|(k, s)| (k.as_str(), s))
        .chain(
            commit
                .states
                .iter()
                .filter_map(|(k, s)| Some((k.as_str(), s.as_ref()?))),
        )
}

/// The parts of an alert key: scheme, code, dataset (empty for procedures), rule.
fn parse_key(key: &str) -> Option<(&str, &str, &str, Rule)> {
    let mut parts = key.split(':');
    let (scheme, code, what, rule) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let dataset = if what == "procedures" { "" } else { what };
    Some((scheme, code, dataset, Rule::parse(rule)?))
}

/// How many of the task force's alerts are active after `commit`, per rule, dataset and
/// severity; silenced ones are held back from chat, so from its summary too.
fn summarize(occasion: Occasion, read: &Read, commit: &Commit, now: DateTime<Utc>) -> Summary {
    let mut tallies: BTreeMap<(Rule, String, Severity), usize> = BTreeMap::new();
    let mut provinces = BTreeSet::new();
    for (key, state) in after(&read.states, commit) {
        let Some((scheme, code, dataset, rule)) = parse_key(key) else {
            continue;
        };
        if rule.route() != Route::Taskforce {
            continue;
        }
        if read
            .silences
            .iter()
            .any(|s| s.covers(scheme, code, dataset, rule, now))
        {
            continue;
        }
        if state.phase.active() {
            provinces.insert((scheme, code));
        } else if state.phase != Phase::Done {
            continue;
        }
        *tallies
            .entry((rule, dataset.to_string(), state.severity))
            .or_default() += 1;
    }
    let mut tallies: Vec<Tally> = tallies
        .into_iter()
        .map(|((rule, dataset, severity), count)| Tally {
            rule,
            dataset,
            severity,
            count,
        })
        .collect();
    // Most severe first, then the most widespread; targets reached last.
    tallies.sort_by_key(|t| {
        (
            t.rule == Rule::Completed,
            std::cmp::Reverse(t.severity),
            std::cmp::Reverse(t.count),
            t.rule,
            t.dataset.clone(),
        )
    });
    Summary {
        occasion,
        provinces: provinces.len(),
        tallies,
    }
}

fn firing(
    before: &BTreeMap<String, AlertState>,
    commit: &Commit,
) -> BTreeMap<(Rule, Severity), u64> {
    let mut out = BTreeMap::new();
    for (key, state) in after(before, commit) {
        if !state.phase.active() {
            continue;
        }
        if let Some((.., rule)) = parse_key(key) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReceiverKind;

    fn firing(since: DateTime<Utc>) -> AlertState {
        AlertState {
            phase: Phase::Firing,
            since,
            severity: Severity::Warning,
            fired_at: Some(since),
            notified_at: Some(since),
            next_severity: None,
            absent_since: None,
            resolutions: Vec::new(),
            flapping: false,
            unheard: None,
        }
    }

    /// An alert whose target was removed resolves where the chat sees it, named from its
    /// key; one of the other view (`alerts.view` changed) ends untold.
    #[test]
    fn an_alert_whose_subject_is_gone_is_named_from_its_key() {
        let now: DateTime<Utc> = "2026-11-20T03:00:00Z".parse().unwrap();
        let (read, eval) = (Read::default(), Evaluation::default());
        let state = firing(now - chrono::Duration::days(2));
        let gone = |view: &str, key: &str| {
            Evaluator::notice(
                view,
                &read,
                &eval,
                key,
                None,
                Some(&state),
                None,
                Change::Resolved,
                now,
            )
        };
        let n = gone("34", "34:01:civil_status:behind_pace").expect("told");
        assert_eq!(
            (n.subject.name.as_str(), n.subject.dataset.as_str(), n.rule),
            ("Hà Nội", "civil_status", Rule::BehindPace)
        );
        assert_eq!(n.severity, Severity::Warning);
        let n = gone("34", "34:56:procedures:online_share_low").expect("told");
        assert_eq!(
            (n.subject.name.as_str(), n.subject.dataset.as_str()),
            ("Khánh Hòa", "")
        );
        assert_eq!(
            gone("34", "src:hotich:feed:source_quiet")
                .unwrap()
                .subject
                .name,
            "hotich"
        );
        assert!(
            gone("34", "63:58:civil_status:silent").is_none(),
            "the other view's"
        );
        assert!(
            gone("34", "34:99:civil_status:silent").is_none(),
            "no such unit"
        );
    }

    fn receivers(of: &[(&str, ReceiverKind, &[Route])]) -> BTreeMap<String, ReceiverSettings> {
        of.iter()
            .map(|&(name, kind, routes)| {
                let r = ReceiverSettings {
                    kind,
                    url: Default::default(),
                    token: Default::default(),
                    chat_id: String::new(),
                    language: None,
                    max_chars: None,
                    routes: routes.to_vec(),
                };
                (name.to_string(), r)
            })
            .collect()
    }

    fn notice(key: &str) -> Notice {
        Notice {
            id: format!("{key}@1"),
            alert_key: key.into(),
            rule: Rule::Silent,
            severity: Severity::Warning,
            change: Change::Firing { previous: None },
            subject: super::super::Subject::source("any"),
            facts: Default::default(),
            at: DateTime::default(),
            silenced_by: None,
        }
    }

    /// One digest per receiver and evaluation, whatever routes it takes.
    #[test]
    fn a_receiver_of_both_routes_gets_one_digest() {
        let hook = ReceiverKind::Webhook;
        let receivers = receivers(&[
            ("both", hook, &[Route::Taskforce, Route::Ops]),
            ("ops", hook, &[Route::Ops]),
            ("taskforce", hook, &[Route::Taskforce]),
        ]);
        let chat = Digest {
            notices: vec![notice("34:01:civil_status:silent")],
            ..Digest::default()
        };
        let ops = Digest {
            notices: vec![notice("src:hotich:feed:source_quiet")],
            ..Digest::default()
        };
        let now = DateTime::default();
        let got = per_receiver(&receivers, Some(&chat), Some(&ops), &[], "7-1", now);
        let keys =
            |d: &Digest| -> Vec<String> { d.notices.iter().map(|n| n.alert_key.clone()).collect() };
        let names: Vec<(&str, &str)> = got
            .iter()
            .map(|(o, d)| (o.as_str(), d.id.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("both", "both-7-1"),
                ("ops", "ops-ops-7-1"),
                ("taskforce", "taskforce-7-1")
            ]
        );
        assert_eq!(
            keys(&got[0].1),
            ["34:01:civil_status:silent", "src:hotich:feed:source_quiet"]
        );
        assert_eq!(keys(&got[1].1), ["src:hotich:feed:source_quiet"]);
        assert_eq!(keys(&got[2].1), ["34:01:civil_status:silent"]);
        // Nothing for the task force: the receiver of both still gets ops' digest, once.
        let got = per_receiver(&receivers, None, Some(&ops), &[], "7-2", now);
        let outboxes: Vec<&str> = got.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(outboxes, ["both", "ops"]);
    }

    /// A chat hears which of its alerts a silence resolved, for its backlog's sake (a digest
    /// of its own when nothing else came); a webhook, which gets every digest, does not.
    #[test]
    fn chats_hear_of_alerts_a_silence_resolved() {
        let both = &[Route::Taskforce, Route::Ops][..];
        let receivers = receivers(&[
            ("hook", ReceiverKind::Webhook, both),
            ("ops", ReceiverKind::Slack, &[Route::Ops]),
            ("tg", ReceiverKind::Telegram, &[Route::Taskforce]),
        ]);
        let quiet = |key: &str, rule| Notice {
            rule,
            change: Change::Resolved,
            silenced_by: Some("s1".into()),
            ..notice(key)
        };
        let (province, feed) = ("34:01:civil_status:silent", "src:hotich:feed:source_quiet");
        let quiet = [
            quiet(province, Rule::Silent),
            quiet(feed, Rule::SourceQuiet),
        ];
        let now: DateTime<Utc> = "2025-09-01T03:00:00Z".parse().unwrap();
        let got = per_receiver(&receivers, None, None, &[&quiet[0], &quiet[1]], "7-3", now);
        let heard: Vec<(&str, &str, Vec<String>)> = got
            .iter()
            .map(|(o, d)| (o.as_str(), d.id.as_str(), d.resolved_silently.clone()))
            .collect();
        assert_eq!(
            heard,
            [
                ("ops", "ops-7-3", vec![feed.to_string()]),
                ("tg", "tg-7-3", vec![province.to_string()])
            ]
        );
        assert!(got.iter().all(|(_, d)| d.at == now && d.tells_nothing()));
        // With news, the chat's digest carries both; the webhook's the news alone.
        let news = Digest {
            notices: vec![notice("34:04:civil_status:silent")],
            ..Digest::default()
        };
        let got = per_receiver(&receivers, Some(&news), None, &[&quiet[0]], "7-4", now);
        let carried: Vec<(&str, usize, usize)> = got
            .iter()
            .map(|(o, d)| (o.as_str(), d.notices.len(), d.resolved_silently.len()))
            .collect();
        assert_eq!(carried, [("hook", 1, 0), ("tg", 1, 1)]);
    }

    #[test]
    fn the_task_force_summary_leaves_feeds_out() {
        let now: DateTime<Utc> = "2025-09-01T03:00:00Z".parse().unwrap();
        let states = [
            "34:01:civil_status:silent",
            "src:hotich:feed:source_quiet",
            "src:other:feed:source_rejecting",
        ]
        .map(|k| (k.to_string(), firing(now)))
        .into_iter()
        .collect();
        let read = Read {
            states,
            ..Read::default()
        };
        let s = summarize(Occasion::Started, &read, &Commit::default(), now);
        assert_eq!(s.provinces, 1);
        let rules: Vec<Rule> = s.tallies.iter().map(|t| t.rule).collect();
        assert_eq!(rules, [Rule::Silent]);
        // The firing gauges count every alert, feeds' included.
        let all = super::firing(&read.states, &Commit::default());
        assert_eq!(all.get(&(Rule::SourceQuiet, Severity::Warning)), Some(&1));
    }
}
