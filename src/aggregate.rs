//! Stage 3: a batch of validated events becomes, per partition, the counter deltas it adds.
//!
//! Everything here is in memory and per batch: a thousand events for one province and dataset
//! become one delta per bucket, so the Redis script that follows does work proportional to
//! distinct counters, not to events.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::buckets::Tier;
use crate::deadletter::DeadLetter;
use crate::decode::{Event, Payload, Reason};
use crate::events::{channel_name, Channel};
use crate::provinces::Unit;
use crate::sources::Source;

/// Where a delta goes: the running total, or one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Total,
    Bucket(Tier, i64),
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Records of the dataset with this index in the configured list.
    Records(u8),
    /// Completed dossiers of a channel.
    Completed(Channel),
    /// Of those, completed on time.
    OnTime(Channel),
    /// Any procedure event: only used for the time of the newest one.
    AnyProcedure,
}

impl Metric {
    /// The name inside a Redis field: `r.land`, `p.online.n`, `p.online.ot`, `p`.
    pub fn render(self, datasets: &[String]) -> String {
        match self {
            Metric::Records(d) => format!("r.{}", datasets[d as usize]),
            Metric::Completed(c) => format!("p.{}.n", channel_name(c)),
            Metric::OnTime(c) => format!("p.{}.ot", channel_name(c)),
            Metric::AnyProcedure => "p".to_string(),
        }
    }
}

/// A counter of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Field {
    pub unit: Unit,
    pub metric: Metric,
}

impl Field {
    /// The Redis hash field: `o94|r.civil_status`.
    pub fn render(self, datasets: &[String]) -> String {
        format!("{}|{}", self.unit, self.metric.render(datasets))
    }
}

/// Deltas by slot and counter: what a batch adds where (see [`Aggregate::cells`]).
pub type Cells = FxHashMap<(Slot, Field), i64>;

/// The deltas of one partition's batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Aggregate {
    /// Deltas by counter and grain of event time (see [`Grains`]); expanded into total, minute,
    /// hour and day slots once per batch by [`Aggregate::cells`], not once per event. Keyed by
    /// small integers built here, never by input, so a fast non-keyed hasher is safe.
    by_grain: FxHashMap<(Field, i64), i64>,
    /// Which grain each event's time is kept by.
    grains: Grains,
    /// Newest event time (unix seconds) seen per field.
    pub latest: FxHashMap<Field, i64>,
    pub dead: HashMap<Reason, i64>,
    /// Events that added to the counters.
    pub counted: u64,
    /// Of those, events whose code table was inferred (see [`Event::inferred`]).
    pub inferred: u64,
    /// What each source sent in this batch (labels are bounded: configured names or `other`).
    pub sources: FxHashMap<Source, SourceDelta>,
}

/// One source's share of a batch: what it sent by the hour it sent it in, the newest few
/// rejects, and its newest event and message times.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SourceDelta {
    /// By hour bucket of the messages' [`Event::sent`]: the source windows count what a
    /// source sent in each hour, so a catch-up or a recount puts days of messages in their
    /// own hours, not all in the one they were read in.
    pub hours: BTreeMap<i64, SourceCounts>,
    /// Per reason, up to [`EXAMPLES_KEPT`] rejects, newest first: when it was sent,
    /// `topic/partition@offset` and the detail.
    pub examples: HashMap<Reason, Vec<(i64, String, String)>>,
    pub last_event: i64,
    /// The newest of its messages' [`Event::sent`]: when it was last heard from.
    pub last_sent: i64,
}

/// What a source sent: counted events and their records, re-sends, and rejects by reason.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SourceCounts {
    pub events: i64,
    pub records: i64,
    pub duplicates: i64,
    pub rejects: HashMap<Reason, i64>,
}

impl SourceCounts {
    fn add(&mut self, other: &SourceCounts) {
        self.events += other.events;
        self.records += other.records;
        self.duplicates += other.duplicates;
        for (reason, n) in &other.rejects {
            *self.rejects.entry(*reason).or_default() += n;
        }
    }
}

impl SourceDelta {
    /// The counts of the hour a message sent at `sent` is in; the message is heard from.
    fn hour(&mut self, sent: i64) -> &mut SourceCounts {
        self.last_sent = self.last_sent.max(sent);
        self.hours.entry(Tier::Hour.bucket(sent)).or_default()
    }

    /// Its counts over every hour.
    pub fn total(&self) -> SourceCounts {
        let mut total = SourceCounts::default();
        for counts in self.hours.values() {
            total.add(counts);
        }
        total
    }
}

/// Examples kept per source and reason (in each partition).
pub const EXAMPLES_KEPT: usize = 3;

impl Aggregate {
    /// An aggregate whose cells are worked out at `since` or later (an hour earlier at most:
    /// see [`Grains`]). The default keeps every event's minute, for cells at any time.
    pub fn since(since: i64) -> Aggregate {
        Aggregate {
            grains: Grains::since(since),
            ..Aggregate::default()
        }
    }

    /// Adds a new (not duplicate) event.
    pub fn add(&mut self, event: &Event) {
        self.counted += 1;
        self.inferred += event.inferred as u64;
        let source = self.source(&event.source);
        source.last_event = source.last_event.max(event.at);
        let counts = source.hour(event.sent);
        counts.events += 1;
        if let Payload::Records { count, .. } = event.payload {
            counts.records += count as i64;
        }
        let grain = self.grains.of(event.at);
        for (field, amount) in counters(event) {
            *self.by_grain.entry((field, grain)).or_default() += amount;
        }
        self.see(seen(event), event.at);
    }

    /// An event already counted (a re-send).
    pub fn duplicate(&mut self, event: &Event) {
        self.source(&event.source).hour(event.sent).duplicates += 1;
    }

    /// This aggregate, of `events` each added as new, as if the events that `events` marks
    /// `false` had been re-sends: what aggregating again would give, in a fraction of the work
    /// when re-sends are few. Their counts are taken back; a newest time is worked out again
    /// only where a re-send may have held it. `events` is called at most twice, each time from
    /// the start.
    pub fn without<'e, I>(&self, events: impl Fn() -> I) -> Aggregate
    where
        I: Iterator<Item = (&'e Event, bool)>,
    {
        let mut agg = self.clone();
        // Fields and sources whose newest time a re-send had: from the fresh events alone.
        let mut stale_fields = FxHashSet::default();
        let mut stale_sources = FxHashSet::default();
        for (event, _) in events().filter(|(_, fresh)| !fresh) {
            agg.take_back(event);
            let field = seen(event);
            if self.latest.get(&field) == Some(&event.at) {
                stale_fields.insert(field);
            }
            if self.sources.get(&event.source).map(|s| s.last_event) == Some(event.at) {
                stale_sources.insert(&event.source);
            }
        }
        if stale_fields.is_empty() && stale_sources.is_empty() {
            return agg;
        }
        for field in &stale_fields {
            agg.latest.remove(field);
        }
        for source in &stale_sources {
            agg.source(source).last_event = 0;
        }
        for (event, _) in events().filter(|(_, fresh)| *fresh) {
            let field = seen(event);
            if stale_fields.contains(&field) {
                agg.see(field, event.at);
            }
            if stale_sources.contains(&event.source) {
                let source = agg.source(&event.source);
                source.last_event = source.last_event.max(event.at);
            }
        }
        agg
    }

    /// What [`Aggregate::cells`] at `now` gives for [`Aggregate::without`] the events
    /// `removed`, from `cells`, this aggregate's own cells at `now`: the re-sends' counters
    /// are taken back from them in place, in work proportional to the re-sends, rather than
    /// the aggregate's counters expanded again. Every event adds a positive amount, so a cell
    /// brought back to zero had nothing from a fresh one and is dropped, as aggregating again
    /// would not have made it.
    pub fn cells_without<'e>(
        &self,
        mut cells: Cells,
        removed: impl Iterator<Item = &'e Event>,
        now: i64,
    ) -> Cells {
        let mut take = |cell: (Slot, Field), amount: i64| {
            if let Some(n) = cells.get_mut(&cell) {
                *n -= amount;
                if *n == 0 {
                    cells.remove(&cell);
                }
            }
        };
        for event in removed {
            let start = self.grains.of(event.at);
            for (field, amount) in counters(event) {
                for slot in slots(start, now) {
                    take((slot, field), amount);
                }
            }
        }
        cells
    }

    /// Undoes [`Aggregate::add`] of an event but for its newest times, and counts it as a
    /// [`Aggregate::duplicate`]. A counter brought back to zero is dropped: every event adds
    /// at least one (a record count of 0 is rejected), so none was added by a fresh one.
    fn take_back(&mut self, event: &Event) {
        self.counted -= 1;
        self.inferred -= event.inferred as u64;
        let counts = self.source(&event.source).hour(event.sent);
        counts.events -= 1;
        counts.duplicates += 1;
        if let Payload::Records { count, .. } = event.payload {
            counts.records -= count as i64;
        }
        let grain = self.grains.of(event.at);
        for (field, amount) in counters(event) {
            self.take_counter((field, grain), amount);
        }
    }

    fn take_counter(&mut self, key: (Field, i64), amount: i64) {
        if let Some(n) = self.by_grain.get_mut(&key) {
            *n -= amount;
            if *n == 0 {
                self.by_grain.remove(&key);
            }
        }
    }

    /// A source's share, cloning its label only the first time in a batch.
    fn source(&mut self, source: &Source) -> &mut SourceDelta {
        if !self.sources.contains_key(source) {
            self.sources.insert(source.clone(), SourceDelta::default());
        }
        self.sources.get_mut(source).expect("inserted above")
    }

    pub fn dead_letter(&mut self, letter: &DeadLetter) {
        *self.dead.entry(letter.reason).or_default() += 1;
        let source = self.sources.entry(letter.source.clone()).or_default();
        *source
            .hour(letter.sent)
            .rejects
            .entry(letter.reason)
            .or_default() += 1;
        let examples = source.examples.entry(letter.reason).or_default();
        let origin = format!("{}/{}@{}", letter.topic, letter.partition, letter.offset);
        // Details quote what was sent (a dataset name, a JSON error): shown on terminals and
        // pages, so no control characters.
        let detail = letter
            .detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        examples.insert(0, (letter.sent, origin, detail));
        examples.truncate(EXAMPLES_KEPT);
    }

    /// Whether [`Aggregate::cells`] at `now` are exact: not if the clock went back more than
    /// the slack since the grains were chosen (see [`Grains`]); then aggregate again.
    pub fn keyed_for(&self, now: i64) -> bool {
        now >= self.grains.earliest
    }

    /// The deltas per slot: the total, and each time bucket still young enough at `now` to
    /// be read by some window (where [`Aggregate::keyed_for`] `now`).
    pub fn cells(&self, now: i64) -> Cells {
        let mut cells =
            FxHashMap::with_capacity_and_hasher(self.by_grain.len() * 2, Default::default());
        for ((field, start), amount) in &self.by_grain {
            for slot in slots(*start, now) {
                *cells.entry((slot, *field)).or_default() += amount;
            }
        }
        cells
    }

    fn see(&mut self, field: Field, at: i64) {
        let t = self.latest.entry(field).or_insert(at);
        *t = (*t).max(at);
    }
}

/// The slots a counter of the grain starting at `start` adds to at `now`: the total, and each
/// tier's bucket of it still young enough to be read by some window. [`Aggregate::cells`] and
/// [`Aggregate::cells_without`] both take them from here, so they cannot disagree.
fn slots(start: i64, now: i64) -> impl Iterator<Item = Slot> {
    let buckets = Tier::ALL.into_iter().filter_map(move |tier| {
        let b = tier.bucket(start);
        tier.ttl(b, now).map(|_| Slot::Bucket(tier, b))
    });
    std::iter::once(Slot::Total).chain(buckets)
}

/// How far a clock may be stepped back between choosing grains and working out cells.
const GRAIN_SLACK: i64 = 3600;

/// An event's counters are kept by the finest bucket of its time that cells worked out at
/// `earliest` or later may write: its minute, or its hour or day once the finer buckets are
/// too old for any window then. A backfill's events then add to one entry per counter and
/// day, where minutes would give nearly each its own. Buckets of a grain's start are the
/// event's in the grain's tier and the coarser ones, and too old in the finer ones, so cells
/// are what minutes would give. `earliest` is the batch's time less a slack, so that a clock
/// stepped back a little before storing keeps them exact; a larger step aggregates again.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Grains {
    /// The earliest time cells are exact at.
    earliest: i64,
    /// Events from this time on keep their minute.
    minutes_from: i64,
    /// Older ones from this time on keep their hour, and the rest their day.
    hours_from: i64,
}

impl Default for Grains {
    fn default() -> Grains {
        Grains {
            earliest: i64::MIN,
            minutes_from: i64::MIN,
            hours_from: i64::MIN,
        }
    }
}

impl Grains {
    /// For cells worked out at `now` less the slack or later. A bucket has no time to live
    /// then (see [`Tier::ttl`]) exactly when it ended a retention or more before.
    fn since(now: i64) -> Grains {
        let earliest = now - GRAIN_SLACK;
        let from = |tier: Tier| tier.start(tier.bucket(earliest - tier.retention()));
        Grains {
            earliest,
            minutes_from: from(Tier::Minute),
            hours_from: from(Tier::Hour),
        }
    }

    /// The start of the grain of time `at`.
    fn of(self, at: i64) -> i64 {
        let tier = if at >= self.minutes_from {
            Tier::Minute
        } else if at >= self.hours_from {
            Tier::Hour
        } else {
            Tier::Day
        };
        tier.start(tier.bucket(at))
    }
}

/// The counters an event adds to, and by how much.
fn counters(event: &Event) -> impl Iterator<Item = (Field, i64)> {
    let field = |metric| Field {
        unit: event.unit,
        metric,
    };
    let [first, second] = match event.payload {
        Payload::Records { dataset, count } => {
            [Some((field(Metric::Records(dataset)), count as i64)), None]
        }
        Payload::Procedure { channel, on_time } => [
            Some((field(Metric::Completed(channel)), 1)),
            on_time.then(|| (field(Metric::OnTime(channel)), 1)),
        ],
    };
    first.into_iter().chain(second)
}

/// The field whose newest time an event moves.
fn seen(event: &Event) -> Field {
    let metric = match event.payload {
        Payload::Records { dataset, .. } => Metric::Records(dataset),
        Payload::Procedure { .. } => Metric::AnyProcedure,
    };
    Field {
        unit: event.unit,
        metric,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CHANNELS;
    use crate::provinces::Scheme;

    fn ev(code: u8, at: i64, count: u64) -> Event {
        Event {
            inferred: false,
            id: crate::store::IdKey::of(&format!("e{at}")),
            unit: Unit {
                scheme: Scheme::Legacy63,
                code,
            },
            at,
            payload: Payload::Records { dataset: 1, count },
            source: crate::sources::Labels::default().other(),
            sent: at,
        }
    }

    #[test]
    fn many_events_become_one_delta_per_bucket() {
        let now = 1_727_740_800; // 2024-10-01T00:00:00Z
        let mut agg = Aggregate::default();
        for i in 0..1000 {
            agg.add(&ev(1, now - 30 + (i % 20), 3));
        }
        let cells = agg.cells(now);
        let field = Field {
            unit: Unit {
                scheme: Scheme::Legacy63,
                code: 1,
            },
            metric: Metric::Records(1),
        };
        assert_eq!(cells[&(Slot::Total, field)], 3000);
        // total + minute + hour + day
        assert_eq!(cells.len(), 4);
        assert_eq!(agg.latest[&field], now - 11);
        assert_eq!(agg.counted, 1000);
    }

    #[test]
    fn old_events_count_in_total_and_day_but_not_minute() {
        let now = 1_727_740_800;
        let mut agg = Aggregate::default();
        agg.add(&ev(1, now - 10 * 86_400, 5));
        let tiers: Vec<Slot> = agg.cells(now).keys().map(|(s, _)| *s).collect();
        assert!(tiers.contains(&Slot::Total));
        assert!(!tiers
            .iter()
            .any(|s| matches!(s, Slot::Bucket(Tier::Minute, _))));
        assert!(tiers
            .iter()
            .any(|s| matches!(s, Slot::Bucket(Tier::Day, _))));
    }

    /// Events keyed by grain give the cells that keying every event by its minute gives, at
    /// the time grains were chosen for, later, and up to the slack earlier; a backfill's events
    /// fall into far fewer entries.
    #[test]
    fn grains_give_the_cells_minutes_give() {
        let since = 1_727_740_800;
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..200 {
            let (mut grains, mut minutes) = (Aggregate::since(since), Aggregate::default());
            for _ in 0..rng.usize(0..400) {
                // Mostly a backfill over 60 days, some within the last hours, a few ahead.
                let back = match rng.u8(0..4) {
                    0 => rng.i64(-600..6 * 3600),
                    1 => rng.i64(0..3 * 86_400),
                    _ => rng.i64(0..60 * 86_400),
                };
                let e = ev(rng.u8(1..4), since - back, rng.u64(1..5));
                grains.add(&e);
                minutes.add(&e);
            }
            assert!(grains.by_grain.len() <= minutes.by_grain.len());
            assert!(!grains.keyed_for(since - GRAIN_SLACK - 1));
            for now in [
                since - GRAIN_SLACK,
                since,
                since + 1,
                since + 3 * 3600,
                since + 3 * 86_400,
            ] {
                assert_eq!(
                    grains.cells(now),
                    minutes.cells(now),
                    "round {round}, now {now}"
                );
            }
        }
        // Each event's grain is the first tier whose bucket of it lives at the earliest time
        // cells may be worked out, to the second around each change of grain.
        let grains = Grains::since(since);
        let then = since - GRAIN_SLACK;
        let edges = [Tier::Minute, Tier::Hour].map(|t| t.start(t.bucket(then - t.retention())));
        for at in edges.iter().flat_map(|e| e - 90..e + 90) {
            let tier = Tier::ALL
                .into_iter()
                .find(|t| t.ttl(t.bucket(at), then).is_some())
                .unwrap_or(Tier::Day);
            assert_eq!(grains.of(at), tier.start(tier.bucket(at)), "at {at}");
        }
        let mut backfill = Aggregate::since(since);
        for i in 0..10_000 {
            backfill.add(&ev(1, since - 3 * 86_400 - i * 517, 1));
        }
        // 59.8 days back from three days ago: 61 calendar days, an entry each.
        assert_eq!(backfill.by_grain.len(), 61);
    }

    /// Taking the re-sends back from an aggregate of all events gives what aggregating only
    /// the fresh ones gives, newest times included, over random batches with ties in time.
    #[test]
    fn taking_re_sends_back_is_aggregating_the_fresh_again() {
        let labels = crate::sources::Labels::new(&["hotich".into(), "dat_dai".into()]);
        let sources = [
            labels.of("hotich").clone(),
            labels.of("dat_dai").clone(),
            labels.other(),
        ];
        let mut rng = fastrand::Rng::with_seed(12);
        for round in 0..2_000 {
            let now = 1_727_740_800;
            let n = rng.usize(0..60);
            let events: Vec<Event> = (0..n)
                .map(|i| Event {
                    inferred: rng.bool(),
                    id: crate::store::IdKey::of(&format!("e{i}")),
                    unit: Unit {
                        scheme: Scheme::Legacy63,
                        code: rng.u8(1..4),
                    },
                    // Few distinct times, so that re-sends often hold the newest; minutes
                    // apart or days apart, so that some share a grain coarser than a minute.
                    at: now - [60, 86_400][rng.usize(0..2)] * rng.i64(0..5) - rng.i64(0..3),
                    payload: if rng.bool() {
                        Payload::Records {
                            dataset: rng.u8(0..3),
                            count: rng.u64(1..5),
                        }
                    } else {
                        Payload::Procedure {
                            channel: CHANNELS[rng.usize(0..CHANNELS.len())],
                            on_time: rng.bool(),
                        }
                    },
                    source: sources[rng.usize(0..sources.len())].clone(),
                    // Sent in one of a few hours, so a re-send is taken back from its own.
                    sent: now - 3600 * rng.i64(0..3),
                })
                .collect();
            // From none to all re-sent, by round.
            let share = (round % 5) as f64 / 4.0;
            let fresh: Vec<bool> = events.iter().map(|_| rng.f64() >= share).collect();
            let mut all = Aggregate::since(now);
            let mut again = Aggregate::since(now);
            for (e, f) in events.iter().zip(&fresh) {
                all.add(e);
                if *f {
                    again.add(e);
                } else {
                    again.duplicate(e);
                }
            }
            // Dead letters are no event: both keep them as they are.
            for offset in 0..rng.usize(0..3) {
                let letter = DeadLetter {
                    topic: "records".into(),
                    partition: 0,
                    offset: offset as i64,
                    key: None,
                    payload: Vec::new(),
                    reason: Reason::ZeroRecordCount,
                    detail: "record_count is 0".into(),
                    source: sources[rng.usize(0..sources.len())].clone(),
                    sent: now - 3600 * rng.i64(0..3),
                };
                all.dead_letter(&letter);
                again.dead_letter(&letter);
            }
            let taken = all.without(|| events.iter().zip(fresh.iter().copied()));
            assert_eq!(taken, again, "round {round}");
            // And so do their cells, at the time and later, as buckets age out of reach.
            for t in [now, now + 3600, now + 2 * 86_400, now + 40 * 86_400] {
                let removed = events.iter().zip(&fresh).filter(|(_, f)| !**f);
                let cells = all.cells_without(all.cells(t), removed.map(|(e, _)| e), t);
                assert_eq!(cells, again.cells(t), "round {round}, at {t}");
            }
        }
    }

    #[test]
    fn field_names_are_stable() {
        let ds = vec!["civil_status".to_string(), "land".to_string()];
        let f = Field {
            unit: Unit {
                scheme: Scheme::Legacy63,
                code: 94,
            },
            metric: Metric::Records(1),
        };
        assert_eq!(f.render(&ds), "o94|r.land");
        assert_eq!(
            Metric::OnTime(Channel::OnlineEndToEnd).render(&ds),
            "p.online.ot"
        );
    }
}
