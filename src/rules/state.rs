//! An alert's life over time, like Prometheus' `for:` with a clear time on the way out: a rule
//! that holds goes pending, fires once it has held for `pending_for`, is repeated every
//! `repeat_interval` while firing, resolves once it has been clear for `clear_for`. A province
//! hovering at a threshold therefore neither floods the chat nor flaps; the rules add a value
//! margin on the way out too (see [`super::evaluate_holding`]). What still flaps is damped, as
//! in Nagios: an alert that would resolve for the (`flap_max`+1)th time within `flap_window`
//! is held firing instead, with one notice saying so, until it has been clear for
//! `flap_clear_for`. `completed` fires at once and stays done while the target stays reached.
//! Pure: the evaluator persists [`AlertState`] in the ledger.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{Finding, Rule, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Holds, not yet for long enough.
    Pending,
    Firing,
    /// Fired, then cleared, not yet for long enough.
    Resolving,
    /// A target reached: notified once, kept so it is never notified again.
    Done,
    /// Not active: kept only to remember recent resolutions, for flap damping.
    Resolved,
}

impl Phase {
    /// Firing, or firing and clearing: what people are told is wrong now.
    pub fn active(self) -> bool {
        matches!(self, Phase::Firing | Phase::Resolving)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub phase: Phase,
    /// When the current phase began.
    pub since: DateTime<Utc>,
    pub severity: Severity,
    /// When it last fired.
    pub fired_at: Option<DateTime<Utc>>,
    /// When it was last notified (fired, repeated or changed severity).
    pub notified_at: Option<DateTime<Utc>>,
    /// A different severity seen while firing, and since when: it is announced only once it
    /// has held for `pending_for`, so a province at the critical threshold does not flap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_severity: Option<(Severity, DateTime<Utc>)>,
    /// Done, but the target not reached since then (raised or removed): after `clear_for` the
    /// state is dropped quietly, so a new completion is news. A glimpse of lower figures (a
    /// recount after Redis lost data) does not last that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_since: Option<DateTime<Utc>>,
    /// When it resolved within the last `flap_window`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolutions: Vec<DateTime<Utc>>,
    /// Held firing because it flapped; resolves only after `flap_clear_for` clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
    /// The silence that kept its last notice from the chat: once none does, the chat is told
    /// it fires, as news, or hears nothing of its end (see the evaluator's `plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unheard: Option<String>,
}

/// What a step announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Started firing, or changed severity while firing (`previous` says from what).
    Firing {
        previous: Option<Severity>,
    },
    Repeated,
    Resolved,
    Completed,
    /// Would have resolved again, too often: held firing from now on, until clear for long.
    Flapping,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Firing { .. } => "firing",
            Change::Repeated => "repeated",
            Change::Resolved => "resolved",
            Change::Completed => "completed",
            Change::Flapping => "flapping",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub pending_for: Duration,
    pub clear_for: Duration,
    pub repeat_interval: Duration,
    /// Resolutions within `flap_window` after which the next one is held; 0: no damping.
    pub flap_max: usize,
    pub flap_window: Duration,
    pub flap_clear_for: Duration,
}

impl AlertState {
    pub(crate) fn new(phase: Phase, severity: Severity, now: DateTime<Utc>) -> AlertState {
        AlertState {
            phase,
            since: now,
            severity,
            fired_at: None,
            notified_at: None,
            next_severity: None,
            absent_since: None,
            resolutions: Vec::new(),
            flapping: false,
            unheard: None,
        }
    }

    /// Firing from `now`, notified now, first fired at `fired_at`.
    fn firing(&self, severity: Severity, fired_at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        AlertState {
            phase: Phase::Firing,
            since: now,
            severity,
            fired_at: Some(fired_at),
            notified_at: Some(now),
            next_severity: None,
            absent_since: None,
            resolutions: self.resolutions.clone(),
            flapping: self.flapping,
            unheard: None,
        }
    }
}

/// The next state of one alert given what holds now (`finding`), and what to announce.
pub fn step(
    prev: Option<&AlertState>,
    finding: Option<&Finding>,
    now: DateTime<Utc>,
    t: &Timing,
) -> (Option<AlertState>, Option<Change>) {
    let mut prev = prev.cloned();
    if let Some(s) = prev.as_mut() {
        s.resolutions.retain(|at| now - *at < t.flap_window);
    }
    // An alert that is not active starts afresh, keeping only its resolutions.
    let fresh = |f: &Finding, resolutions: Vec<DateTime<Utc>>| {
        let mut s = AlertState::new(Phase::Pending, f.severity, now);
        s.resolutions = resolutions;
        if t.pending_for <= Duration::zero() {
            (
                Some(s.firing(f.severity, now, now)),
                Some(Change::Firing { previous: None }),
            )
        } else {
            (Some(s), None)
        }
    };
    // Gone quiet: remembered while it has recent resolutions.
    let quiet = |resolutions: Vec<DateTime<Utc>>| {
        if resolutions.is_empty() {
            None
        } else {
            let mut s = AlertState::new(Phase::Resolved, Severity::Info, now);
            s.resolutions = resolutions;
            Some(s)
        }
    };
    match (prev, finding) {
        (None, None) => (None, None),
        (Some(s), Some(_)) if s.phase == Phase::Done => {
            let mut s = s.clone();
            s.absent_since = None;
            (Some(s), None)
        }
        (Some(s), None) if s.phase == Phase::Done => {
            let since = s.absent_since.unwrap_or(now);
            if now - since >= t.clear_for {
                (None, None)
            } else {
                let mut s = s.clone();
                s.absent_since = Some(since);
                (Some(s), None)
            }
        }
        (None, Some(f)) if f.rule == Rule::Completed => {
            let mut s = AlertState::new(Phase::Done, f.severity, now);
            s.fired_at = Some(now);
            s.notified_at = Some(now);
            (Some(s), Some(Change::Completed))
        }
        (None, Some(f)) => fresh(f, Vec::new()),
        (Some(s), Some(f)) if s.phase == Phase::Resolved => fresh(f, s.resolutions),
        // Unchanged while it remembers a resolution, so it costs no write.
        (Some(s), None) if s.phase == Phase::Resolved => {
            ((!s.resolutions.is_empty()).then_some(s), None)
        }
        (Some(s), Some(f)) if s.phase == Phase::Pending => {
            if now - s.since >= t.pending_for {
                (
                    Some(s.firing(f.severity, now, now)),
                    Some(Change::Firing { previous: None }),
                )
            } else {
                let mut s = s.clone();
                s.severity = f.severity;
                (Some(s), None)
            }
        }
        (Some(s), None) if s.phase == Phase::Pending => (quiet(s.resolutions), None),
        // Firing, or resolving and back: still the same alert.
        (Some(s), Some(f)) => {
            let fired_at = s.fired_at.unwrap_or(now);
            if f.severity != s.severity {
                let since = match s.next_severity {
                    Some((sev, since)) if sev == f.severity => since,
                    _ => now,
                };
                if now - since >= t.pending_for {
                    return (
                        Some(s.firing(f.severity, fired_at, now)),
                        Some(Change::Firing {
                            previous: Some(s.severity),
                        }),
                    );
                }
                let mut s = s.clone();
                s.next_severity = Some((f.severity, since));
                if s.phase == Phase::Resolving {
                    s.phase = Phase::Firing;
                    s.since = now;
                }
                return (Some(s), None);
            }
            let due = s.notified_at.is_none_or(|at| now - at >= t.repeat_interval);
            if due {
                return (
                    Some(s.firing(f.severity, fired_at, now)),
                    Some(Change::Repeated),
                );
            }
            let mut s = s.clone();
            s.next_severity = None;
            if s.phase == Phase::Resolving {
                s.phase = Phase::Firing;
                s.since = now;
            }
            (Some(s), None)
        }
        (Some(s), None) => {
            let clear_since = if s.phase == Phase::Resolving {
                s.since
            } else {
                now
            };
            let clear_for = if s.flapping {
                t.flap_clear_for
            } else {
                t.clear_for
            };
            let mut s = s.clone();
            s.phase = Phase::Resolving;
            s.since = clear_since;
            if now - clear_since < clear_for {
                return (Some(s), None);
            }
            if !s.flapping && t.flap_max > 0 && s.resolutions.len() >= t.flap_max {
                s.flapping = true;
                return (Some(s), Some(Change::Flapping));
            }
            let mut resolutions = s.resolutions;
            resolutions.push(now);
            (quiet(resolutions), Some(Change::Resolved))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Subject;

    fn at(minutes: i64) -> DateTime<Utc> {
        "2024-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minutes)
    }

    fn finding(rule: Rule, severity: Severity) -> Finding {
        let subject = Subject {
            scheme: "63".into(),
            code: "58".into(),
            name: "Ninh Thuận".into(),
            dataset: "civil_status".into(),
        };
        Finding {
            key: subject.alert_key(rule),
            rule,
            severity,
            subject,
        }
    }

    const T: Timing = Timing {
        pending_for: Duration::minutes(15),
        clear_for: Duration::minutes(30),
        repeat_interval: Duration::hours(24),
        flap_max: 2,
        flap_window: Duration::days(7),
        flap_clear_for: Duration::days(2),
    };

    /// Runs `holds` (minute → does the rule hold) and returns the announced changes by minute.
    fn run(holds: impl Fn(i64) -> Option<Severity>, minutes: i64) -> Vec<(i64, Change)> {
        let mut state = None;
        let mut out = Vec::new();
        for m in 0..=minutes {
            let f = holds(m).map(|s| finding(Rule::BehindPace, s));
            let (next, change) = step(state.as_ref(), f.as_ref(), at(m), &T);
            state = next;
            if let Some(c) = change {
                out.push((m, c));
            }
        }
        out
    }

    #[test]
    fn fires_only_after_holding_for_pending_for() {
        let changes = run(|m| (m >= 10).then_some(Severity::Warning), 60);
        assert_eq!(changes, vec![(25, Change::Firing { previous: None })]);
        // Holding for 14 minutes then clearing fires nothing.
        let changes = run(|m| (10..24).contains(&m).then_some(Severity::Warning), 60);
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn resolves_only_after_clearing_for_clear_for_and_does_not_flap() {
        // Fires at 15; flickers clear for 10 minutes at a time; clears for good at 100.
        let holds = |m: i64| {
            let flicker = (40..50).contains(&m) || (60..70).contains(&m);
            (m < 100 && !flicker).then_some(Severity::Warning)
        };
        let changes = run(holds, 200);
        assert_eq!(
            changes,
            vec![
                (15, Change::Firing { previous: None }),
                (130, Change::Resolved)
            ]
        );
    }

    #[test]
    fn repeats_while_firing_and_announces_severity_changes() {
        let holds = |m: i64| {
            Some(if (100..200).contains(&m) {
                Severity::Critical
            } else {
                Severity::Warning
            })
        };
        let changes = run(holds, 60 * 24 + 300);
        assert_eq!(
            changes,
            vec![
                (15, Change::Firing { previous: None }),
                (
                    115,
                    Change::Firing {
                        previous: Some(Severity::Warning)
                    }
                ),
                (
                    215,
                    Change::Firing {
                        previous: Some(Severity::Critical)
                    }
                ),
                (215 + 60 * 24, Change::Repeated),
            ]
        );
    }

    #[test]
    fn a_severity_flickering_at_the_threshold_is_not_announced() {
        // Critical for 10 minutes out of every 20: never long enough to be announced.
        let holds = |m: i64| {
            Some(if m > 30 && m % 20 < 10 {
                Severity::Critical
            } else {
                Severity::Warning
            })
        };
        let changes = run(holds, 600);
        assert_eq!(changes, vec![(15, Change::Firing { previous: None })]);
    }

    #[test]
    fn completed_is_announced_once_and_never_again() {
        let mut state = None;
        let mut changes = Vec::new();
        for m in 0..100 {
            let f = (m % 3 != 0).then(|| finding(Rule::Completed, Severity::Info));
            let (next, change) = step(state.as_ref(), f.as_ref(), at(m), &T);
            state = next;
            changes.extend(change);
        }
        assert_eq!(changes, vec![Change::Completed]);
    }

    #[test]
    fn a_raised_target_reached_again_is_announced_again() {
        let done = finding(Rule::Completed, Severity::Info);
        let (s, c) = step(None, Some(&done), at(0), &T);
        assert_eq!(c, Some(Change::Completed));
        // The target is raised: no longer complete; after clear_for the state goes without a
        // word...
        let (s, c) = step(s.as_ref(), None, at(1), &T);
        assert!(s.is_some() && c.is_none());
        let (s, c) = step(s.as_ref(), None, at(31), &T);
        assert_eq!((s.clone(), c), (None, None));
        // ...and reaching the new target is news.
        let (_, c) = step(s.as_ref(), Some(&done), at(40), &T);
        assert_eq!(c, Some(Change::Completed));
    }

    #[test]
    fn an_alert_that_keeps_resolving_is_held_firing_with_one_notice() {
        // An hour on, an hour off, for a day; then clear for good.
        let holds = |m: i64| (m < 1440 && m % 120 < 60).then_some(Severity::Warning);
        let changes = run(holds, 5000);
        let fired = Change::Firing { previous: None };
        assert_eq!(
            changes,
            vec![
                (15, fired),
                (90, Change::Resolved),
                (135, fired),
                (210, Change::Resolved),
                (255, fired),
                // The third resolution within the week is held: one notice, then quiet...
                (330, Change::Flapping),
                // ...until it has been clear for flap_clear_for (2 days after 13:00).
                (1380 + 2 * 1440, Change::Resolved),
            ]
        );
    }

    #[test]
    fn a_resolved_alert_is_remembered_unchanged_for_the_flap_window_then_forgotten() {
        let f = finding(Rule::BehindPace, Severity::Warning);
        let (s, _) = step(None, Some(&f), at(0), &T);
        let (s, _) = step(s.as_ref(), Some(&f), at(15), &T);
        let (s, _) = step(s.as_ref(), None, at(20), &T);
        let (s, c) = step(s.as_ref(), None, at(50), &T);
        assert_eq!(c, Some(Change::Resolved));
        let remembered = s.clone().unwrap();
        assert_eq!(remembered.phase, Phase::Resolved);
        // Evaluations without the rule holding leave it as it is (no write)...
        let (later, c) = step(s.as_ref(), None, at(60 * 24), &T);
        assert_eq!((later, c), (Some(remembered), None));
        // ...until its resolution is older than the window.
        let (gone, _) = step(s.as_ref(), None, at(50 + 7 * 24 * 60), &T);
        assert_eq!(gone, None);
    }
}
