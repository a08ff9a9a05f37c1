//! Batches as the pipeline reads them, built straight from generated events, and stored as the
//! pipeline stores them: for tests that look at what a batch costs Redis.

use chrono::Utc;
use tiendo::config::Settings;
use tiendo::decode::Validator;
use tiendo::generator::{Generated, Generator};
use tiendo::pipeline::{Batch, HeldCounters, Origin};
use tiendo::store::{Applied, Store};

pub const PARTITIONS: i32 = 4;
pub const TOPICS: [&str; 2] = ["records", "procedures"];

/// The next offset stored for each (topic, partition), `None` where nothing is stored.
pub type Stored = [[Option<i64>; PARTITIONS as usize]; 2];

/// Events on both topics and every partition, their times spread over 60 days, one in ten a
/// re-send of an earlier one of the same batch: many claim buckets and many counter keys per
/// batch.
pub struct Batches {
    g: Generator,
    rng: fastrand::Rng,
    validator: Validator,
    offsets: [[i64; PARTITIONS as usize]; 2],
    stored: Stored,
    held: HeldCounters,
}

impl Batches {
    pub fn new(settings: &Settings, seed: u64) -> Batches {
        Batches {
            g: Generator::new(seed, "rt", &settings.validation.datasets),
            rng: fastrand::Rng::with_seed(seed),
            validator: Validator::new(&settings.validation),
            offsets: [[0; PARTITIONS as usize]; 2],
            stored: [[None; PARTITIONS as usize]; 2],
            held: HeldCounters::new(),
        }
    }

    /// The next batch of `events` messages, each at the next offset of a random partition.
    pub fn next(&mut self, events: usize) -> Batch {
        let now = Utc::now();
        let mut batch = Batch::default();
        let mut sent: Vec<Generated> = Vec::new();
        for i in 0..events {
            let at = now - chrono::Duration::seconds(self.rng.i64(0..60 * 86_400));
            let m = if i % 10 == 0 && !sent.is_empty() {
                sent[self.rng.usize(0..sent.len())].clone()
            } else if i % 5 == 4 {
                self.g.procedure(at)
            } else {
                self.g.record(at)
            };
            let t = m.kind() as usize;
            let partition = self.rng.i32(0..PARTITIONS);
            let offset = self.offsets[t][partition as usize];
            self.offsets[t][partition as usize] += 1;
            let from = Origin {
                t,
                kind: m.kind(),
                topic: TOPICS[t],
                partition,
                offset,
                sent: None,
            };
            batch.push(from, None, &m.encode(), &self.validator, now.timestamp());
            sent.push(m);
        }
        batch
    }

    /// Stores the next batch of `events` messages, as the pipeline would.
    pub async fn store_next(&mut self, store: &Store, events: usize) {
        let batch = self.next(events);
        store_batch(store, batch, &mut self.stored, &mut self.held).await;
    }
}

/// Stores a batch as the pipeline does, fenced on the offsets stored before, keeping the
/// counters it wrote whole.
pub async fn store_batch(
    store: &Store,
    mut batch: Batch,
    stored: &mut Stored,
    held: &mut HeldCounters,
) {
    batch.retain_parts(|p| {
        p.expected = stored[p.t][p.partition as usize];
        true
    });
    let now = Utc::now().timestamp();
    for (part, outcome) in batch.store(store, held, now).await.unwrap() {
        // Fenced at exactly the next offset is this batch's own write, made by a call that ran
        // again (a retried pipeline on a cluster): stored, as the pipeline takes it.
        let stored_here = match outcome.applied {
            Applied::Fenced { stored } => stored == part.next,
            Applied::Stored => true,
        };
        assert!(stored_here, "{:?}", outcome.applied);
        stored[part.t][part.partition as usize] = Some(part.next);
        held.keep(part, outcome.held);
    }
}
