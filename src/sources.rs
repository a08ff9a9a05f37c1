//! Each upstream system's view of its own feed: what it sent, what was counted, what was
//! rejected and why, and whether it has gone quiet. Sources are known by the events'
//! `source_system`; only configured names (`sources.known`) get their own counters and metric
//! labels, everything else is `other`, so hostile input can add no series and no keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::buckets::Tier;

pub use crate::config::OTHER;

/// A source's label: a configured name or [`OTHER`]. Cheap to clone (one per event).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(Arc<str>);

impl Source {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Turns `source_system` values into labels.
#[derive(Debug, Clone)]
pub struct Labels {
    /// Looked up once per event. Publishers choose the names looked up but not the map's
    /// keys, which come from the configuration, so a fast hash rather than SipHash.
    known: FxHashMap<String, Source>,
    other: Source,
}

impl Default for Labels {
    fn default() -> Labels {
        Labels::new(&[])
    }
}

impl Labels {
    pub fn new(known: &[String]) -> Labels {
        Labels {
            known: known
                .iter()
                .map(|n| (n.clone(), Source(Arc::from(n.as_str()))))
                .collect(),
            other: Source(Arc::from(OTHER)),
        }
    }

    pub fn of(&self, name: &str) -> &Source {
        self.known.get(name).unwrap_or(&self.other)
    }

    pub fn other(&self) -> Source {
        self.other.clone()
    }
}

/// Hours kept per source: the 7-day window and one hour more.
pub const HOURS_KEPT: i64 = 7 * 24 + 1;

/// What one source sent in some span: counted events, their records, re-sends counted
/// before, and rejects by reason.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Tally {
    pub events: i64,
    pub records: i64,
    pub duplicates: i64,
    pub rejects: BTreeMap<String, i64>,
}

impl Tally {
    /// Adds a counter as stored in Redis: `e`, `r`, `d` or `x.<reason>`.
    pub fn add(&mut self, counter: &str, v: i64) {
        match counter {
            "e" => self.events += v,
            "r" => self.records += v,
            "d" => self.duplicates += v,
            _ => {
                if let Some(reason) = counter.strip_prefix("x.") {
                    *self.rejects.entry(reason.to_string()).or_default() += v;
                }
            }
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.events += other.events;
        self.records += other.records;
        self.duplicates += other.duplicates;
        for (r, n) in &other.rejects {
            *self.rejects.entry(r.clone()).or_default() += n;
        }
    }

    pub fn rejected(&self) -> i64 {
        self.rejects.values().sum()
    }

    /// Rejected messages over all messages (counted, re-sent and rejected).
    pub fn reject_ratio(&self) -> f64 {
        let all = self.events + self.duplicates + self.rejected();
        if all == 0 {
            0.0
        } else {
            self.rejected() as f64 / all as f64
        }
    }
}

/// A rejected message, as shown: when, where from, and the reason's detail (never the payload).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub at: DateTime<Utc>,
    pub reason: String,
    /// `topic/partition@offset`.
    pub origin: String,
    pub detail: String,
    /// Its place in its partition's list, 0 the newest: orders examples of one batch.
    #[serde(skip)]
    pub slot: u8,
}

/// One source's figures as the store holds them, summed over partitions.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stored {
    pub total: Tally,
    /// By hour bucket of arrival.
    pub hours: BTreeMap<i64, Tally>,
    /// When a message of this source last arrived, and the newest event time it carried.
    pub last_seen: Option<i64>,
    pub last_event: Option<i64>,
    pub examples: Vec<Example>,
}

/// What `tiendo sources` and `/api/v1/sources` show for one source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceView {
    pub name: String,
    /// Configured in `sources.known` (else it is `other`).
    pub known: bool,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_event: Option<DateTime<Utc>>,
    /// A known source that sent nothing for `sources.quiet_after`.
    pub quiet: bool,
    pub last_24h: Window,
    pub last_7d: Window,
    pub total: Tally,
    /// A few recent rejects, newest first.
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    #[serde(flatten)]
    pub tally: Tally,
    pub rejected: i64,
    pub reject_ratio: f64,
}

impl Window {
    fn of(tally: Tally) -> Window {
        Window {
            rejected: tally.rejected(),
            reject_ratio: tally.reject_ratio(),
            tally,
        }
    }
}

/// Examples shown per source.
pub const EXAMPLES_SHOWN: usize = 5;

/// The view of every known source (sent anything or not) and of `other` if it sent anything.
pub fn view(
    known: &[String],
    stored: &BTreeMap<String, Stored>,
    quiet_after: std::time::Duration,
    now: DateTime<Utc>,
) -> Vec<SourceView> {
    let hour = Tier::Hour.bucket(now.timestamp());
    let empty = Stored::default();
    let mut names: Vec<&str> = known.iter().map(String::as_str).collect();
    if stored.contains_key(OTHER) {
        names.push(OTHER);
    }
    names
        .into_iter()
        .map(|name| {
            let s = stored.get(name).unwrap_or(&empty);
            let window = |hours: i64| {
                let mut t = Tally::default();
                for (_, h) in s.hours.range(hour - hours + 1..=hour) {
                    t.merge(h);
                }
                Window::of(t)
            };
            let time = |t: Option<i64>| t.and_then(|t| DateTime::from_timestamp(t, 0));
            let is_known = name != OTHER;
            let quiet = is_known
                && s.last_seen
                    .is_none_or(|t| now.timestamp() - t >= quiet_after.as_secs() as i64);
            let mut examples = s.examples.clone();
            examples.sort_by_key(|e| (std::cmp::Reverse(e.at), e.slot));
            examples.truncate(EXAMPLES_SHOWN);
            SourceView {
                name: name.to_string(),
                known: is_known,
                last_seen: time(s.last_seen),
                last_event: time(s.last_event),
                quiet,
                // The current hour and the whole 24 (or 168) before it: never less than a day
                // (or a week), so a feed that sends once a day does not read 0 when its hour
                // leaves a 24-hour window just before it sends again.
                last_24h: window(25),
                last_7d: window(7 * 24 + 1),
                total: s.total.clone(),
                examples,
            }
        })
        .collect()
}

/// Publishes each source's state as gauges every `every`, for Prometheus rules that page ops
/// (deploy/prometheus/tiendo-alerts.yml): the task force's chat hears nothing of feeds.
pub async fn publish_every(
    store: crate::store::Store,
    settings: crate::config::SourceSettings,
    clock: crate::clock::SharedClock,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock.now();
        match store.sources(now).await {
            Ok(stored) => publish(&view(&settings.known, &stored, settings.quiet_after, now)),
            Err(error) => tracing::debug!(%error, "source figures not read; gauges kept"),
        }
    }
}

fn publish(views: &[SourceView]) {
    use crate::telemetry as t;
    for v in views {
        let source = v.name.clone();
        if let Some(seen) = v.last_seen {
            metrics::gauge!(t::SOURCE_LAST_MESSAGE, "source" => source.clone())
                .set(seen.timestamp() as f64);
        }
        // As the rule source_quiet: a source never heard from has no normal to fall from, so
        // a fresh deployment pages no one for the feeds that have not started yet.
        let quiet = v.quiet && v.last_seen.is_some();
        metrics::gauge!(t::SOURCE_QUIET, "source" => source.clone())
            .set(f64::from(u8::from(quiet)));
        let w = &v.last_24h;
        let messages = w.tally.events + w.tally.duplicates + w.rejected;
        metrics::gauge!(t::SOURCE_MESSAGES_24H, "source" => source.clone()).set(messages as f64);
        metrics::gauge!(t::SOURCE_REJECT_RATIO_24H, "source" => source).set(w.reject_ratio);
    }
}

/// `tiendo sources` as a table: one row per source, then its recent rejects.
pub fn table(views: &[SourceView], now: DateTime<Utc>) -> String {
    use comfy_table::{presets, Cell, CellAlignment, Table};
    let vn = crate::clock::vn_offset();
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "source",
        "last message",
        "events 24h",
        "records 24h",
        "rejected 24h",
        "events 7d",
        "records 7d",
        "rejected 7d",
        "state",
    ]);
    let right = |v: String| Cell::new(v).set_alignment(CellAlignment::Right);
    for v in views {
        let seen = v
            .last_seen
            .map(|t| t.with_timezone(&vn).format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| "never".into());
        let rejected = |w: &Window| match w.rejected {
            0 => "0".to_string(),
            n => format!("{n} ({:.1}%)", 100.0 * w.reject_ratio),
        };
        let state = if v.quiet { "quiet" } else { "" };
        t.add_row([
            Cell::new(&v.name),
            Cell::new(seen),
            right(v.last_24h.tally.events.to_string()),
            right(v.last_24h.tally.records.to_string()),
            right(rejected(&v.last_24h)),
            right(v.last_7d.tally.events.to_string()),
            right(v.last_7d.tally.records.to_string()),
            right(rejected(&v.last_7d)),
            Cell::new(state),
        ]);
    }
    let mut out = format!("{t}\n");
    for v in views.iter().filter(|v| !v.examples.is_empty()) {
        out.push_str(&format!("\n{}: recent rejects\n", v.name));
        for e in &v.examples {
            out.push_str(&format!(
                "  {}  {}  {}  {}\n",
                e.at.with_timezone(&vn).format("%Y-%m-%d %H:%M"),
                e.reason,
                e.origin,
                e.detail
            ));
        }
    }
    out.push_str(&format!(
        "as of {}\n",
        now.with_timezone(&vn).format("%Y-%m-%d %H:%M:%S %:z")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_share_one_label() {
        let labels = Labels::new(&["hotich".to_string()]);
        assert_eq!(labels.of("hotich").as_str(), "hotich");
        assert_eq!(labels.of("anything").as_str(), OTHER);
        assert_eq!(labels.of("").as_str(), OTHER);
    }

    #[test]
    fn windows_count_whole_hours_and_quiet_needs_silence() {
        let now = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let hour = Tier::Hour.bucket(now.timestamp());
        let mut s = Stored::default();
        for (h, events) in [(hour, 3), (hour - 24, 4), (hour - 25, 5), (hour - 200, 6)] {
            s.hours.entry(h).or_default().add("e", events);
        }
        s.hours.entry(hour).or_default().add("x.unknown_dataset", 1);
        s.last_seen = Some(now.timestamp() - 60);
        let stored = BTreeMap::from([("a".to_string(), s)]);
        let known = ["a".to_string(), "b".to_string()];
        let v = view(&known, &stored, std::time::Duration::from_secs(3600), now);
        assert_eq!(v[0].last_24h.tally.events, 7);
        assert_eq!(v[0].last_7d.tally.events, 12);
        assert_eq!(v[0].last_24h.rejected, 1);
        assert_eq!(v[0].last_24h.reject_ratio, 1.0 / 8.0);
        assert!(!v[0].quiet);
        assert!(v[1].quiet, "a known source that never sent is quiet");
        assert_eq!(v.len(), 2, "no `other` row when other sent nothing");
    }
}
