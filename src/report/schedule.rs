//! The weekly rhythm: `report.schedule` posts the report to chat by itself, once per
//! scheduled time across every replica.
//!
//! The ledger's `meta` hash remembers the last scheduled time dealt with (`report_due`). A
//! replica that finds a later time due commits the report's digests and the new marker in one
//! ledger commit, if the marker still holds what it read: of two replicas at once, one commits
//! and the other finds the marker moved. Evaluations committing meanwhile do not hold it up.
//! A time missed while every replica was down is sent when one comes back, marked late; only
//! the latest of several missed times is sent. While the figures are catching up the report
//! waits (it would show a province at 0%). A deployment that has never posted starts from the
//! latest time passed, silently: a new schedule does not post last Monday's report at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Report;
use crate::catchup::Watch;
pub use crate::clock::Slot;
use crate::clock::{vn_offset, SharedClock};
use crate::config::{ReceiverKind, Settings};
use crate::notify::message::{split, Markup};
use crate::notify::receivers::{SLACK_MAX, TELEGRAM_MAX};
use crate::rules::ledger::{Commit, Digest, Document, Kind, Ledger, LedgerError};
use crate::store::Store;
use crate::targets::Targets;
use crate::telemetry;

/// Field of the ledger's `meta` hash: the last scheduled time dealt with (RFC 3339).
pub const REPORT_DUE: &str = "report_due";
/// The `meta` field holding the schedule `report_due` was dealt with under.
pub const REPORT_SCHEDULE: &str = "report_schedule";

/// Read-then-commit tries for one look. A try is lost only to another replica moving the
/// marker between its read and its commit, and the next read sees that.
const MARK_TRIES: usize = 3;

/// The `report_due` marker of the ledger's `meta` hash.
fn marker(meta: &std::collections::BTreeMap<String, String>) -> Option<DateTime<Utc>> {
    meta.get(REPORT_DUE)
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|d| d.with_timezone(&Utc))
}

/// The latest scheduled time at or before `now`, of all slots.
pub fn latest(slots: &[Slot], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    slots.iter().map(|s| s.latest(now)).max()
}

/// What one look at the schedule did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Nothing due.
    Nothing,
    /// First look in this deployment: the marker was set to this time, nothing sent.
    Started(DateTime<Utc>),
    /// Due, but the figures are not current (catching up, Kafka unreachable: the reason).
    Held(DateTime<Utc>, String),
    /// The report of this scheduled time was queued for every receiver; `late` if sent past
    /// `report.late_after`.
    Sent { due: DateTime<Utc>, late: bool },
}

/// Posts the scheduled report. Any number of replicas may run one.
pub struct Poster {
    store: Store,
    ledger: Ledger,
    targets: Targets,
    settings: Arc<Settings>,
    clock: SharedClock,
    slots: Vec<Slot>,
    watch: Option<Watch>,
    /// Whether this process has looked at the schedule: a changed one starts anew only then.
    looked: AtomicBool,
}

impl Poster {
    pub fn new(
        store: Store,
        ledger: Ledger,
        targets: Targets,
        settings: Arc<Settings>,
        clock: SharedClock,
    ) -> Poster {
        let slots = settings
            .report
            .schedule
            .iter()
            .map(|s| Slot::parse(s).expect("validated at load"))
            .collect();
        Poster {
            store,
            ledger,
            targets,
            settings,
            clock,
            slots,
            watch: None,
            looked: AtomicBool::new(false),
        }
    }

    /// Waits while `watch` says the figures are catching up.
    pub fn with_watch(mut self, watch: Watch) -> Poster {
        self.watch = Some(watch);
        self
    }

    /// Looks at the schedule every `every` until `shutdown`.
    pub async fn run(self, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The due time last said to be held: said once at warn, not at every look.
        let mut held = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.post_once().await {
                Ok(Posted::Sent { due, late }) => {
                    tracing::info!(%due, late, "scheduled report queued for chat")
                }
                Ok(Posted::Started(due)) => {
                    tracing::info!(%due, "report schedule started; the next time will be posted")
                }
                Ok(Posted::Held(due, reason)) if held != Some(due) => {
                    held = Some(due);
                    tracing::warn!(%due, reason, "scheduled report waits for current figures")
                }
                Ok(Posted::Held(due, reason)) => {
                    tracing::debug!(%due, reason, "scheduled report waits for current figures")
                }
                Ok(Posted::Nothing) => {}
                Err(error) => tracing::warn!(%error, "scheduled report not posted; retrying"),
            }
        }
    }

    /// One look: posts the report if a scheduled time passed since the last one posted.
    pub async fn post_once(&self) -> Result<Posted, LedgerError> {
        let now = self.clock.now();
        let Some(due) = latest(&self.slots, now) else {
            return Ok(Posted::Nothing);
        };
        let (done, schedule) = self.dealt_with().await?;
        // A schedule other than the one the marker was dealt with under (none stored: written
        // before this was kept) starts anew, as a new deployment's does: changed to "daily
        // 11:00" at 11:15, today's 11:00 is not posted. Only at this process's first look, so
        // that replicas of the old and the new schedule, in a rolling change, do not keep
        // starting each other anew.
        let changed =
            !self.looked.load(Ordering::Relaxed) && schedule.is_some_and(|s| s != self.schedule());
        if !changed {
            self.looked.store(true, Ordering::Relaxed);
        }
        match done {
            Some(done) if done >= due && !changed => return Ok(Posted::Nothing),
            Some(_) if !changed => {}
            _ => {
                let marked = self.mark(due, Vec::new(), changed).await?;
                self.looked.store(true, Ordering::Relaxed);
                return Ok(if marked {
                    Posted::Started(due)
                } else {
                    Posted::Nothing
                });
            }
        }
        if let Some(watch) = &self.watch {
            let currency = watch.check(now).await;
            if !currency.current {
                let reason = currency.reason.unwrap_or_else(|| "catching up".into());
                return Ok(Posted::Held(due, reason));
            }
        }
        let late = now - due
            > chrono::Duration::from_std(self.settings.report.late_after).unwrap_or_default();
        let digests = self.digests(due, now, late).await?;
        if !self.mark(due, digests, false).await? {
            return Ok(Posted::Nothing);
        }
        metrics::counter!(telemetry::REPORTS_POSTED, "late" => late.to_string()).increment(1);
        Ok(Posted::Sent { due, late })
    }

    /// The last scheduled time dealt with, if any, and the schedule it was dealt with under.
    async fn dealt_with(&self) -> Result<(Option<DateTime<Utc>>, Option<String>), LedgerError> {
        let mut meta = self.ledger.read().await?.meta;
        Ok((marker(&meta), meta.remove(REPORT_SCHEDULE)))
    }

    /// The schedule as stored with the marker, the same however it was spelt (`mon  08:00`
    /// from the environment, `Mon 08:00` from the file).
    fn schedule(&self) -> String {
        let slots: Vec<String> = self
            .settings
            .report
            .schedule
            .iter()
            .map(|s| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            })
            .collect();
        slots.join(", ")
    }

    /// Commits `due` (or, starting `anew` under a changed schedule, the later of it and the
    /// marker) as dealt with, with its digests and the schedule, if the marker still holds
    /// what was read:
    /// the report touches no alert state, so evaluations committing meanwhile (a build takes
    /// seconds) do not refuse it; only another replica's mark does. `false` if another replica
    /// dealt with `due` first, or the marker kept moving (the next look tries again).
    async fn mark(
        &self,
        due: DateTime<Utc>,
        digests: Vec<(String, Digest)>,
        anew: bool,
    ) -> Result<bool, LedgerError> {
        let mut commit = Commit {
            meta: vec![
                (REPORT_DUE, Some(due.to_rfc3339())),
                (REPORT_SCHEDULE, Some(self.schedule())),
            ],
            digests,
            ..Commit::default()
        };
        for _ in 0..MARK_TRIES {
            let read = self.ledger.read().await?;
            let done = marker(&read.meta);
            if !anew && done.is_some_and(|done| done >= due) {
                return Ok(false);
            }
            // The marker never moves back.
            commit.meta[0].1 = Some(done.map_or(due, |d| d.max(due)).to_rfc3339());
            let read_marker = read.meta.get(REPORT_DUE).map(String::as_str);
            if self
                .ledger
                .commit_if(REPORT_DUE, read_marker, &commit)
                .await?
            {
                return Ok(true);
            }
        }
        tracing::debug!(%due, "report marker kept moving; the scheduled report is tried again");
        Ok(false)
    }

    /// The report for each receiver, in its language and markup.
    async fn digests(
        &self,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        late: bool,
    ) -> Result<Vec<(String, Digest)>, LedgerError> {
        let s = &self.settings;
        let names: Vec<&String> = if s.report.receivers.is_empty() {
            s.alerts
                .receivers
                .iter()
                .filter(|(_, r)| r.takes(crate::rules::Route::Taskforce))
                .map(|(name, _)| name)
                .collect()
        } else {
            s.report.receivers.iter().collect()
        };
        // Built once per language, not once per receiver: each build reads weeks of buckets.
        let mut reports: std::collections::BTreeMap<crate::config::Language, Report> =
            Default::default();
        let mut out = Vec::new();
        for name in names {
            let r = &s.alerts.receivers[name];
            let lang = r.language.unwrap_or(s.alerts.language);
            if let std::collections::btree_map::Entry::Vacant(slot) = reports.entry(lang) {
                let built =
                    super::build(&self.store, &self.targets, s, s.alerts.view, lang, now).await?;
                slot.insert(built);
            }
            let report = &reports[&lang];
            let (markup, max) = match r.kind {
                ReceiverKind::Telegram => (Markup::TelegramHtml, TELEGRAM_MAX),
                ReceiverKind::Slack => (Markup::Slack, SLACK_MAX),
                ReceiverKind::Webhook => (Markup::Plain, usize::MAX / 2),
            };
            let mut text = report.chat(markup, late.then_some(due));
            let link = s.http.public_url.trim_end_matches('/');
            if r.kind == ReceiverKind::Slack && !link.is_empty() {
                text.push_str(&format!("\n{}", markup.escape(&format!("{link}/report"))));
            }
            let stamp = due.with_timezone(&vn_offset()).format("%Y-%m-%d");
            let document = (r.kind == ReceiverKind::Telegram).then(|| Document {
                file_name: format!("tiendo-{}-{stamp}.html", file_word(report)),
                caption: markup.escape(&report.title()),
                content: report.html(),
            });
            out.push((
                name.clone(),
                Digest {
                    id: format!("{name}-report-{}", due.timestamp()),
                    at: now,
                    kind: Kind::Report,
                    texts: split(&text, r.max_chars.unwrap_or(max)),
                    document,
                    ..Digest::default()
                },
            ));
        }
        Ok(out)
    }
}

fn file_word(report: &Report) -> &'static str {
    match report.language {
        crate::config::Language::Vi => "bao-cao",
        crate::config::Language::En => "report",
    }
}
