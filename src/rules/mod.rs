//! Stage 5: stall detection. Reads the figures per province (a [`Status`]) and finds which
//! stall rules hold right now: [`evaluate`] is a pure function of the figures, the targets and
//! the time, so every threshold is testable without Redis or Kafka.
//!
//! What happens over time (a condition must hold for a while before it fires, and clear for a
//! while before it resolves) is [`state`]; where that state lives, so that several replicas
//! notify each transition once, is [`ledger`]; the periodic loop is [`evaluator`].

pub mod evaluator;
pub mod ledger;
pub mod state;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{RuleSettings, SourceSettings};
use crate::status::{ProvinceStatus, Status};

/// The stall rules. Names are stable: they appear in keys, silences, metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Silent,
    BehindPace,
    ProjectedMiss,
    Completed,
    OnlineShareLow,
    ProceduresSilent,
    /// An upstream source system sent nothing for `sources.quiet_after` (ops).
    SourceQuiet,
    /// Too many of a source system's messages were rejected over 24 hours (ops).
    SourceRejecting,
}

pub use crate::config::Route;

impl Rule {
    pub const ALL: [Rule; 8] = [
        Rule::Silent,
        Rule::BehindPace,
        Rule::ProjectedMiss,
        Rule::Completed,
        Rule::OnlineShareLow,
        Rule::ProceduresSilent,
        Rule::SourceQuiet,
        Rule::SourceRejecting,
    ];

    pub fn route(self) -> Route {
        match self {
            Rule::SourceQuiet | Rule::SourceRejecting => Route::Ops,
            _ => Route::Taskforce,
        }
    }

    /// Whether its alerts are of one dataset (the procedure and source rules' are not).
    pub fn per_dataset(self) -> bool {
        matches!(
            self,
            Rule::Silent | Rule::BehindPace | Rule::ProjectedMiss | Rule::Completed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Silent => "silent",
            Rule::BehindPace => "behind_pace",
            Rule::ProjectedMiss => "projected_miss",
            Rule::Completed => "completed",
            Rule::OnlineShareLow => "online_share_low",
            Rule::ProceduresSilent => "procedures_silent",
            Rule::SourceQuiet => "source_quiet",
            Rule::SourceRejecting => "source_rejecting",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What an alert is about: a province's dataset, or its procedure feed (`dataset` empty), or
/// an upstream source system (scheme [`SOURCE_SCHEME`], dataset [`FEED`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subject {
    /// "34" or "63": the code table of `code`; "src" for a source system.
    pub scheme: String,
    /// A province code, or a source system's label.
    pub code: String,
    pub name: String,
    /// Empty for procedure rules.
    pub dataset: String,
}

/// The scheme of a source system's subject: `src:hotich:feed:source_quiet`.
pub const SOURCE_SCHEME: &str = "src";
/// The dataset of a source system's subject.
pub const FEED: &str = "feed";

impl Subject {
    /// Stable alert id of `rule` on this subject: `34:01:civil_status:silent`.
    pub fn alert_key(&self, rule: Rule) -> String {
        let what = if self.dataset.is_empty() {
            "procedures"
        } else {
            &self.dataset
        };
        format!("{}:{}:{}:{}", self.scheme, self.code, what, rule.as_str())
    }

    /// The subject an alert key names (`34:01:civil_status:silent`), for an alert whose
    /// subject is no longer evaluated (its target removed, its source no longer known): the
    /// unit's name from the code table, the source's label as its own.
    pub fn of_key(key: &str) -> Option<Subject> {
        let mut parts = key.split(':');
        let (scheme, code, what) = (parts.next()?, parts.next()?, parts.next()?);
        let name = if scheme == SOURCE_SCHEME {
            code.to_string()
        } else {
            let table = match scheme {
                "34" => crate::provinces::Scheme::Current34,
                "63" => crate::provinces::Scheme::Legacy63,
                _ => return None,
            };
            let province = crate::provinces::provinces().get(table, code.parse().ok()?)?;
            province.name_vi.clone()
        };
        Some(Subject {
            scheme: scheme.to_string(),
            code: code.to_string(),
            name,
            dataset: if what == "procedures" { "" } else { what }.to_string(),
        })
    }

    pub fn source(name: &str) -> Subject {
        Subject {
            scheme: SOURCE_SCHEME.to_string(),
            code: name.to_string(),
            name: name.to_string(),
            dataset: FEED.to_string(),
        }
    }

    pub fn is_source(&self) -> bool {
        self.scheme == SOURCE_SCHEME
    }
}

/// The figures a message about a subject shows, computed at evaluation time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Facts {
    pub total: i64,
    pub target: Option<u64>,
    pub deadline: Option<NaiveDate>,
    /// Percent of target done.
    pub percent: Option<f64>,
    /// Records per day over the 7 whole days before today (Vietnam calendar days).
    pub pace_7d: f64,
    /// Records per day needed from now to the deadline.
    pub pace_needed: Option<f64>,
    /// Days left to the end of the deadline day (negative once past).
    pub days_left: Option<f64>,
    /// Completion date at the projection window's rate; `None` without progress.
    pub projected: Option<NaiveDate>,
    pub last_event: Option<DateTime<Utc>>,
    /// Online end-to-end share of procedures over the rule's window, and how many there were.
    pub online_share: Option<f64>,
    pub dossiers: i64,
    /// A source system's last 24 hours (source rules only); `last_event` is its last message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<Feed>,
}

/// What a source system sent over the last 24 hours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Feed {
    /// Messages: counted, re-sent and rejected.
    pub messages: i64,
    pub rejected: i64,
    pub reject_ratio: f64,
    /// The commonest reject reasons, most first, with their counts.
    pub reasons: Vec<(String, i64)>,
}

/// A rule that holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub key: String,
    pub rule: Rule,
    pub severity: Severity,
    pub subject: Subject,
}

/// Everything one evaluation saw: the facts of every subject with something to say, and the
/// rules that hold.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// Facts by subject, keyed like alert keys without the rule (`34:01:civil_status`).
    pub facts: BTreeMap<String, (Subject, Facts)>,
    pub findings: Vec<Finding>,
}

impl Evaluation {
    /// The subject and facts an alert key refers to.
    pub fn about(&self, alert_key: &str) -> Option<&(Subject, Facts)> {
        let (subject, _) = alert_key.rsplit_once(':')?;
        self.facts.get(subject)
    }
}

fn subject_key(s: &Subject) -> String {
    let key = s.alert_key(Rule::Silent);
    key[..key.len() - ":silent".len()].to_string()
}

/// The last instant of a deadline day, Vietnam time.
pub fn deadline_end(day: NaiveDate) -> DateTime<Utc> {
    let end = day.and_time(NaiveTime::MIN) + chrono::Duration::days(1);
    crate::clock::vn_offset()
        .from_local_datetime(&end)
        .single()
        .expect("fixed offset")
        .with_timezone(&Utc)
}

/// Which rules hold for every province of `status` at `now`, for an alert that is not firing.
pub fn evaluate(status: &Status, now: DateTime<Utc>, rules: &RuleSettings) -> Evaluation {
    evaluate_holding(status, now, rules, &BTreeMap::new())
}

/// Which rules hold, where `active` holds the alerts firing now (key → severity): those keep
/// holding until their value is past the resolve margin beyond the threshold they fired at,
/// and a critical one stays critical until past the margin beyond the critical line. So a
/// value wavering around a threshold fires once and stays fired.
pub fn evaluate_holding(
    status: &Status,
    now: DateTime<Utc>,
    rules: &RuleSettings,
    active: &BTreeMap<String, Severity>,
) -> Evaluation {
    let mut out = Evaluation::default();
    for row in &status.provinces {
        datasets(row, now, rules, active, &mut out);
        procedures(row, now, rules, active, &mut out);
    }
    out
}

fn subject(row: &ProvinceStatus, dataset: &str) -> Subject {
    Subject {
        scheme: row.scheme.to_string(),
        code: row.code.clone(),
        name: row.name.clone(),
        dataset: dataset.to_string(),
    }
}

/// Whether a feed last heard from at `last` (never: `None`) is silent at `now`: quiet for
/// `after` of working time, leaving out `days_off` and `holidays` (a weekend is no stall).
fn silent(
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    after: std::time::Duration,
    rules: &RuleSettings,
) -> bool {
    let after = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
    last.is_none_or(|at| {
        let worked = crate::clock::working_seconds(
            at.timestamp(),
            now.timestamp(),
            after,
            &rules.days_off,
            &rules.holidays,
        );
        worked >= after
    })
}

/// Holidays (`alerts.rules.holidays`) are days nobody works: Tết in the week before, or
/// ahead of the deadline, is not a province slowing down. Rates are per day that is not one
/// (see [`crate::status::DatasetStatus::rate_on`]), the days left leave them out, and a
/// projection passes over them.
struct Calendar<'h> {
    holidays: &'h [crate::clock::Holiday],
    tomorrow: NaiveDate,
}

impl Calendar<'_> {
    /// Days left of `days_left` until `deadline` that are not holidays.
    fn open_days_left(&self, days_left: f64, deadline: NaiveDate) -> f64 {
        days_left
            - crate::clock::Holiday::count_between(self.holidays, self.tomorrow, deadline) as f64
    }

    /// The date `date` moves to once the holidays from tomorrow up to it are worked after it.
    fn past_holidays(&self, date: NaiveDate) -> NaiveDate {
        let mut moved = date;
        // Each pass adds the holidays the last one moved over; runs of them end in a few.
        for _ in 0..8 {
            let off = crate::clock::Holiday::count_between(self.holidays, self.tomorrow, moved);
            let next = date + chrono::Duration::days(off);
            if next == moved {
                break;
            }
            moved = next;
        }
        moved
    }
}

/// Whether `behind_pace` holds, and how badly, for a 7-day `pace` (`None`: a week of
/// holidays, which tells nothing: as it `was`) against the pace `needed`. A firing alert
/// resolves only past the margin above the line, and a critical one eases only past the
/// margin above the critical line.
fn behind_pace(
    pace: Option<f64>,
    needed: f64,
    was: Option<Severity>,
    rules: &RuleSettings,
) -> Option<Severity> {
    let Some(pace) = pace else {
        return was;
    };
    let margin = 1.0 + rules.pace_resolve_margin;
    let line = if was.is_some() {
        needed * margin
    } else {
        needed
    };
    if pace >= line {
        return None;
    }
    let eased = if was == Some(Severity::Critical) {
        margin
    } else {
        1.0
    };
    Some(if pace < needed * rules.critical_pace_ratio * eased {
        Severity::Critical
    } else {
        Severity::Warning
    })
}

fn find(out: &mut Evaluation, subject: &Subject, rule: Rule, severity: Severity) {
    out.findings.push(Finding {
        key: subject.alert_key(rule),
        rule,
        severity,
        subject: subject.clone(),
    });
}

fn datasets(
    row: &ProvinceStatus,
    now: DateTime<Utc>,
    rules: &RuleSettings,
    active: &BTreeMap<String, Severity>,
    out: &mut Evaluation,
) {
    let calendar = Calendar {
        holidays: &rules.holidays,
        tomorrow: now.with_timezone(&crate::clock::vn_offset()).date_naive()
            + chrono::Duration::days(1),
    };
    for (name, d) in &row.datasets {
        let (Some(target), Some(deadline)) = (d.target, d.deadline) else {
            continue;
        };
        let subject = subject(row, name);
        let remaining = (target as i64 - d.total).max(0) as f64;
        let days_left = (deadline_end(deadline) - now).num_seconds() as f64 / 86_400.0;
        let pace_7d = d.rate_on("7d", now, &rules.holidays);
        let open_days_left = calendar.open_days_left(days_left, deadline);
        let rate = d
            .rate_on(&rules.projection_window, now, &rules.holidays)
            .unwrap_or(0.0);
        // A rate so low that the date overflows projects to "never", like no rate at all.
        let projected = (rate > 0.0)
            .then(|| chrono::Duration::try_seconds((remaining / rate * 86_400.0).min(1e15) as i64))
            .flatten()
            .and_then(|d| now.checked_add_signed(d))
            .map(|at| at.with_timezone(&crate::clock::vn_offset()).date_naive())
            .map(|date| calendar.past_holidays(date));
        let pace_needed = (remaining > 0.0).then(|| {
            if open_days_left > 0.0 {
                remaining / open_days_left
            } else {
                f64::INFINITY
            }
        });
        let facts = Facts {
            total: d.total,
            target: Some(target),
            deadline: Some(deadline),
            percent: d.percent,
            pace_7d: pace_7d.unwrap_or(0.0),
            pace_needed: pace_needed.filter(|p| p.is_finite()),
            days_left: Some(days_left),
            projected,
            last_event: d.last_event,
            online_share: None,
            dossiers: 0,
            feed: None,
        };
        out.facts
            .insert(subject_key(&subject), (subject.clone(), facts));

        if d.total >= target as i64 {
            find(out, &subject, Rule::Completed, Severity::Info);
            continue;
        }
        if silent(d.last_event, now, rules.silent_after, rules) {
            find(out, &subject, Rule::Silent, Severity::Warning);
        }
        // Under a record a day to go (a few records short with weeks left), any event ends
        // it: no pace is behind that, whatever the last week held.
        if let Some(needed) = pace_needed.filter(|n| *n >= 1.0) {
            let was = active.get(&subject.alert_key(Rule::BehindPace)).copied();
            if let Some(severity) = behind_pace(pace_7d, needed, was, rules) {
                find(out, &subject, Rule::BehindPace, severity);
            }
        }
        let margin = if active.contains_key(&subject.alert_key(Rule::ProjectedMiss)) {
            // At most half the time left: a projection is never before today, so in the last
            // week a full margin could not be met, and the alert would hold for a province
            // that recovered, its projected date before the deadline.
            let half_left = chrono::Duration::seconds((days_left.max(0.0) * 43_200.0) as i64);
            chrono::Duration::from_std(rules.projection_resolve_margin)
                .unwrap_or_default()
                .min(half_left)
        } else {
            chrono::Duration::zero()
        };
        let latest = deadline
            .checked_sub_signed(margin)
            .unwrap_or(NaiveDate::MIN);
        if projected.is_none_or(|p| p > latest) {
            find(out, &subject, Rule::ProjectedMiss, Severity::Warning);
        }
    }
}

fn procedures(
    row: &ProvinceStatus,
    now: DateTime<Utc>,
    rules: &RuleSettings,
    active: &BTreeMap<String, Severity>,
    out: &mut Evaluation,
) {
    let p = &row.procedures;
    if p.completed == 0 {
        return; // never reported: nothing is "normal" for it yet
    }
    let subject = subject(row, "");
    let w = rules.online_share_window.as_str();
    // Over the window's rate plan, as rates are: 7 whole days hold each weekday once, while
    // 6 days and a part of today weigh weekdays and weekends by the hour, and a share near
    // the line would fire and resolve with it. Over the window itself while those whole days
    // hold nothing (dossiers that began today).
    let over = |sums: fn(&crate::status::ChannelStatus) -> &BTreeMap<&'static str, i64>| {
        let dossiers: i64 = p.channels.values().map(|c| sums(c)[w]).sum();
        let online = p.channels.get("online").map_or(0, |c| sums(c)[w]);
        (dossiers, online)
    };
    let (mut dossiers, mut online) = over(|c| &c.rate_sums);
    if dossiers == 0 {
        (dossiers, online) = over(|c| &c.windows);
    }
    let online_share = (dossiers > 0).then(|| online as f64 / dossiers as f64);
    let facts = Facts {
        total: p.completed,
        last_event: p.last_event,
        online_share,
        dossiers,
        ..Facts::default()
    };
    out.facts
        .insert(subject_key(&subject), (subject.clone(), facts));
    if silent(p.last_event, now, rules.procedures_silent_after, rules) {
        find(out, &subject, Rule::ProceduresSilent, Severity::Warning);
    }
    let firing = active.contains_key(&subject.alert_key(Rule::OnlineShareLow));
    // No dossier in the window (a holiday week, a weekend under `24h`) tells nothing of the
    // share: a firing alert holds, rather than resolve with no figure and fire again after.
    if online_share.is_none() && firing {
        find(out, &subject, Rule::OnlineShareLow, Severity::Warning);
    }
    if let Some(share) = online_share {
        let line = if firing {
            rules.online_share_min + rules.online_share_resolve_margin
        } else {
            rules.online_share_min
        };
        // The minimum volume gates firing, not resolving: a firing alert is judged on the
        // dossiers there are, so a week's count dipping under it at midnight does not resolve
        // it while the share stays low, only for it to fire again when the count is back.
        let enough = dossiers >= rules.online_min_dossiers as i64;
        if share < line && (enough || firing) {
            find(out, &subject, Rule::OnlineShareLow, Severity::Warning);
        }
    }
}

/// Which source rules hold for the feeds in `views` (see [`crate::sources::view`]), where
/// `active` holds the alerts firing now. `source_quiet` concerns known sources that have been
/// heard from (one never heard from has nothing normal yet, like `procedures_silent`);
/// `source_rejecting` any source with enough messages, `other` included. A firing
/// `source_rejecting` resolves only below the ratio minus `reject_resolve_margin`, so a feed
/// wavering at the line fires once; the minimum of messages gates its firing, not resolving.
pub fn evaluate_sources(
    views: &[crate::sources::SourceView],
    settings: &SourceSettings,
    active: &BTreeMap<String, Severity>,
    out: &mut Evaluation,
) {
    for v in views {
        let subject = Subject::source(&v.name);
        let w = &v.last_24h;
        let messages = w.tally.events + w.tally.duplicates + w.rejected;
        let mut reasons: Vec<(String, i64)> = w
            .tally
            .rejects
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| (r.clone(), *n))
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        reasons.truncate(3);
        let facts = Facts {
            total: v.total.events,
            last_event: v.last_seen,
            feed: Some(Feed {
                messages,
                rejected: w.rejected,
                reject_ratio: w.reject_ratio,
                reasons,
            }),
            ..Facts::default()
        };
        out.facts
            .insert(subject_key(&subject), (subject.clone(), facts));
        if v.quiet && v.last_seen.is_some() {
            find(out, &subject, Rule::SourceQuiet, Severity::Warning);
        }
        let firing = active.contains_key(&subject.alert_key(Rule::SourceRejecting));
        let line = if firing {
            settings.reject_ratio_max - settings.reject_resolve_margin
        } else {
            settings.reject_ratio_max
        };
        // As with the online share, the minimum volume gates firing only. No messages make a
        // ratio of 0, which the line (validated not below 0) never exceeds.
        let enough = messages >= settings.reject_min_messages as i64;
        if w.reject_ratio > line && (enough || firing) {
            find(out, &subject, Rule::SourceRejecting, Severity::Warning);
        }
    }
}

#[cfg(test)]
mod tests;
