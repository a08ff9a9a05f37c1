//! The consume loop: source → decode → aggregate → store.
//!
//! Two halves run side by side in two tasks, joined by a channel that holds one batch (and the
//! storer may hold the next one besides the one it stores, see below): the
//! collector reads, decodes and seals the next batch (groups its claims, aggregates it; see
//! [`Batch::seal`]) while the storer stores the previous one, so that work runs on another core
//! than the storer's and hides behind Redis's. A batch is what arrives within `batch_linger` of
//! its first message (and up to 63 messages more that were already waiting when it ended), up
//! to `batch_max_messages`, or until its dead letters hold [`DEAD_BYTES`].
//!
//! For each batch the storer, in this order: drops what is no longer ours or already stored,
//! delivers dead letters, claims event ids, aggregates per partition, and stores each
//! partition's deltas with its next offset atomically (a transaction, or a script call where
//! a fence failed or on a cluster; fenced on the offset it believes is stored). Only then is
//! the offset committed to Kafka, for lag tooling. A crash anywhere replays from Redis's
//! offsets and yields the same counters. When the next batch is already there, its claims
//! (with the counters' read) are made while this one's counters are written (see
//! `Storer::store`), so before its own dropping and dead letters: a claim carries its
//! message's partition and offset, so it gives the same verdict whenever it is made, and
//! nothing is counted before the transaction.
//!
//! Redis or Kafka trouble pauses the storer with its batch in hand and retries with backoff;
//! nothing is skipped, and shutdown during a retry leaves the batch to be replayed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod batch;

pub use batch::{Batch, HeldCounters, Origin, Outcome, Part, Read, Writes};

use crate::clock::SharedClock;
use crate::config::{PipelineSettings, Settings};
use crate::deadletter::DeadLetters;
use crate::decode::Validator;
use crate::events::Kind;
use crate::source::{self, Assignment, EventConsumer, Start};
use crate::store::{self, Applied, Held, HeldView, Store, StoreError};
use crate::telemetry;

/// How often the storer checks that Redis still holds the offsets it stored.
const VERIFY_EVERY: Duration = Duration::from_secs(5);

/// The most seconds a batch's first round trip, made while the batch before was written, is
/// used after: the held counters it took were judged alive at its time, and a minute bucket
/// is used only while it has more than a minute to live.
const READ_AHEAD_FOR: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The consume loop and everything it owns.
pub struct Pipeline {
    collector: Collector,
    storer: Storer,
}

impl Pipeline {
    /// Connects to Kafka and Redis as configured. Redis may still be down: the loop waits.
    pub async fn new(settings: &Settings, clock: SharedClock) -> Result<Pipeline, PipelineError> {
        let conn = store::connect(&settings.redis).await?;
        let store = Store::new(
            conn,
            &settings.redis.key_prefix,
            settings.validation.datasets.clone(),
            settings.pipeline.dedup_horizon.as_secs(),
        );
        let (consumer, assignment) = source::consumer(settings)?;
        let producer = source::producer(&settings.kafka, "dead-letter producer")?;
        let topics = [
            settings.kafka.topics.records.clone(),
            settings.kafka.topics.procedures.clone(),
        ];
        let mut validator = Validator::new(&settings.validation)
            .with_encodings(
                settings.kafka.topics.records_encoding,
                settings.kafka.topics.procedures_encoding,
            )
            .with_sources(&settings.sources.known);
        if !settings.kafka.schema_registry.url.expose().is_empty() {
            let registry = crate::registry::Registry::new(&settings.kafka.schema_registry.url);
            validator = validator.with_registry(Arc::new(registry));
        }
        Ok(Pipeline {
            collector: Collector {
                consumer: consumer.clone(),
                store: store.clone(),
                validator,
                clock: clock.clone(),
                settings: settings.pipeline.clone(),
                topics: topics.clone(),
            },
            storer: Storer {
                consumer,
                assignment,
                store,
                dead_letters: DeadLetters::new(producer, &settings.kafka.topics.dead_letter),
                clock,
                settings: settings.pipeline.clone(),
                topics,
                cursors: HashMap::new(),
                held: HeldCounters::new(),
                generation: u64::MAX,
                ahead: None,
            },
        })
    }

    /// The partitions this consumer holds (for readiness).
    pub fn assignment(&self) -> Arc<source::Assignment> {
        self.storer.assignment.clone()
    }

    /// Runs until `shutdown`; the batch in hand is stored first, then the consumer closed
    /// (which leaves the group, unless it is a static member).
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(topics = ?self.collector.topics, "consuming");
        let consumer = self.collector.consumer.clone();
        let (tx, rx) = mpsc::channel(1);
        // The collector in a task of its own, so that its decoding and sealing run on another
        // core than the storer's work, not only while the storer waits on Redis.
        let collecting = tokio::spawn(self.collector.run(tx, shutdown.clone()));
        self.storer.run(rx, shutdown).await;
        if let Err(error) = collecting.await {
            if error.is_panic() {
                // As if both halves were one task: a panic is the pipeline's.
                std::panic::resume_unwind(error.into_panic());
            }
        }
        consumer.unsubscribe();
        // The last handle: closing it serves the revocation and, for a dynamic member, sends
        // the group a LeaveGroup, so the partitions move to another replica at once rather
        // than after the session timeout. A static member (`group.instance.id`) sends none:
        // its partitions wait for it to come back under the same id.
        drop(consumer);
        tracing::info!("consumer closed");
    }
}

/// Reads and decodes batches.
struct Collector {
    consumer: Arc<EventConsumer>,
    /// Only to seal batches (see [`Batch::seal`]); the collector never writes.
    store: Store,
    validator: Validator,
    clock: SharedClock,
    settings: PipelineSettings,
    topics: [String; 2],
}

impl Collector {
    async fn run(self, tx: mpsc::Sender<Batch>, shutdown: CancellationToken) {
        // Time a sealed batch waits for the storer: the share of it shows when Redis, not
        // Kafka, sets the pace.
        let waited = metrics::histogram!(telemetry::PIPELINE_WAIT, "stage" => "collector");
        while !shutdown.is_cancelled() {
            let batch = self.collect(&shutdown).await;
            if batch.is_empty() {
                continue;
            }
            let handing = Instant::now();
            if tx.send(batch).await.is_err() {
                break; // the storer stopped
            }
            waited.record(handing.elapsed().as_secs_f64());
        }
    }

    /// Reads messages until the batch is full, the linger expires or shutdown is asked.
    async fn collect(&self, shutdown: &CancellationToken) -> Batch {
        let mut batch = Batch::default();
        // The linger timer and the shutdown wait are made once per batch, not per message:
        // a timer made per message cost an insert and a removal in tokio's timer wheel each.
        // The timer is armed by the first message.
        let linger = tokio::time::sleep(self.settings.batch_linger);
        let cancelled = shutdown.cancelled();
        tokio::pin!(linger, cancelled);
        let mut lingering = false;
        // Read when the first message arrives, not when waiting began: after a quiet night
        // a stale "now" would make fresh events look like they come from the future.
        let mut now = None;
        // One stream per batch: `recv` makes a stream per message, and each registers and
        // unregisters its waker under a mutex.
        let mut messages = self.consumer.stream();
        let mut taken = 0u32;
        while batch.len() < self.settings.batch_max_messages && batch.dead_bytes() < DEAD_BYTES {
            // A message librdkafka already holds is taken without the select below, whose
            // shutdown and linger futures cost a lock and a timer check per message. Both are
            // checked every 64 turns (asking the token takes a lock too), and by the select
            // whenever the queue is empty: what is taken after shutdown was asked is stored
            // with the batch like the rest.
            taken = taken.wrapping_add(1);
            if taken % 64 == 0 && closing(shutdown, lingering.then(|| linger.deadline())) {
                break;
            }
            let message = match messages.next().now_or_never() {
                Some(m) => m,
                None => tokio::select! {
                    biased;
                    _ = &mut cancelled => break,
                    _ = &mut linger, if lingering => break,
                    m = messages.next() => m,
                },
            }
            .expect("kafka streams never end");
            let message = match message {
                Ok(m) => m,
                Err(error) => {
                    metrics::counter!(telemetry::KAFKA_ERRORS).increment(1);
                    // Mostly the client errors again (a broker down), so throttled as those.
                    if let Some(held_back) =
                        telemetry::KAFKA_LOG.admit(&format!("consume: {error}"))
                    {
                        tracing::warn!(%error, held_back, "consume error");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if closing(shutdown, lingering.then(|| linger.deadline())) {
                        break;
                    }
                    continue;
                }
            };
            if !lingering {
                linger
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.settings.batch_linger);
                lingering = true;
            }
            let Some(t) = self.topics.iter().position(|t| t == message.topic()) else {
                continue;
            };
            let from = Origin {
                t,
                kind: Kind::ALL[t],
                topic: &self.topics[t],
                partition: message.partition(),
                offset: message.offset(),
                // -1 (or none) where the producer gave none and the topic does not stamp.
                sent: message
                    .timestamp()
                    .to_millis()
                    .filter(|ms| *ms > 0)
                    .map(|ms| ms / 1000),
            };
            let payload = message.payload().unwrap_or_default();
            if let (Some(registry), Some(id)) =
                (self.validator.registry(), crate::wire::schema_id(payload))
            {
                registry.learn(id).await; // once per id: later frames read the cache
            }
            let now = *now.get_or_insert_with(|| self.clock.now().timestamp());
            batch.push(from, message.key(), payload, &self.validator, now);
        }
        // Runs while the storer waits on Redis for the batch before.
        // A `now` is read just before the first push, so it is there exactly when the batch
        // holds something.
        if let Some(now) = now {
            batch.seal(&self.store, now);
        }
        batch
    }
}

/// The bytes of dead letters that close a batch. Four batches are in memory at once (one
/// collected, one in the channel, two in the storer), besides one being freed, so a flood of
/// megabyte poison holds about 64 MiB here, whatever the broker's speed; a batch of 16 MiB
/// still spreads a round trip to Redis over at least 16 such letters.
pub const DEAD_BYTES: usize = 16 << 20;

/// Whether a batch being collected must close: shutdown was asked, or its linger (ending
/// at `until`, once the first message has armed it) is over.
fn closing(shutdown: &CancellationToken, until: Option<tokio::time::Instant>) -> bool {
    shutdown.is_cancelled() || until.is_some_and(|end| tokio::time::Instant::now() >= end)
}

/// Where the storer stands on one partition.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The next offset stored in Redis (`None`: nothing stored yet). Messages below it are
    /// already counted and are dropped; it is also the fence the batch script checks.
    stored: Option<i64>,
    /// Redis could not be read at assignment: check before counting.
    unverified: bool,
    /// After a seek back: parts starting at or beyond this offset are taken for leftovers
    /// fetched before the seek and dropped until the re-fetched messages arrive.
    rewinding: Option<i64>,
    /// A part began at this offset, beyond `stored`, and was fetched again from this many
    /// messages before `stored` (see [`refetch_from`]). Forgotten on a rebalance, whose
    /// assignment fetches from Redis's offset again.
    gap: Option<(i64, i64)>,
}

/// How many messages before the stored offset to fetch again from, when a part begins at
/// `start`, beyond it; `None` when even offset 0 was asked for and the log still begins there.
///
/// Counting such a part would skip the messages in between for good. Most often it was
/// fetched under an earlier assignment and the messages before it were dropped with it:
/// fetching again from the stored offset mends that. Some brokers (Tansu 0.6) answer a fetch
/// that starts inside a record batch with the next batch, so the same start comes back: then
/// fetch from further back, 16 messages, then four times as far each time; what is already
/// stored is trimmed. A fetch from before the stored offset also shows a real hole (a
/// transaction marker, compaction) as a gap inside a part, which is counted.
fn refetch_from(gap: Option<(i64, i64)>, start: i64, stored: i64) -> Option<i64> {
    const FIRST: i64 = 16;
    match gap {
        Some((at, back)) if at == start => {
            (back < stored).then(|| (back * 4).max(FIRST).min(stored))
        }
        _ => Some(0),
    }
}

/// What the storer does with a part, by its partition's cursor.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Drop it and fetch again from `from` (`None`: the log's beginning). `gap`: it begins
    /// beyond the stored offset (each such fetch is logged and counted); else it is a leftover
    /// still ahead of the last seek.
    Refetch { from: Option<i64>, gap: bool },
    /// Count it, without what lies below `stored`, which is also its fence (`None`: nothing
    /// stored, or not known yet). `lost`: it begins beyond the stored offset and the log holds
    /// nothing earlier, so the messages in between were deleted uncounted.
    Count { stored: Option<i64>, lost: bool },
}

impl Cursor {
    /// Judges a part that begins at `start`: a leftover of the fetch before a seek, one
    /// that begins beyond the stored offset (fetched again, see [`refetch_from`]), or one to
    /// count.
    fn judge(&mut self, start: i64) -> Verdict {
        if let Some(limit) = self.rewinding {
            if start >= limit {
                // Still ahead of the seek: a leftover, or the answer of a broker that skipped
                // to its next record batch.
                let Some(stored) = self.stored else {
                    return Verdict::Refetch {
                        from: None,
                        gap: false,
                    };
                };
                let back = match self.gap {
                    // A leftover of the fetch before the seek: repeat the seek.
                    Some((at, back)) if at != start => Some(back),
                    // The same start again: step further back.
                    _ => refetch_from(self.gap, start, stored),
                };
                if let Some(back) = back {
                    self.gap = Some((self.gap.map_or(start, |(at, _)| at), back));
                    return Verdict::Refetch {
                        from: Some(stored - back),
                        gap: false,
                    };
                }
                // Even offset 0 begins here: go on to the gap check below.
            }
            self.rewinding = None;
        }
        let stored = if self.unverified { None } else { self.stored };
        let Some(stored) = stored else {
            return Verdict::Count {
                stored: None,
                lost: false,
            };
        };
        let lost = start > stored;
        if lost {
            if let Some(back) = refetch_from(self.gap, start, stored) {
                self.gap = Some((start, back));
                self.rewinding = Some(start + 1);
                return Verdict::Refetch {
                    from: Some(stored - back),
                    gap: true,
                };
            }
        }
        self.gap = None;
        Verdict::Count {
            stored: Some(stored),
            lost,
        }
    }

    fn from_start(start: Start) -> Cursor {
        let (stored, unverified) = match start {
            Start::At(next) => (Some(next), false),
            Start::Fresh => (None, false),
            Start::Unverified => (None, true),
        };
        Cursor {
            stored,
            unverified,
            rewinding: None,
            gap: None,
        }
    }
}

/// Stores batches in Redis and keeps the partitions' cursors.
struct Storer {
    consumer: Arc<EventConsumer>,
    assignment: Arc<Assignment>,
    store: Store,
    dead_letters: DeadLetters,
    clock: SharedClock,
    settings: PipelineSettings,
    topics: [String; 2],
    cursors: HashMap<(usize, i32), Cursor>,
    /// Counters each partition's last batch wrote whole (see `store::Held`).
    held: HeldCounters,
    generation: u64,
    /// The next batch, taken while the last one's counters were written, with its first
    /// round trip if it was made then (see [`Storer::store`]).
    ahead: Option<(Batch, Option<Read>)>,
}

impl Storer {
    async fn run(mut self, mut rx: mpsc::Receiver<Batch>, shutdown: CancellationToken) {
        let mut check = tokio::time::interval(VERIFY_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Time spent waiting for the next batch (see the collector's counterpart).
        let waited = metrics::histogram!(telemetry::PIPELINE_WAIT, "stage" => "storer");
        loop {
            let mut waiting = Instant::now();
            let (batch, read) = match self.ahead.take() {
                Some(ahead) => {
                    // Batches may follow each other without a wait: the offsets are still
                    // checked on time.
                    if check.tick().now_or_never().is_some() {
                        self.verify_stored().await;
                        waiting = Instant::now();
                    }
                    ahead
                }
                None => tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(b) => (b, None),
                        None => break,
                    },
                    _ = check.tick() => {
                        waited.record(waiting.elapsed().as_secs_f64());
                        self.verify_stored().await;
                        continue;
                    }
                },
            };
            waited.record(waiting.elapsed().as_secs_f64());
            let started = Instant::now();
            let messages = batch.len();
            let span = tracing::info_span!("batch", partitions = ?batch.parts().map(|p| (p.topic.as_str(), p.partition, p.start, p.next)).collect::<Vec<_>>());
            if self
                .process(batch, read, &mut rx, &shutdown)
                .instrument(span)
                .await
                .is_none()
            {
                break;
            }
            metrics::histogram!(telemetry::BATCH_MESSAGES).record(messages as f64);
            metrics::histogram!(telemetry::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        }
    }

    /// Checks that Redis still holds the offsets this consumer stored (and, on a cluster,
    /// lists those partitions again: see [`crate::store::Store::relist`]). A partition that gets no
    /// message runs no fenced batch script, so without this it would never notice that Redis
    /// lost its data (and its figures, which the catch-up check would then wait on forever).
    /// Behind: fetch again from what Redis holds. Ahead: another consumer stored more (a
    /// rebalance under way); take its offset, the fence does the rest.
    async fn verify_stored(&mut self) {
        self.sync_cursors();
        let known: Vec<((usize, i32), i64)> = self
            .cursors
            .iter()
            .filter(|(_, c)| !c.unverified && c.rewinding.is_none())
            .filter_map(|(k, c)| Some((*k, c.stored?)))
            .collect();
        let name = |(t, p): (usize, i32)| (self.topics[t].as_str(), p);
        // Every partition held, those not yet verified included: listing one with nothing
        // stored is harmless, leaving out one that stored is not.
        let held: Vec<(&str, i32)> = self.cursors.keys().map(|k| name(*k)).collect();
        let parts: Vec<(&str, i32)> = known.iter().map(|(k, _)| name(*k)).collect();
        let (stored, listed) = futures::join!(self.store.offsets(&parts), self.store.relist(&held));
        if let Err(error) = listed {
            tracing::debug!(%error, "partitions not listed again");
        }
        if known.is_empty() {
            return;
        }
        let stored = match stored {
            Ok(s) => s,
            Err(error) => {
                tracing::debug!(%error, "stored offsets not checked");
                return;
            }
        };
        for (((t, p), ours), theirs) in known.into_iter().zip(stored) {
            if theirs == Some(ours) {
                continue;
            }
            let Some(c) = self.cursors.get_mut(&(t, p)) else {
                continue;
            };
            c.stored = theirs;
            self.held.forget((t, p));
            if theirs.is_none_or(|s| s < ours) {
                metrics::counter!(telemetry::FENCED).increment(1);
                tracing::warn!(
                    topic = self.topics[t],
                    partition = p,
                    ours,
                    ?theirs,
                    "redis lost stored offsets: counting again from what it holds"
                );
                c.rewinding = Some(ours);
                self.seek(t, p, theirs);
            }
        }
    }

    /// Brings the cursors in line with the assignment after a rebalance.
    fn sync_cursors(&mut self) {
        let generation = self.assignment.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let assigned: HashMap<(usize, i32), Start> = self
            .assignment
            .partitions()
            .into_iter()
            .filter_map(|((topic, p), s)| {
                Some(((self.topics.iter().position(|t| *t == topic)?, p), s))
            })
            .collect();
        self.cursors.retain(|k, _| assigned.contains_key(k));
        self.held.retain(|k| assigned.contains_key(k));
        for (key, start) in assigned {
            // A partition we already had keeps its cursor: ours is at least as new. Its gap
            // does not: the assignment fetches from Redis's offset, not from where the last
            // step back went.
            self.cursors
                .entry(key)
                .and_modify(|c| c.gap = None)
                .or_insert_with(|| Cursor::from_start(start));
        }
    }

    /// Drops what is not ours or already stored, and what begins beyond the stored offset
    /// (fetched again, see [`refetch_from`]), and sets each part's fence.
    fn prepare(&mut self, batch: &mut Batch) {
        self.sync_cursors();
        let mut replayed = [0u64; 2];
        let mut reseek = Vec::new();
        batch.retain_parts(|part| {
            let Some(cursor) = self.cursors.get_mut(&(part.t, part.partition)) else {
                return false; // fetched before a revoke: no longer ours
            };
            match cursor.judge(part.start) {
                Verdict::Refetch { from, gap } => {
                    if gap {
                        metrics::counter!(telemetry::REFETCHED).increment(1);
                        tracing::info!(
                            topic = part.topic,
                            partition = part.partition,
                            stored = cursor.stored,
                            start = part.start,
                            from,
                            "batch starts beyond the stored offset: fetching again"
                        );
                    }
                    reseek.push((part.t, part.partition, from));
                    false
                }
                Verdict::Count { stored, lost } => {
                    if lost {
                        tracing::warn!(
                            topic = part.topic,
                            partition = part.partition,
                            stored,
                            start = part.start,
                            "the log begins beyond the stored offset: the messages in between \
                             were deleted before they were counted"
                        );
                    }
                    replayed[part.t] += part.redelivered;
                    if let Some(stored) = stored {
                        replayed[part.t] += part.trim_below(stored);
                    }
                    part.expected = stored;
                    true
                }
            }
        });
        for (t, partition, offset) in reseek {
            self.seek(t, partition, offset);
        }
        for (t, n) in replayed.into_iter().enumerate() {
            if n > 0 {
                metrics::counter!(telemetry::EVENTS, "topic" => Kind::ALL[t].as_str(), "outcome" => "replayed").increment(n);
            }
        }
    }

    /// Stores one batch, with its first round trip if that was made ahead (see
    /// [`Storer::store`]). `None` if shutdown was asked while waiting on Redis or Kafka.
    async fn process(
        &mut self,
        mut batch: Batch,
        read: Option<Read>,
        rx: &mut mpsc::Receiver<Batch>,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        self.prepare(&mut batch);
        self.verify(&mut batch, shutdown).await?;
        batch.retain_parts(|p| p.start < p.next);
        if batch.is_empty() {
            return Some(());
        }

        let letters = batch.dead_letters();
        if !letters.is_empty() {
            let dl = &self.dead_letters;
            retry(
                shutdown,
                self.settings.max_backoff,
                "dead-letter produce",
                || dl.send(&letters),
            )
            .await?;
            for l in &letters {
                metrics::counter!(
                    telemetry::DEAD_LETTERS,
                    "reason" => l.reason.as_str(),
                    "source" => l.source.as_str().to_string()
                )
                .increment(1);
            }
        }

        let flush_started = Instant::now();
        // Made ahead, it fits unless what was already stored changed since (a fence, a
        // rebalance, a seek): then the batch is read again, here. So it is if retries held it
        // up: held counters were judged still alive at its time.
        let mut read = read.filter(|r| {
            let age = self.clock.now().timestamp() - r.now();
            let fits = (0..=READ_AHEAD_FOR).contains(&age) && batch.fits(r);
            let outcome = if fits { "used" } else { "again" };
            metrics::counter!(telemetry::READ_AHEAD, "outcome" => outcome).increment(1);
            fits
        });
        let mut backoff = Backoff::new(self.settings.max_backoff);
        let outcomes = loop {
            match self.store(&batch, read.take(), rx).await {
                Ok(outcomes) => break outcomes,
                Err(error) => backoff.wait(error, "redis store", shutdown).await?,
            }
        };
        metrics::histogram!(telemetry::FLUSH_SECONDS).record(flush_started.elapsed().as_secs_f64());

        let mut commit = TopicPartitionList::new();
        let mut seeks = Vec::new();
        for (part, outcome) in outcomes {
            let key = (part.t, part.partition);
            self.held.keep(part, outcome.held);
            let kind = part.kind.as_str();
            let applied = match outcome.applied {
                // Redis already holds exactly our next offset: our own write whose reply was
                // lost before a retry.
                Applied::Fenced { stored } if stored == part.next => Applied::Stored,
                other => other,
            };
            match applied {
                Applied::Stored => {
                    let events = part.events.len() as u64;
                    metrics::counter!(telemetry::EVENTS, "topic" => kind, "outcome" => "counted")
                        .increment(outcome.counted);
                    metrics::counter!(telemetry::EVENTS, "topic" => kind, "outcome" => "duplicate")
                        .increment(events - outcome.counted);
                    metrics::counter!(telemetry::EVENTS, "topic" => kind, "outcome" => "dead_letter")
                        .increment(part.dead.len() as u64);
                    for (source, n) in outcome.by_source {
                        metrics::counter!(telemetry::SOURCE_EVENTS, "topic" => kind, "source" => source.as_str().to_string())
                            .increment(n);
                    }
                    if outcome.inferred > 0 {
                        metrics::counter!(telemetry::INFERRED, "reason" => "legacy_code_inferred")
                            .increment(outcome.inferred);
                    }
                    if let Some(c) = self.cursors.get_mut(&key) {
                        c.stored = Some(part.next);
                    }
                    let _ = commit.add_partition_offset(
                        &part.topic,
                        part.partition,
                        Offset::Offset(part.next),
                    );
                }
                Applied::Fenced { stored } => {
                    metrics::counter!(telemetry::FENCED).increment(1);
                    tracing::info!(
                        topic = part.topic,
                        partition = part.partition,
                        batch_start = part.start,
                        stored,
                        "batch fenced: redis holds another offset"
                    );
                    let stored = (stored >= 0).then_some(stored);
                    // Behind our batch (Redis lost its last writes, or a partial overlap):
                    // fetch again from there. Ahead of it: trimming does the rest.
                    let rewind = stored.is_none_or(|s| s < part.next);
                    if let Some(c) = self.cursors.get_mut(&key) {
                        c.stored = stored;
                        if rewind {
                            c.rewinding = Some(part.next);
                        }
                    }
                    if rewind {
                        seeks.push((part.t, part.partition, stored));
                    }
                }
            }
        }
        for (t, partition, offset) in seeks {
            self.seek(t, partition, offset);
        }
        if commit.count() > 0 {
            if let Err(error) = self.consumer.commit(&commit, CommitMode::Async) {
                tracing::debug!(%error, "kafka commit (informational) failed");
            }
        }
        // Inside the batch span: with `tiendo::pipeline=debug` every batch is logged with the
        // partitions and offsets it covered.
        tracing::debug!(partitions = commit.count(), "batch stored");
        // Freed on another thread: here, its tens of thousands of events would be freed on
        // the way to the next batch's apply request, while Redis waits for it.
        tokio::task::spawn_blocking(move || drop(batch));
        Some(())
    }

    /// Stores `batch` in its two round trips (see [`Batch::store`]), the first one skipped
    /// where `read` was made ahead. While Redis writes its counters, the next batch is taken
    /// if it is there or comes, and its first round trip is sent behind the write: on a
    /// single Redis, one connection's requests run in order, so Redis reads what this batch
    /// wrote, and goes on to it without waiting for this answer to travel and the next
    /// request to be made. That read assumes this batch is written whole by the transaction.
    /// Its counters are used only where Redis shows the offset and writer token that
    /// assumes; elsewhere (the read came first, the transaction was dropped for the script,
    /// the write failed) they are added blind, and a part whose stored offset turns out to
    /// be another does not fit the read, which is then made again.
    async fn store<'b>(
        &mut self,
        batch: &'b Batch,
        read: Option<Read>,
        rx: &mut mpsc::Receiver<Batch>,
    ) -> Result<Vec<(&'b Part, Outcome)>, StoreError> {
        let mut read = match read {
            Some(read) => read,
            None => {
                let now = self.clock.now().timestamp();
                batch.read(&self.store, &self.held, now).await?
            }
        };
        let now = read.now();
        let writes = batch.writes(&mut read);
        let writer = self.store.writer();
        let (written, after, next) = {
            let batches = writes.batches();
            let applying = self.store.apply(&batches, &writer, now);
            tokio::pin!(applying);
            // Polled once, so that the request is mostly on the connection before the next
            // batch's (not while connecting; the fences make the order a matter of speed).
            let mut written = applying.as_mut().now_or_never();
            // What each partition holds once written, worked out while Redis writes.
            let after = writes.after(&writer);
            let mut next = None;
            if written.is_none() && self.ahead.is_none() {
                tokio::select! {
                    biased;
                    w = applying.as_mut() => written = Some(w),
                    b = rx.recv() => next = b,
                }
            }
            let mut next = next.map(|b| (b, None));
            let applied = async {
                match written {
                    Some(w) => w,
                    None => applying.await,
                }
            };
            let reading = async {
                let Some((next, read_ahead)) = &mut next else {
                    return;
                };
                let Some(views) = self.ahead_of(batch, &after, next) else {
                    return;
                };
                let now = self.clock.now().timestamp();
                match next.read_with(&self.store, &views, now).await {
                    Ok(read) => *read_ahead = Some(read),
                    Err(error) => {
                        // Made again when the batch is stored.
                        tracing::debug!(%error, "reading the next batch ahead failed");
                        metrics::counter!(telemetry::READ_AHEAD, "outcome" => "failed")
                            .increment(1);
                    }
                }
            };
            let (written, ()) = futures::join!(applied, reading);
            (written, after, next)
        };
        if next.is_some() {
            self.ahead = next;
        }
        Ok(writes.outcomes(written?, after))
    }

    /// How the batch after `batch` follows it, for its first round trip to be made while
    /// `batch`'s counters are written: each of its parts gets the stored offset it follows
    /// if `batch` is stored (`expected`), and what it may take of held counters, what
    /// `batch` leaves (`after`, in the order of its parts) over what is held. `None` where a
    /// part does not follow straight on (a rebalance, a gap, an offset not known): the
    /// batch is then prepared and read once `batch` is answered, as any other.
    fn ahead_of<'a>(
        &'a self,
        batch: &Batch,
        after: &'a [Option<Held>],
        next: &mut Batch,
    ) -> Option<Vec<Option<HeldView<'a>>>> {
        if self.assignment.generation() != self.generation {
            return None;
        }
        let written: HashMap<(usize, i32), (i64, Option<&Held>)> = batch
            .parts()
            .zip(after)
            .map(|(p, held)| ((p.t, p.partition), (p.next, held.as_ref())))
            .collect();
        let mut views = Vec::new();
        for part in next.parts_mut() {
            let key = (part.t, part.partition);
            let (stored, view) = match written.get(&key) {
                Some(&(stored, after)) => {
                    (stored, after.map(|a| HeldView::new(a, self.held.get(part))))
                }
                None => {
                    let c = self.cursors.get(&key)?;
                    if c.unverified || c.rewinding.is_some() {
                        return None;
                    }
                    (c.stored?, self.held.get(part).map(HeldView::from))
                }
            };
            if part.start != stored {
                return None;
            }
            part.expected = Some(stored);
            views.push(view);
        }
        Some(views)
    }

    /// For partitions assigned while Redis was down: read their offsets now, drop what is
    /// already stored, and seek back if fetching started past the stored offset.
    async fn verify(&mut self, batch: &mut Batch, shutdown: &CancellationToken) -> Option<()> {
        let todo: Vec<(usize, i32)> = batch
            .parts()
            .map(|p| (p.t, p.partition))
            .filter(|k| self.cursors.get(k).is_some_and(|c| c.unverified))
            .collect();
        if todo.is_empty() {
            return Some(());
        }
        let parts: Vec<(&str, i32)> = todo
            .iter()
            .map(|(t, p)| (self.topics[*t].as_str(), *p))
            .collect();
        let store = &self.store;
        let stored = retry(shutdown, self.settings.max_backoff, "redis offsets", || {
            store.offsets(&parts)
        })
        .await?;
        for (key, stored) in todo.iter().zip(stored) {
            let Some(part) = batch.parts_mut().find(|p| (p.t, p.partition) == *key) else {
                continue;
            };
            let mut cursor = Cursor {
                stored,
                unverified: false,
                rewinding: None,
                gap: None,
            };
            part.expected = stored;
            if stored.is_none_or(|s| part.start > s) {
                // Fetching began after the stored offset (or at a Kafka commit while Redis
                // holds nothing): go back, count nothing yet.
                cursor.rewinding = Some(part.next);
                self.seek(key.0, key.1, stored);
                part.start = part.next;
            } else if let Some(s) = stored {
                part.trim_below(s);
            }
            self.cursors.insert(*key, cursor);
        }
        Some(())
    }

    /// Moves fetching to `offset`, or to the start of the log for `None`.
    fn seek(&self, t: usize, partition: i32, offset: Option<i64>) {
        let to = offset.map(Offset::Offset).unwrap_or(Offset::Beginning);
        let topic = &self.topics[t];
        if let Err(error) = self
            .consumer
            .seek(topic, partition, to, Duration::from_secs(10))
        {
            tracing::warn!(%error, topic, partition, ?offset, "seek failed");
        }
    }
}

/// Retries `op` with exponential backoff until it succeeds; `None` if shutdown comes first.
async fn retry<T, E, F, Fut>(
    shutdown: &CancellationToken,
    max: Duration,
    what: &str,
    mut op: F,
) -> Option<T>
where
    E: std::fmt::Display + Classify,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(max);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(error) => backoff.wait(error, what, shutdown).await?,
        }
    }
}

/// Exponential backoff between retries, from 50 ms up to a most.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(50),
            max,
        }
    }

    /// Counts and logs a failure of `what`, then waits; `None` if shutdown comes first.
    async fn wait(
        &mut self,
        error: impl std::fmt::Display + Classify,
        what: &str,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        error.count();
        tracing::warn!(%error, what, retry_in = ?self.next, "retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(self.next) => {}
        }
        self.next = (self.next * 2).min(self.max);
        Some(())
    }
}

/// Which error metric a retried failure counts toward.
trait Classify {
    fn count(&self);
}

impl Classify for StoreError {
    fn count(&self) {
        metrics::counter!(telemetry::REDIS_ERRORS).increment(1);
    }
}

impl Classify for rdkafka::error::KafkaError {
    fn count(&self) {
        metrics::counter!(telemetry::KAFKA_ERRORS).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::{refetch_from, Cursor, Start, Verdict};

    fn count(stored: i64) -> Verdict {
        Verdict::Count {
            stored: Some(stored),
            lost: false,
        }
    }

    fn refetch(from: i64, gap: bool) -> Verdict {
        Verdict::Refetch {
            from: Some(from),
            gap,
        }
    }

    #[test]
    fn a_cursor_counts_what_follows_the_stored_offset_and_fetches_again_past_a_gap() {
        let mut c = Cursor::from_start(Start::At(100));
        // Parts that begin at or below the stored offset are counted (trimmed below it).
        assert_eq!(c.judge(100), count(100));
        assert_eq!(c.judge(40), count(100));
        // Beyond it: fetched again from the stored offset.
        assert_eq!(c.judge(130), refetch(100, true));
        // A leftover of the fetch before the seek repeats the seek, quietly.
        assert_eq!(c.judge(200), refetch(100, false));
        // A broker that skips to its next record batch sends the same start: step back.
        assert_eq!(c.judge(130), refetch(84, true));
        assert_eq!(c.judge(200), refetch(84, false));
        assert_eq!(c.judge(130), refetch(36, true));
        // The re-fetched part arrives: counted, and the gap is forgotten.
        assert_eq!(c.judge(36), count(100));
        assert_eq!(c.judge(130), refetch(100, true));
    }

    #[test]
    fn a_log_that_begins_beyond_the_stored_offset_is_counted_from_its_start() {
        let mut c = Cursor::from_start(Start::At(20));
        assert_eq!(c.judge(50), refetch(20, true));
        assert_eq!(c.judge(50), refetch(4, true));
        assert_eq!(c.judge(50), refetch(0, true));
        // Offset 0 was asked for and the log still begins at 50: its messages are lost.
        assert_eq!(
            c.judge(50),
            Verdict::Count {
                stored: Some(20),
                lost: true
            }
        );
    }

    #[test]
    fn without_a_known_offset_everything_is_counted_unfenced() {
        for start in [Start::Fresh, Start::Unverified] {
            let mut c = Cursor::from_start(start);
            assert_eq!(
                c.judge(7),
                Verdict::Count {
                    stored: None,
                    lost: false
                }
            );
        }
    }

    #[test]
    fn a_part_beyond_the_stored_offset_is_fetched_again_from_further_back_each_time() {
        // First time: from the stored offset itself.
        assert_eq!(refetch_from(None, 5000, 4200), Some(0));
        // The same start again: a broker skipping to its next record batch; step back.
        assert_eq!(refetch_from(Some((5000, 0)), 5000, 4200), Some(16));
        assert_eq!(refetch_from(Some((5000, 16)), 5000, 4200), Some(64));
        assert_eq!(refetch_from(Some((5000, 1024)), 5000, 4200), Some(4096));
        // Never before offset 0...
        assert_eq!(refetch_from(Some((5000, 4096)), 5000, 4200), Some(4200));
        // ...and from there, the same start means the log begins there.
        assert_eq!(refetch_from(Some((5000, 4200)), 5000, 4200), None);
        // Another start is another gap.
        assert_eq!(refetch_from(Some((5000, 1024)), 6000, 4200), Some(0));
    }
}
