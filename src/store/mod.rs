//! Stage 4: Redis. Counter deltas are stored atomically with the Kafka offsets that produced
//! them, per partition batch; re-sent events are caught by dedup claims. A batch costs two
//! round trips and, on a single Redis, two script calls (claims, then counters): under
//! `appendfsync always` Redis pays an fsync per event-loop pass that writes, so the number of
//! calls, not only of commands, sets the speed. On a cluster, calls are per slot.
//!
//! Dedup claims are written before the counters, in their own round trip, and carry the
//! claimant's coordinates (partition and offset). If the process dies between the claim and the
//! counters, the replayed event finds its own claim and is counted; an event re-sent upstream
//! finds someone else's claim and is not. So claims need no atomicity with the counters and
//! may live in any slot, which lets dedup work across partitions.

mod conn;
mod keys;
mod read;

use std::collections::{BTreeMap, HashMap};

use futures::future::try_join_all;
use redis::Script;

pub use conn::{connect, RedisConn};
pub use keys::{Keys, PartitionKeys, CLAIM_SIZE, DEDUP_SHARDS};
pub use read::{Counts, Daily, Snapshot};

use crate::aggregate::{Aggregate, Slot};
use crate::buckets::Tier;
use crate::events::Kind;
use crate::sources;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Parse(#[from] redis::ParsingError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// One partition's batch, ready to apply.
#[derive(Debug)]
pub struct PartitionBatch<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The next offset this consumer believes is stored (-1 for none): the fence.
    pub expected: i64,
    /// Offset after the last message: where the partition resumes.
    pub next: i64,
    pub aggregate: &'a Aggregate,
}

/// What happened to a partition batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Stored,
    /// Another consumer had already stored offsets up to `stored`; nothing was written.
    Fenced {
        stored: i64,
    },
}

/// An event to claim against duplicates.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub kind: Kind,
    pub id: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Event time (unix seconds): claims are kept in buckets by the event's day.
    pub at: i64,
}

#[derive(Clone)]
pub struct Store {
    conn: RedisConn,
    keys: Keys,
    datasets: Vec<String>,
    dedup_ttl: u64,
    script: Script,
    claim_script: Script,
}

impl Store {
    pub fn new(conn: RedisConn, prefix: &str, datasets: Vec<String>, dedup_ttl: u64) -> Store {
        Store {
            conn,
            keys: Keys::new(prefix),
            datasets,
            dedup_ttl,
            script: Script::new(include_str!("apply.lua")),
            claim_script: Script::new(include_str!("claim.lua")),
        }
    }

    /// The stored next offset of each partition, `None` where nothing was ever stored.
    pub async fn offsets(&self, parts: &[(&str, i32)]) -> Result<Vec<Option<i64>>, StoreError> {
        let gets = parts.iter().map(|(topic, p)| {
            let mut conn = self.conn.clone();
            let key = self.keys.partition(topic, *p).offset();
            async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<i64>>(&mut conn)
                    .await
            }
        });
        Ok(try_join_all(gets).await?)
    }

    /// Claims each event id; `true` where the event is new (or is this very message replayed),
    /// `false` where another message already claimed the id within the horizon.
    ///
    /// A claim is a field (the event id's digest) in a hash per shard and week of the event's
    /// time, valued with the claimant's partition and offset: the same message replayed after a
    /// crash finds its own value and is new again; a re-send (another offset) finds another
    /// value. One script call (see claim.lua) on a single Redis; on a cluster, one per shard,
    /// all sent together.
    pub async fn claim(&self, claims: &[Claim<'_>]) -> Result<Vec<bool>, StoreError> {
        // shard → bucket (kind, week) → claims, with their positions in `claims`.
        type Members<'a> = Vec<(usize, &'a Claim<'a>)>;
        type Buckets<'a> = BTreeMap<(Kind, i64), Members<'a>>;
        let mut shards: BTreeMap<u64, Buckets<'_>> = BTreeMap::new();
        for (position, c) in claims.iter().enumerate() {
            shards
                .entry(Keys::dedup_shard(c.id))
                .or_default()
                .entry((c.kind, keys::claim_week(c.at)))
                .or_default()
                .push((position, c));
        }
        // Calls, each a list of (key, claims): every bucket in one call, or one call per
        // shard's slot on a cluster.
        let mut calls: Vec<Vec<(String, &Members<'_>)>> = Vec::new();
        for (shard, buckets) in &shards {
            if calls.is_empty() || self.conn.is_cluster() {
                calls.push(Vec::new());
            }
            let call = calls.last_mut().expect("one call at least");
            for ((kind, week), members) in buckets {
                call.push((self.keys.dedup(*shard, *kind, *week), members));
            }
        }
        let calls = calls.into_iter().map(|buckets| {
            let mut invocation = self.claim_script.prepare_invoke();
            invocation.arg(self.dedup_ttl);
            let mut positions = Vec::new();
            for (key, members) in buckets {
                let mut packed = Vec::with_capacity(members.len() * CLAIM_SIZE);
                for (position, c) in members {
                    packed.extend_from_slice(&keys::claim_id(c.id));
                    packed.extend_from_slice(&(c.partition as u32).to_be_bytes());
                    packed.extend_from_slice(&c.offset.to_be_bytes());
                    positions.push(*position);
                }
                invocation.key(key).arg(packed);
            }
            let mut conn = self.conn.clone();
            async move {
                let flags: String = invocation.invoke_async(&mut conn).await?;
                Ok::<_, StoreError>((positions, flags))
            }
        });
        let mut fresh = vec![false; claims.len()];
        for (positions, flags) in try_join_all(calls).await? {
            if flags.len() != positions.len() {
                return Err(StoreError::Reply(format!(
                    "{} claim flags for {} claims",
                    flags.len(),
                    positions.len()
                )));
            }
            for (position, flag) in positions.into_iter().zip(flags.bytes()) {
                fresh[position] = flag == b'1';
            }
        }
        Ok(fresh)
    }

    /// Applies each partition batch atomically with its offsets: one script call for them all
    /// on a single Redis, which also lists the partitions in the directory; on a cluster, one
    /// call per partition and a directory update, all sent together.
    pub async fn apply(
        &self,
        batches: &[PartitionBatch<'_>],
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        // Every batch re-lists its partitions (an idempotent SADD): a Redis that lost its
        // last writes must not lose a partition from the directory readers use.
        let tags: Vec<String> = batches
            .iter()
            .map(|b| format!("{}/{}", b.topic, b.partition))
            .collect();
        let calls: Vec<redis::ScriptInvocation<'_>> = if self.conn.is_cluster() {
            batches
                .iter()
                .map(|b| self.invocation(&[b], None, now))
                .collect()
        } else {
            let all: Vec<&PartitionBatch<'_>> = batches.iter().collect();
            vec![self.invocation(&all, Some(&tags), now)]
        };
        let listed = async {
            if !self.conn.is_cluster() {
                return Ok(());
            }
            let mut conn = self.conn.clone();
            redis::cmd("SADD")
                .arg(self.keys.directory())
                .arg(&tags)
                .query_async::<()>(&mut conn)
                .await
                .map_err(StoreError::from)
        };
        let calls = calls.into_iter().map(|invocation| {
            let mut conn = self.conn.clone();
            async move {
                let reply: Vec<i64> = invocation.invoke_async(&mut conn).await?;
                Ok::<_, StoreError>(reply)
            }
        });
        let (_, replies) = futures::try_join!(listed, try_join_all(calls))?;
        let reply: Vec<i64> = replies.into_iter().flatten().collect();
        if reply.len() != 2 * batches.len() {
            return Err(StoreError::Reply(format!(
                "{} values for {} partition batches",
                reply.len(),
                batches.len()
            )));
        }
        Ok(reply
            .chunks(2)
            .map(|r| {
                if r[0] == 1 {
                    Applied::Stored
                } else {
                    Applied::Fenced { stored: r[1] }
                }
            })
            .collect())
    }

    /// One apply.lua call for these partition batches; with `directory`, the call also adds
    /// these tags (one per batch) to the partition directory.
    fn invocation(
        &self,
        batches: &[&PartitionBatch<'_>],
        directory: Option<&[String]>,
        now: i64,
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(batches.len())
            .arg(u8::from(directory.is_some()))
            .arg(crate::aggregate::EXAMPLES_KEPT);
        if directory.is_some() {
            inv.key(self.keys.directory());
        }
        for (n, b) in batches.iter().enumerate() {
            self.section(&mut inv, b, directory.map(|tags| tags[n].as_str()), now);
        }
        inv
    }

    /// One partition's keys and arguments in an apply.lua call (see its header).
    fn section(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        b: &PartitionBatch<'_>,
        tag: Option<&str>,
        now: i64,
    ) {
        let keys = self.keys.partition(b.topic, b.partition);
        let mut own = vec![keys.offset(), keys.totals(), keys.latest(), keys.dead()];
        // Bucket keys are numbered after the four fixed ones (Lua indexes from 1).
        let mut bucket_index: HashMap<(Tier, i64), usize> = HashMap::new();
        let mut expiries: Vec<(usize, i64)> = Vec::new();
        let mut incr: Vec<(usize, String, i64)> = Vec::new();
        for ((slot, field), delta) in &b.aggregate.cells(now) {
            let idx = match slot {
                Slot::Total => 2,
                Slot::Bucket(tier, n) => *bucket_index.entry((*tier, *n)).or_insert_with(|| {
                    own.push(keys.bucket(*tier, *n));
                    expiries.push((own.len(), tier.ttl(*n, now).unwrap_or(1)));
                    own.len()
                }),
            };
            incr.push((idx, field.render(&self.datasets), *delta));
        }
        for (reason, n) in &b.aggregate.dead {
            incr.push((4, reason.as_str().to_string(), *n));
        }
        let mut raise: Vec<(usize, String, i64)> = b
            .aggregate
            .latest
            .iter()
            .map(|(field, at)| (3, field.render(&self.datasets), *at))
            .collect();
        let mut push: Vec<(usize, String, String)> = Vec::new();
        if !b.aggregate.sources.is_empty() {
            own.push(keys.sources());
            let all_time = own.len();
            let hour = Tier::Hour.bucket(now);
            own.push(keys.source_hour(hour));
            let hourly = own.len();
            expiries.push((hourly, Tier::Hour.start(hour + sources::HOURS_KEPT) - now));
            own.push(keys.source_examples());
            let examples = own.len();
            for (source, d) in &b.aggregate.sources {
                let name = source.as_str();
                let reasons = d
                    .rejects
                    .iter()
                    .map(|(r, n)| (format!("x.{}", r.as_str()), *n));
                let counters = [("e", d.events), ("r", d.records), ("d", d.duplicates)]
                    .into_iter()
                    .map(|(c, n)| (c.to_string(), n))
                    .chain(reasons)
                    .filter(|(_, n)| *n != 0);
                for (counter, n) in counters {
                    incr.push((all_time, format!("{name}|{counter}"), n));
                    incr.push((hourly, format!("{name}|{counter}"), n));
                }
                raise.push((all_time, format!("{name}|seen"), now));
                if d.last_event > 0 {
                    raise.push((all_time, format!("{name}|at"), d.last_event));
                }
                // Pushed oldest first, so the newest ends first and older batches' examples
                // move down rather than being overwritten out of order.
                for (reason, list) in &d.examples {
                    for (origin, detail) in list.iter().rev() {
                        let field = format!("{name}|{}", reason.as_str());
                        push.push((examples, field, format!("{now}\t{origin}\t{detail}")));
                    }
                }
            }
        }
        inv.arg(own.len());
        if let Some(tag) = tag {
            inv.arg(tag);
        }
        for key in own {
            inv.key(key);
        }
        inv.arg(b.expected).arg(b.next).arg(incr.len());
        for (idx, field, delta) in incr {
            inv.arg(idx).arg(field).arg(delta);
        }
        inv.arg(raise.len());
        for (idx, field, at) in raise {
            inv.arg(idx).arg(field).arg(at);
        }
        inv.arg(push.len());
        for (idx, field, text) in push {
            inv.arg(idx).arg(field).arg(text);
        }
        inv.arg(expiries.len());
        for (idx, at) in expiries {
            inv.arg(idx).arg(at);
        }
    }
}
