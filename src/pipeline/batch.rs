//! One batch in memory: messages decoded into per-partition parts, then stored as one unit
//! (claims, aggregation, the atomic script per partition). Kafka-free, so the benchmark drives
//! exactly this code with pre-encoded messages.

use std::borrow::Cow;
use std::collections::HashMap;

use futures::FutureExt;
use rustc_hash::FxHashMap;

use crate::aggregate::{Aggregate, Cells};
use crate::deadletter::DeadLetter;
use crate::decode::{Event, Validator};
use crate::events::Kind;
use crate::sources::Source;
use crate::store::{
    Applied, Claim, ClaimPlan, Current, Held, HeldView, PartitionBatch, Store, StoreError, Written,
};

/// One partition's share of a batch.
#[derive(Debug)]
pub struct Part {
    /// Index of the topic in the pipeline's topic list.
    pub t: usize,
    pub kind: Kind,
    pub topic: String,
    pub partition: i32,
    /// First offset in this batch.
    pub start: i64,
    /// Offset after the last message in this batch.
    pub next: i64,
    /// The stored offset this batch follows (the script's fence; `None`: nothing stored),
    /// set by the storer just before storing.
    pub expected: Option<i64>,
    pub events: Vec<(Event, i64)>,
    pub dead: Vec<DeadLetter>,
    /// Messages dropped because they were delivered again: repeats of ones this part holds,
    /// and those of the part it replaced when fetching went back (they come again), so that
    /// every message consumed has one outcome.
    pub redelivered: u64,
}

impl Part {
    /// Whether a message at `offset` is in this part. Events and dead letters are each in
    /// offset order: a part only grows forward.
    fn holds(&self, offset: i64) -> bool {
        self.events
            .binary_search_by_key(&offset, |(_, o)| *o)
            .is_ok()
            || self
                .dead
                .binary_search_by_key(&offset, |l| l.offset)
                .is_ok()
    }

    /// Drops the messages below `stored` (already counted); returns how many.
    pub fn trim_below(&mut self, stored: i64) -> u64 {
        if self.start >= stored {
            return 0;
        }
        let before = self.events.len() + self.dead.len();
        self.events.retain(|(_, o)| *o >= stored);
        self.dead.retain(|l| l.offset >= stored);
        self.start = stored.min(self.next);
        (before - self.events.len() - self.dead.len()) as u64
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub t: usize,
    pub kind: Kind,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The message's Kafka timestamp, unix seconds, when it carries one.
    pub sent: Option<i64>,
}

/// A batch being collected or stored.
#[derive(Debug, Default)]
pub struct Batch {
    /// By (topic index, partition): bounded keys, not chosen by publishers, and looked up
    /// per message, so a fast hash rather than SipHash.
    parts: FxHashMap<(usize, i32), Part>,
    messages: usize,
    /// Bytes of payload and key the dead letters hold: see [`Batch::dead_bytes`].
    dead_bytes: usize,
    sealed: Option<Sealed>,
}

/// The part of storing a batch that needs only its messages: the claims grouped (their ids
/// were digested at decode), and every message aggregated (each event as if new). Done by
/// [`Batch::seal`] on the collecting side, so it runs while the batch before is being stored;
/// used only if the batch is still what was sealed.
#[derive(Debug)]
struct Sealed {
    shape: Vec<Shape>,
    plan: ClaimPlan,
    all: Vec<Aggregate>,
}

/// What of a part the sealed work depends on, in the order of `parts`.
type Shape = (usize, i32, i64, i64, usize, usize);

fn shape(parts: &[&Part]) -> Vec<Shape> {
    parts
        .iter()
        .map(|p| {
            (
                p.t,
                p.partition,
                p.start,
                p.next,
                p.events.len(),
                p.dead.len(),
            )
        })
        .collect()
}

/// What a [`Read`] was made of: each part's stored offset to follow, and its `shape`.
fn key(parts: &[&Part], shape: Vec<Shape>) -> Vec<(Option<i64>, Shape)> {
    parts.iter().map(|p| p.expected).zip(shape).collect()
}

impl Sealed {
    fn new(parts: &[&Part], store: &Store, now: i64) -> Sealed {
        let claims: Vec<Claim> = parts
            .iter()
            .flat_map(|p| {
                p.events.iter().map(move |(e, offset)| Claim {
                    kind: p.kind,
                    id: e.id,
                    partition: p.partition,
                    offset: *offset,
                    at: e.at,
                })
            })
            .collect();
        Sealed {
            shape: shape(parts),
            plan: store.plan_claims(&claims),
            // Every event's counters are read while the claims are made (see
            // `Store::current`): what the fresh ones add to is among them.
            all: parts.iter().map(|p| aggregate(p, now)).collect(),
        }
    }
}

/// The outcome for one partition of a stored batch.
#[derive(Debug)]
pub struct Outcome {
    pub applied: Applied,
    /// Events that added to the counters (the rest of the events were duplicates).
    pub counted: u64,
    /// Of those, events whose code table was inferred.
    pub inferred: u64,
    /// Events per source, counted and re-sent alike (sources with none left out).
    pub by_source: Vec<(Source, u64)>,
    /// The counters the batch wrote whole, for the partition's next batch not to read them
    /// again (see [`Held`]); `None` where it added to them blind.
    pub held: Option<Held>,
}

/// What a storer holds of each partition's counters between batches (see [`Held`]).
#[derive(Debug, Default)]
pub struct HeldCounters {
    by_partition: HashMap<(usize, i32), Held>,
    /// Counters held in all partitions.
    len: usize,
}

/// The most counters held from before each partition's last batch, all partitions together:
/// about 60 bytes each. A backfill of 60 days adds to some ten thousand counters per
/// partition; where a partition's would exceed this, it holds only its last batch's.
const HELD_MAX: usize = 200_000;

impl HeldCounters {
    pub fn new() -> HeldCounters {
        HeldCounters::default()
    }

    /// What is held of `part`'s partition.
    pub fn get(&self, part: &Part) -> Option<&Held> {
        self.by_partition.get(&(part.t, part.partition))
    }

    /// Keeps what `part`'s batch wrote whole (its outcome's `held`), or forgets the
    /// partition's counters if it wrote none.
    pub fn keep(&mut self, part: &Part, held: Option<Held>) {
        let key = (part.t, part.partition);
        let Some(next) = held else {
            return self.forget(key);
        };
        let before = self.by_partition.get(&key).map_or(0, Held::len);
        let after = match self.by_partition.get_mut(&key) {
            Some(h) => {
                h.update(next, HELD_MAX.saturating_sub(self.len - before));
                h.len()
            }
            None => {
                let len = next.len();
                self.by_partition.insert(key, next);
                len
            }
        };
        self.len = self.len - before + after;
    }

    /// Forgets what is held of partition (topic index, partition).
    pub fn forget(&mut self, key: (usize, i32)) {
        if let Some(h) = self.by_partition.remove(&key) {
            self.len -= h.len();
        }
    }

    /// Keeps the partitions (topic index, partition) for which `keep` says so.
    pub fn retain(&mut self, mut keep: impl FnMut(&(usize, i32)) -> bool) {
        self.by_partition.retain(|k, _| keep(k));
        self.len = self.by_partition.values().map(Held::len).sum();
    }

    /// How many counters are held in all.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Bytes of payload and key the batch's dead letters held as it was collected. A good
    /// event keeps only what it decoded to, but a dead letter keeps its whole message to
    /// deliver it, so a flood of large poison is bounded by this, not by a count.
    pub fn dead_bytes(&self) -> usize {
        self.dead_bytes
    }

    /// Decodes one message into its partition's part; bad input becomes a dead letter.
    ///
    /// An offset the part already holds is a message delivered again and is dropped: a
    /// broker may repeat record batches within one fetch answer (Tansu 0.6 does when a fetch
    /// starts inside a batch), and nothing after them arrives twice. Any other offset below
    /// the part's end means fetching went back (a seek, or a partition revoked and assigned
    /// again mid-batch): everything after it arrives again, so the part restarts there.
    pub fn push(
        &mut self,
        from: Origin<'_>,
        key: Option<&[u8]>,
        payload: &[u8],
        validator: &Validator,
        now: i64,
    ) {
        let mut replaced = 0;
        if let Some(part) = self.parts.get_mut(&(from.t, from.partition)) {
            if from.offset < part.next {
                if part.holds(from.offset) {
                    part.redelivered += 1;
                    return;
                }
                // Below the part, or in a hole inside it: fetching went back.
                replaced = part.redelivered + (part.events.len() + part.dead.len()) as u64;
                self.dead_bytes -= part.dead.iter().map(DeadLetter::size).sum::<usize>();
                self.parts.remove(&(from.t, from.partition));
            }
        }
        self.messages += 1;
        let part = self
            .parts
            .entry((from.t, from.partition))
            .or_insert_with(|| Part {
                t: from.t,
                kind: from.kind,
                topic: from.topic.to_string(),
                partition: from.partition,
                start: from.offset,
                next: from.offset,
                expected: None,
                events: Vec::new(),
                dead: Vec::new(),
                redelivered: replaced,
            });
        part.next = from.offset + 1;
        // When the source sent it, by the broker's word: a catch-up reads days of messages
        // within a minute. Never later than the batch's time, which a producer's clock ahead
        // (or a message stamped in the future) would otherwise pass.
        let sent = from.sent.map_or(now, |t| t.min(now));
        match validator.decode(from.kind, payload, now) {
            Ok(mut event) => {
                event.sent = sent;
                part.events.push((event, from.offset));
            }
            Err(rejected) => {
                let letter = DeadLetter {
                    topic: part.topic.clone(),
                    partition: from.partition,
                    offset: from.offset,
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.to_vec(),
                    reason: rejected.reason,
                    detail: rejected.detail,
                    source: rejected.source.unwrap_or_else(|| validator.other_source()),
                    sent,
                };
                self.dead_bytes += letter.size();
                part.dead.push(letter);
            }
        }
    }

    pub fn parts(&self) -> impl Iterator<Item = &Part> {
        self.parts.values()
    }

    pub fn parts_mut(&mut self) -> impl Iterator<Item = &mut Part> {
        self.parts.values_mut()
    }

    /// Keeps the parts for which `keep` says so; `keep` may also change them.
    pub fn retain_parts(&mut self, mut keep: impl FnMut(&mut Part) -> bool) {
        self.parts.retain(|_, p| keep(p));
    }

    /// The batch's rejected messages, borrowed: a payload may be megabytes.
    pub fn dead_letters(&self) -> Vec<&DeadLetter> {
        self.parts.values().flat_map(|p| &p.dead).collect()
    }

    /// Does ahead what storing needs of the messages alone (see [`Sealed`]), for a store at
    /// `now` or later. The pipeline's collector calls it when a batch closes; a batch stored
    /// unsealed does it then.
    pub fn seal(&mut self, store: &Store, now: i64) {
        let parts: Vec<&Part> = self.parts.values().collect();
        let sealed = Sealed::new(&parts, store, now);
        self.sealed = Some(sealed);
    }

    /// Claims, aggregates and applies the whole batch. Retried as a unit: if Redis failed
    /// (or restarted and lost writes) half-way, claims are made again before any counter.
    /// `held` is what the caller kept of the outcomes' `held` since its last batches.
    pub async fn store(
        &self,
        store: &Store,
        held: &HeldCounters,
        now: i64,
    ) -> Result<Vec<(&Part, Outcome)>, StoreError> {
        let mut read = self.read(store, held, now).await?;
        let now = read.now;
        let writes = self.writes(&mut read);
        let batches = writes.batches();
        let writer = store.writer();
        // What each partition holds if the batch is written whole: worked out after the
        // apply request is handed to the connection, so that where another thread drives the
        // connection it runs while Redis applies, not on the path from one batch to the next.
        let after = async { writes.after(&writer) };
        let (written, after) = futures::join!(store.apply(&batches, &writer, now), after);
        let written = written?;
        drop(batches);
        Ok(writes.outcomes(written, after))
    }

    /// The first round trip of [`Batch::store`], with what is held of each partition's
    /// counters from `held`.
    pub async fn read(
        &self,
        store: &Store,
        held: &HeldCounters,
        now: i64,
    ) -> Result<Read, StoreError> {
        let views: Vec<Option<HeldView<'_>>> = self
            .parts
            .values()
            .map(|p| held.get(p).map(HeldView::from))
            .collect();
        self.read_with(store, &views, now).await
    }

    /// Claims the events and reads the counters they add to, but for those `held` (one view
    /// per part, in the order of [`Batch::parts`]) gives, for a store at `now`.
    pub async fn read_with(
        &self,
        store: &Store,
        held: &[Option<HeldView<'_>>],
        now: i64,
    ) -> Result<Read, StoreError> {
        let parts: Vec<&Part> = self.parts.values().collect();
        let shape = shape(&parts);
        // Sealed work is kept only if nothing changed since: the storer drops what is already
        // stored or no longer ours, which changes the shape, and a clock stepped far back
        // changes which buckets are still written.
        let fits = |s: &Sealed| s.shape == shape && s.all.iter().all(|a| a.keyed_for(now));
        let resealed = match &self.sealed {
            Some(s) if fits(s) => None,
            _ => Some(Sealed::new(&parts, store, now)),
        };
        let (fresh, current, cells) = {
            let sealed = resealed.as_ref().or(self.sealed.as_ref()).expect("sealed");
            let claiming = store.claim(&sealed.plan);
            tokio::pin!(claiming);
            // Polled once, so that the claims are on their way before the cells are worked out.
            let claimed = claiming.as_mut().now_or_never();
            // Worked out here, while Redis claims (this read is mostly made while the batch before
            // is written, too), and kept: the writes take the re-sends' counters back from them
            // rather than working them out again on the way to Redis.
            let cells: Vec<Cells> = sealed.all.iter().map(|a| a.cells(now)).collect();
            let reads: Vec<PartitionBatch<'_>> = parts
                .iter()
                .zip(&sealed.all)
                .zip(held)
                .zip(&cells)
                .map(|(((p, agg), held), cells)| PartitionBatch {
                    held: *held,
                    cells: Some(cells),
                    ..partition_batch(p, agg, None)
                })
                .collect();
            let claimed = async {
                match claimed {
                    Some(fresh) => fresh,
                    None => claiming.await,
                }
            };
            let (fresh, current) = futures::try_join!(claimed, store.current(&reads, now))?;
            (fresh, current, cells)
        };
        Ok(Read {
            key: key(&parts, shape),
            now,
            fresh,
            current,
            cells,
            resealed,
        })
    }

    /// Whether `read` was made of this batch as it is now: the same parts and messages, each
    /// following the same stored offset.
    pub fn fits(&self, read: &Read) -> bool {
        let parts: Vec<&Part> = self.parts.values().collect();
        read.key == key(&parts, shape(&parts))
    }

    /// What the batch writes, from its `read`, which must fit it (see [`Batch::fits`]). The
    /// read's cells move into the writes: a read is written once.
    pub fn writes<'b: 'r, 'r>(&'b self, read: &'r mut Read) -> Writes<'b, 'r> {
        let parts: Vec<&Part> = self.parts.values().collect();
        let cells = std::mem::take(&mut read.cells);
        let read: &'r Read = read;
        let sealed = read.resealed.as_ref().or(self.sealed.as_ref());
        let sealed = sealed.expect("a read batch was sealed");
        // What each partition adds: its sealed aggregate, with the re-sends taken back, and
        // its cells (for the apply call and for what each partition holds after it) likewise
        // from the read's, amended in place rather than copied.
        let mut fresh = read.fresh.as_slice();
        let (aggregates, cells): (Vec<Cow<'r, Aggregate>>, Vec<Cells>) = parts
            .iter()
            .zip(&sealed.all)
            .zip(cells)
            .map(|((p, all), cells)| {
                let (mine, rest) = fresh.split_at(p.events.len().min(fresh.len()));
                fresh = rest;
                if mine.iter().all(|f| *f) {
                    return (Cow::Borrowed(all), cells);
                }
                // `fresh` answers each event in the parts' order; were one missing, it counts.
                let marks = || mine.iter().copied().chain(std::iter::repeat(true));
                let events = || p.events.iter().map(|(e, _)| e).zip(marks());
                let resent = events().filter(|(_, f)| !f).map(|(e, _)| e);
                (
                    Cow::Owned(all.without(events)),
                    all.cells_without(cells, resent, read.now),
                )
            })
            .unzip();
        Writes {
            parts,
            aggregates,
            cells,
            read,
        }
    }
}

/// The first round trip of storing a batch, answered: which events are new, and the counters
/// each partition adds to. It borrows nothing, so that the storer can make it for the next
/// batch while this one's counters are written; it is used only if it still fits the batch.
#[derive(Debug)]
pub struct Read {
    /// Each part's stored offset to follow and shape, in the order of the parts.
    key: Vec<(Option<i64>, Shape)>,
    /// The time it was made for, which the counters are then written for too.
    now: i64,
    fresh: Vec<bool>,
    current: Vec<Option<Current>>,
    /// The cells at `now` of each part's sealed aggregate, every event taken as new; moved
    /// into the batch's [`Writes`].
    cells: Vec<Cells>,
    /// Where the batch's own sealed work did not fit: the work done again.
    resealed: Option<Sealed>,
}

impl Read {
    /// The time the batch is stored for.
    pub fn now(&self) -> i64 {
        self.now
    }
}

/// What a batch (borrowed for `'b`) writes, from its read (for `'r`; see [`Batch::writes`]).
pub struct Writes<'b, 'r> {
    parts: Vec<&'b Part>,
    aggregates: Vec<Cow<'r, Aggregate>>,
    cells: Vec<Cells>,
    read: &'r Read,
}

impl<'b, 'r> Writes<'b, 'r> {
    /// The partition batches for [`Store::apply`].
    pub fn batches(&self) -> Vec<PartitionBatch<'_>> {
        self.parts
            .iter()
            .zip(&self.aggregates)
            .zip(&self.cells)
            .zip(&self.read.current)
            .map(|(((p, agg), cells), current)| PartitionBatch {
                cells: Some(cells),
                ..partition_batch(p, agg, current.as_ref())
            })
            .collect()
    }

    /// What each partition holds (in the order of the parts) if the batch is written whole
    /// under `writer`; `None` where some counter is added blind.
    pub fn after(&self, writer: &str) -> Vec<Option<Held>> {
        self.parts
            .iter()
            .zip(&self.cells)
            .zip(&self.read.current)
            .map(|((p, cells), current)| {
                let offsets = (p.expected.unwrap_or(-1), p.next);
                let now = self.read.now;
                current
                    .as_ref()
                    .map(|c| Held::after(c, cells, now, offsets, writer.to_string()))
            })
            .collect()
    }

    /// Each part's outcome, once Redis answered the apply with `written`; `after` is what
    /// [`Writes::after`] gave for its writer.
    pub fn outcomes(self, written: Written, after: Vec<Option<Held>>) -> Vec<(&'b Part, Outcome)> {
        self.parts
            .into_iter()
            .zip(self.aggregates.iter().zip(written.applied))
            .zip(after)
            .map(|((p, (agg, applied)), after)| {
                let held = after.filter(|_| written.whole && applied == Applied::Stored);
                (
                    p,
                    Outcome {
                        applied,
                        counted: agg.counted,
                        inferred: agg.inferred,
                        by_source: events_by_source(agg),
                        held,
                    },
                )
            })
            .collect()
    }
}

/// The counters of a part's events, each counted as new (re-sends are taken back once the
/// claims tell them; see [`Aggregate::without`]), and of its dead letters, for a store at
/// `now` or later.
fn aggregate(part: &Part, now: i64) -> Aggregate {
    let mut agg = Aggregate::since(now);
    for (event, _) in &part.events {
        agg.add(event);
    }
    for letter in &part.dead {
        agg.dead_letter(letter);
    }
    agg
}

/// A part's events per source, from its aggregate: each event is there once, as counted or
/// as a re-send, so the events need not be gone through again.
fn events_by_source(agg: &Aggregate) -> Vec<(Source, u64)> {
    agg.sources
        .iter()
        .map(|(source, d)| {
            let n: i64 = d.hours.values().map(|c| c.events + c.duplicates).sum();
            (source.clone(), n as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn partition_batch<'a>(
    part: &'a Part,
    aggregate: &'a Aggregate,
    current: Option<&'a Current>,
) -> PartitionBatch<'a> {
    PartitionBatch {
        topic: &part.topic,
        partition: part.partition,
        expected: part.expected.unwrap_or(-1),
        next: part.next,
        aggregate,
        cells: None,
        current,
        held: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValidationSettings;

    /// Pushes empty payloads at `offsets` of partition 0; returns the part's start, next,
    /// the offsets it holds and how many it dropped as delivered again.
    fn part_after(offsets: impl IntoIterator<Item = i64>) -> (i64, i64, Vec<i64>, u64) {
        let validator = Validator::new(&ValidationSettings::default());
        let mut batch = Batch::default();
        for offset in offsets {
            let from = Origin {
                t: 0,
                kind: Kind::Records,
                topic: "records",
                partition: 0,
                offset,
                sent: None,
            };
            batch.push(from, None, &[], &validator, 0);
        }
        let part = batch.parts().next().expect("a part");
        let mut held: Vec<i64> = part.dead.iter().map(|l| l.offset).collect();
        held.extend(part.events.iter().map(|(_, o)| *o));
        held.sort_unstable();
        (part.start, part.next, held, part.redelivered)
    }

    /// What a batch wrote whole, over what `over` wrote: the counters of days `days`.
    fn written(days: std::ops::Range<usize>, writer: &str, over: Option<&str>) -> Held {
        use crate::aggregate::{Field, Metric, Slot};
        use crate::provinces::{Scheme, Unit};
        let values = days
            .map(|i| {
                let unit = Unit {
                    scheme: Scheme::Current34,
                    code: 1,
                };
                let field = Field {
                    unit,
                    metric: Metric::Records(0),
                };
                (
                    (Slot::Bucket(crate::buckets::Tier::Day, i as i64), field),
                    1,
                )
            })
            .collect();
        let over = over.map(str::to_string);
        let current = Current {
            values,
            writer: over,
        };
        Held::after(&current, &Cells::default(), 0, (10, 10), writer.into())
    }

    #[test]
    fn held_counters_stay_within_their_bound_across_partitions() {
        let validator = Validator::new(&ValidationSettings::default());
        let mut batch = Batch::default();
        for partition in [0, 1] {
            let from = Origin {
                t: 0,
                kind: Kind::Records,
                topic: "records",
                partition,
                offset: 0,
                sent: None,
            };
            batch.push(from, None, &[], &validator, 0);
        }
        let mut parts = batch.parts();
        let (a, b) = (parts.next().unwrap(), parts.next().unwrap());
        let mut held = HeldCounters::new();
        let (half, third, quarter) = (HELD_MAX / 2, HELD_MAX / 3, HELD_MAX / 4);
        held.keep(a, Some(written(0..half, "a.1", None)));
        held.keep(b, Some(written(0..quarter, "b.1", None)));
        // A grows by more than the room left: it keeps only its last batch.
        held.keep(a, Some(written(half..half + third, "a.2", Some("a.1"))));
        assert_eq!(held.len(), third + quarter);
        // B grows within it, and keeps what it held.
        held.keep(b, Some(written(quarter..half, "b.2", Some("b.1"))));
        assert_eq!(held.len(), third + half);
        held.keep(a, None);
        held.retain(|_| true);
        assert_eq!(held.len(), half);
    }

    #[test]
    fn a_batch_delivered_again_within_a_fetch_is_dropped_not_restarted_from() {
        // Tansu 0.6 repeats the tail of one fetch answer (here 15..20) after the whole of it:
        // restarting at 15 would drop 10..15, which never come again.
        let (start, next, held, again) = part_after((10..20).chain(15..20));
        assert_eq!((start, next, again), (10, 20, 5));
        assert_eq!(held, (10..20).collect::<Vec<_>>());
    }

    #[test]
    fn fetching_from_before_the_part_restarts_it() {
        // A seek back (or a partition assigned again) delivers everything from 5 again.
        // The 10 messages dropped with the old part are replayed.
        let (start, next, held, again) = part_after((10..20).chain(5..12));
        assert_eq!((start, next, again), (5, 12, 10));
        assert_eq!(held, (5..12).collect::<Vec<_>>());
    }

    #[test]
    fn an_offset_in_a_hole_of_the_part_restarts_it() {
        // 13..15 never came (a hole); when they do, fetching went back: start over there.
        let (start, next, held, again) = part_after((10..13).chain(15..20).chain(13..20));
        assert_eq!((start, next, again), (13, 20, 8));
        assert_eq!(held, (13..20).collect::<Vec<_>>());
    }

    #[test]
    fn dead_bytes_count_what_the_dead_letters_keep() {
        // Poison of 1 KiB with a 3-byte key, at offsets 5..15 and 0..10 of two partitions;
        // then partition 0 is fetched again from 2, dropping its part and what it held.
        let validator = Validator::new(&ValidationSettings::default());
        let mut batch = Batch::default();
        let poison = vec![0xff; 1024];
        let offsets = (5..15).map(|o| (0, o)).chain((0..10).map(|o| (1, o)));
        for (partition, offset) in offsets.chain((2..4).map(|o| (0, o))) {
            let from = Origin {
                t: 0,
                kind: Kind::Records,
                topic: "records",
                partition,
                offset,
                sent: None,
            };
            batch.push(from, Some(b"key"), &poison, &validator, 0);
        }
        assert_eq!(batch.dead_bytes(), (10 + 2) * 1027);
        let held: usize = batch.parts().flat_map(|p| &p.dead).map(|l| l.size()).sum();
        assert_eq!(held, batch.dead_bytes());
    }

    #[test]
    fn messages_after_a_repeat_extend_the_part() {
        let (start, next, held, _) = part_after((10..20).chain(12..25));
        assert_eq!((start, next), (10, 25));
        assert_eq!(held, (10..25).collect::<Vec<_>>());
    }
}
