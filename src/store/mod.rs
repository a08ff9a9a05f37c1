//! Stage 4: Redis. Counter deltas are stored atomically with the Kafka offsets that produced
//! them, per partition batch; re-sent events are caught by dedup claims. A batch costs two
//! round trips and, on a single Redis, two writes (a script call for the claims, sent with a
//! read-only transaction that reads the counters it adds to, except those held from the
//! batches before; then one transaction for the counters and offsets): under `appendfsync
//! always` Redis pays an fsync per event-loop pass that writes, so the number of writes, not
//! only of commands, sets the speed. On a cluster, script calls are per slot, each round trip
//! goes to each node as one pipeline (see `nodes`), and counters are added blind.
//!
//! Dedup claims are written before the counters, in their own round trip, and carry the
//! claimant's coordinates (partition and offset). If the process dies between the claim and the
//! counters, the replayed event finds its own claim and is counted; an event re-sent upstream
//! finds someone else's claim and is not. So claims need no atomicity with the counters and
//! may live in any slot, which lets dedup work across partitions.

mod apply;
mod claims;
mod conn;
mod keys;
mod nodes;
mod read;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::try_join_all;
use redis::Script;

pub use claims::Plan as ClaimPlan;
pub use conn::{check, connect, RedisConn};
pub use keys::{IdKey, Keys, PartitionKeys, CLAIM_SIZE, DEDUP_SHARDS};
pub use read::{Counts, Daily, Snapshot};

use rustc_hash::FxHashMap;

use crate::aggregate::{Aggregate, Cells, Field, Slot};
use crate::events::Kind;

const APPLY_LUA: &str = include_str!("apply.lua");
const FENCE_LUA: &str = include_str!("fence.lua");
/// The totals hash's field that holds the token of the last write (see apply.lua).
const WRITER: &str = "~w";

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
    /// `aggregate`'s cells at the call's `now`, where the caller has them already (`None`:
    /// worked out when needed).
    pub cells: Option<&'a Cells>,
    /// The partition's counters as read by [`Store::current`]; `None` to add to them blind.
    pub current: Option<&'a Current>,
    /// What this consumer holds of the partition's counters from its last batches, for
    /// [`Store::current`] not to read again.
    pub held: Option<HeldView<'a>>,
}

impl PartitionBatch<'_> {
    /// The aggregate's cells at `now`: the caller's, or worked out here.
    fn cells(&self, now: i64) -> std::borrow::Cow<'_, Cells> {
        match self.cells {
            Some(cells) => std::borrow::Cow::Borrowed(cells),
            None => std::borrow::Cow::Owned(self.aggregate.cells(now)),
        }
    }
}

/// Counter values of one partition, by slot and field, in a state of Redis whose stored offset
/// was the expected one (missing counters read as 0), and the writer token stored with them.
/// The fence checks that token again, so the values are written back onto that very state.
#[derive(Debug, Default, Clone)]
pub struct Current {
    pub values: FxHashMap<(Slot, Field), i64>,
    /// The token of the write that left them (`None`: none stored).
    pub writer: Option<String>,
}

/// The counters a consumer keeps of a partition between batches: those its batches wrote
/// whole, with the offset and writer token the last one wrote. Its next batch reads only the
/// counters not held, and uses the held ones only if Redis still shows that offset and token.
/// A token is written by one transaction only, and every write of the partition's counters
/// writes a new one (or, by versions before December 2026, none, but then moves the offset),
/// so a state of Redis that shows both holds exactly these values, whatever happened in
/// between: Redis losing writes, a rebalance, a zombie consumer.
///
/// A bucket's value is used only while the bucket has more than its own length to live: its
/// key expires on the clock of whoever made it, and a value held past that would bring it back.
#[derive(Debug, Clone)]
pub struct Held {
    offset: i64,
    writer: String,
    values: FxHashMap<(Slot, Field), i64>,
    /// Where the batch was read: the offset and token it was written over (`None`: no token,
    /// or some counter added blind), so that values held from before it are known to be still
    /// true after it.
    over: (i64, Option<String>),
    /// The batch's time, for the buckets' life.
    now: i64,
}

impl Held {
    /// What a partition holds once `current`, read at offset `expected`, plus the deltas
    /// `cells` (its batch's at `now`) were written whole at offset `next` under `writer` (what
    /// [`Written::whole`] says happened).
    pub fn after(
        current: &Current,
        cells: &Cells,
        now: i64,
        (expected, next): (i64, i64),
        writer: String,
    ) -> Held {
        let mut over = (expected, current.writer.clone());
        let mut values = current.values.clone();
        for (&cell, &delta) in cells {
            let value = values.get(&cell).and_then(|v| v.checked_add(delta));
            match value {
                Some(v) => values.insert(cell, v),
                // Added blind (see `apply::section`): not known here, nor what was held of it.
                None => {
                    over.1 = None;
                    values.remove(&cell)
                }
            };
        }
        Held {
            offset: next,
            writer,
            values,
            over,
            now,
        }
    }

    /// Whether the held value of a counter in `slot` may be used at `now`.
    fn lasting(slot: Slot, now: i64) -> bool {
        match slot {
            Slot::Total => true,
            Slot::Bucket(tier, n) => tier.ttl(n, now).is_some_and(|t| t > tier.seconds()),
        }
    }

    /// Whether the batch that left these values was written over the state `before`
    /// describes (it read that offset and token): then the counters it did not touch are
    /// still what `before` holds.
    fn follows(&self, before: &Held) -> bool {
        self.over.0 == before.offset && self.over.1.as_deref() == Some(before.writer.as_str())
    }

    /// Takes in what the partition's next batch wrote whole. If that batch was written over
    /// the state these values describe, the counters it did not touch are still what Redis
    /// holds, so they are kept too, up to `limit` counters (buckets near their end dropped
    /// first); else, or beyond, only the batch's are.
    pub fn update(&mut self, next: Held, limit: usize) {
        if next.follows(self) {
            let fits = |held: &Held| held.values.len() + next.values.len() <= limit;
            if !fits(self) {
                self.values
                    .retain(|(slot, _), _| Held::lasting(*slot, next.now));
            }
            if fits(self) {
                self.values.extend(next.values);
                self.offset = next.offset;
                self.writer = next.writer;
                self.over = next.over;
                self.now = next.now;
                return;
            }
        }
        *self = next;
    }

    /// How many counters are held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// What a partition's next batch may take from held counters without reading them: those of
/// its last batch (`last`), over what was held before that one where it was written over them
/// (what [`Held::update`] would keep, without its limit). The storer reads the batch after
/// the one whose counters are being written with that batch's values on top, before knowing
/// whether they were written: the token check in [`Store::current`] tells.
#[derive(Debug, Clone, Copy)]
pub struct HeldView<'a> {
    last: &'a Held,
    before: Option<&'a Held>,
}

impl<'a> HeldView<'a> {
    pub fn new(last: &'a Held, before: Option<&'a Held>) -> HeldView<'a> {
        HeldView {
            last,
            before: before.filter(|b| last.follows(b)),
        }
    }

    fn get(&self, cell: &(Slot, Field)) -> Option<i64> {
        let value = self.last.values.get(cell);
        value.or_else(|| self.before?.values.get(cell)).copied()
    }
}

impl<'a> From<&'a Held> for HeldView<'a> {
    fn from(last: &'a Held) -> HeldView<'a> {
        HeldView { last, before: None }
    }
}

/// What [`Store::apply`] did.
#[derive(Debug)]
pub struct Written {
    pub applied: Vec<Applied>,
    /// Whether the counters read by [`Store::current`] were written whole under a fence that
    /// checked their writer: then each stored partition that had a `current` now holds it
    /// plus its deltas, under this call's writer token.
    pub whole: bool,
}

/// What [`Store::current`] asks of one partition: the counters read, by slot, and those
/// taken from its held values.
struct Asked {
    by_slot: Vec<(Slot, Vec<Field>)>,
    known: Vec<((Slot, Field), i64)>,
}

/// Writer tokens: a random number for this store, and a sequence number per write.
#[derive(Debug)]
struct Writers {
    nonce: u64,
    seq: AtomicU64,
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
pub struct Claim {
    pub kind: Kind,
    pub id: IdKey,
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
    writers: Arc<Writers>,
    /// On a cluster, the slot map that groups a round trip's calls by node.
    nodes: nodes::Nodes,
}

impl Store {
    pub fn new(conn: RedisConn, prefix: &str, datasets: Vec<String>, dedup_ttl: u64) -> Store {
        Store {
            conn,
            keys: Keys::new(prefix),
            datasets,
            dedup_ttl,
            script: Script::new(APPLY_LUA),
            claim_script: Script::new(include_str!("claim.lua")),
            writers: Arc::new(Writers {
                nonce: fastrand::u64(..),
                seq: AtomicU64::new(0),
            }),
            nodes: nodes::Nodes::default(),
        }
    }

    /// A new writer token, for one call of [`Store::apply`]: unique to it across processes
    /// and restarts (a random 64-bit number per store, then a sequence number).
    pub fn writer(&self) -> String {
        let seq = self.writers.seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}.{seq}", self.writers.nonce)
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

    /// On a cluster, lists `parts` in the directory again. The directory is a key of its own
    /// node there: a failover to a replica that had not yet received the last SADDs, or a
    /// restart that lost them, would leave out a partition that stored data and then went
    /// quiet, since only its batches list it. The pipeline re-lists what it holds every few
    /// seconds. On a single Redis the listing is written with the counters, so nothing to do.
    pub async fn relist(&self, parts: &[(&str, i32)]) -> Result<(), StoreError> {
        if !self.conn.is_cluster() || parts.is_empty() {
            return Ok(());
        }
        let tags: Vec<String> = parts.iter().map(|(t, p)| format!("{t}/{p}")).collect();
        self.list(&tags).await
    }

    /// Adds `tags` to the directory, a round trip of its own.
    async fn list<T: redis::ToRedisArgs + Sync>(&self, tags: &[T]) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("SADD")
            .arg(self.keys.directory())
            .arg(tags)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Claims each event id; `true` where the event is new (or is this very message replayed),
    /// `false` where another message already claimed the id within the horizon.
    ///
    /// A claim is a field (the event id's digest) in a hash per shard and week of the event's
    /// time, valued with the claimant's partition and offset: the same message replayed after a
    /// crash finds its own value and is new again; a re-send (another offset) finds another
    /// value. One script call (see claim.lua) on a single Redis; on a cluster, one per shard,
    /// in one pipeline per node.
    pub async fn claim(&self, plan: &ClaimPlan) -> Result<Vec<bool>, StoreError> {
        if let Some(answers) = self.claim_by_node(plan).await {
            return plan.settle(answers?);
        }
        let calls = plan.calls.iter().map(|call| {
            let mut invocation = self.claim_script.prepare_invoke();
            invocation.arg(self.dedup_ttl);
            for (key, packed) in &call.buckets {
                invocation.key(key).arg(packed);
            }
            let mut conn = self.conn.clone();
            async move {
                let answer: Vec<redis::Value> = invocation.invoke_async(&mut conn).await?;
                Ok::<_, StoreError>(answer)
            }
        });
        plan.settle(try_join_all(calls).await?)
    }

    /// On a cluster, the claim calls as one pipeline per node; `None` where they go call by
    /// call (a single Redis, or a node refused one: see `nodes`).
    async fn claim_by_node(
        &self,
        plan: &ClaimPlan,
    ) -> Option<Result<Vec<Vec<redis::Value>>, StoreError>> {
        if !self.conn.is_cluster() {
            return None;
        }
        let mut calls = Vec::with_capacity(plan.calls.len());
        for call in &plan.calls {
            let keys: Vec<&String> = call.buckets.iter().map(|(key, _)| key).collect();
            let mut cmd = evalsha(&self.claim_script, &keys);
            cmd.arg(self.dedup_ttl);
            for (_, packed) in &call.buckets {
                cmd.arg(packed);
            }
            calls.push((nodes::route_key(keys.first().copied()), cmd));
        }
        let answers = self.nodes.send(&self.conn, calls).await?;
        Some(answers.into_iter().map(from_value).collect())
    }

    /// Groups claims (their ids digested at decode) into the script calls [`Store::claim`]
    /// makes: CPU work only,
    /// so it can be done ahead, while the batch before is being stored.
    pub fn plan_claims(&self, claims: &[Claim]) -> ClaimPlan {
        ClaimPlan::new(&self.keys, claims, self.conn.is_cluster())
    }

    /// Reads the counters each partition batch may add to, so its transaction can write
    /// them whole: one `HSET` per hash instead of one `HINCRBY` per counter, which is most of
    /// a backfill's Redis time (each event is its own day counter). Sent with the claims, so
    /// it costs no round trip of its own, and only reads, so no write or fsync. Counters the
    /// batch's [`Held`] values cover are not read, if they are for the expected offset.
    ///
    /// Sound because a partition's counters change only together with its stored offset and
    /// writer token (apply.lua and the transaction write all three or none), and a token is
    /// written once: read in one snapshot (MULTI/EXEC) with the offset and token, and written
    /// in a transaction whose fence checks both again, they are the counters the deltas add
    /// to. Held values count only if the snapshot shows the token they were written under.
    /// A bucket that expires in between is past every window's reach. `None` for a partition
    /// whose offset or token was not the expected one, and for every partition on a cluster.
    pub async fn current(
        &self,
        batches: &[PartitionBatch<'_>],
        now: i64,
    ) -> Result<Vec<Option<Current>>, StoreError> {
        if self.conn.is_cluster() || batches.is_empty() {
            return Ok(batches.iter().map(|_| None).collect());
        }
        let (mut names, mut rendered) = (apply::Names::default(), Vec::new());
        let mut asked: Vec<Asked> = Vec::with_capacity(batches.len());
        let mut pipe = redis::pipe();
        pipe.atomic();
        for b in batches {
            let keys = self.keys.partition(b.topic, b.partition);
            pipe.get(keys.offset());
            pipe.hget(keys.totals(), WRITER);
            let held = b.held.filter(|h| h.last.offset == b.expected);
            let mut by_slot: FxHashMap<Slot, Vec<Field>> = FxHashMap::default();
            let mut known = Vec::new();
            for &cell in b.cells(now).keys() {
                let value = held.and_then(|h| h.get(&cell));
                match value.filter(|_| Held::lasting(cell.0, now)) {
                    Some(value) => known.push((cell, value)),
                    None => by_slot.entry(cell.0).or_default().push(cell.1),
                }
            }
            let by_slot: Vec<(Slot, Vec<Field>)> = by_slot.into_iter().collect();
            for (slot, fields) in &by_slot {
                let key = match slot {
                    Slot::Total => keys.totals(),
                    Slot::Bucket(tier, n) => keys.bucket(*tier, *n),
                };
                let cmd = pipe.cmd("HMGET").arg(key);
                for field in fields {
                    let name = names.of(&mut rendered, *field, &self.datasets);
                    cmd.arg(&rendered[name]);
                }
            }
            asked.push(Asked { by_slot, known });
        }
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(batches.len());
        for (b, Asked { by_slot, known }) in batches.iter().zip(asked) {
            let stored: Option<i64> = redis::from_redis_value(next_reply(&mut replies)?)?;
            let writer: Option<String> = redis::from_redis_value(next_reply(&mut replies)?)?;
            let mut values = FxHashMap::default();
            for (slot, fields) in by_slot {
                let read: Vec<Option<i64>> = redis::from_redis_value(next_reply(&mut replies)?)?;
                if read.len() != fields.len() {
                    return Err(StoreError::Reply(format!(
                        "{} values for {} counters",
                        read.len(),
                        fields.len()
                    )));
                }
                for (field, value) in fields.into_iter().zip(read) {
                    values.insert((slot, field), value.unwrap_or(0));
                }
            }
            let held_valid = known.is_empty()
                || b.held
                    .is_some_and(|h| writer.as_deref() == Some(h.last.writer.as_str()));
            values.extend(known);
            out.push(
                (stored.unwrap_or(-1) == b.expected && held_valid)
                    .then_some(Current { values, writer }),
            );
        }
        Ok(out)
    }

    /// Applies each partition batch atomically with its offsets. On a single Redis, the
    /// counters go out as plain commands in a transaction (see `apply_watched`), and only a
    /// batch a partition's fence stops takes the script path; on a cluster, one script call
    /// per partition and a directory update, all sent together.
    ///
    /// `writer` is a token from [`Store::writer`], new for each call (a retry included).
    pub async fn apply(
        &self,
        batches: &[PartitionBatch<'_>],
        writer: &str,
        now: i64,
    ) -> Result<Written, StoreError> {
        if batches.is_empty() {
            return Ok(Written {
                applied: Vec::new(),
                whole: false,
            });
        }
        // Every batch re-lists its partitions (an idempotent SADD): a Redis that lost its
        // last writes must not lose a partition from the directory readers use.
        let tags: Vec<String> = batches
            .iter()
            .map(|b| format!("{}/{}", b.topic, b.partition))
            .collect();
        if !self.conn.is_cluster() {
            if let Some(applied) = self.apply_watched(batches, &tags, writer, now).await? {
                return Ok(Written {
                    applied,
                    whole: true,
                });
            }
        }
        // A token of its own: the watched path's says that the counters are what the caller
        // worked out from `current` (see `Held::after`), which blind adds do not promise, and
        // the storer reads the next batch before it knows which path this one took.
        let blind = format!("{writer}+");
        let applied = self.apply_scripted(batches, &tags, &blind, now).await?;
        Ok(Written {
            applied,
            whole: false,
        })
    }

    /// A single Redis's fast path, one round trip: WATCH the offsets and totals, check the
    /// offsets and, where counters are written whole, their writer (fence.lua),
    /// then MULTI, apply.lua without the counters, the counters, EXEC. A counter read by
    /// [`Store::current`] is written whole, one HSET per hash; any other is one HINCRBY, which
    /// Redis runs sent this way in about half the time it takes called from Lua. The
    /// transaction is still all or nothing with the offsets. If an offset is not the
    /// expected one, fence.lua touches a watched key, so EXEC does nothing and answers nil:
    /// then `None`, and the caller applies through the script, which fences per partition.
    ///
    /// The whole pipeline is one request on one connection, so no other request of this
    /// process falls between WATCH and EXEC, and a connection lost half-way drops the
    /// transaction with it.
    async fn apply_watched(
        &self,
        batches: &[PartitionBatch<'_>],
        tags: &[String],
        writer: &str,
        now: i64,
    ) -> Result<Option<Vec<Applied>>, StoreError> {
        let all: Vec<&PartitionBatch<'_>> = batches.iter().collect();
        let call = self.apply_call(&all, Some(tags), writer, now, false);
        let (mut fenced, mut expected) = (Vec::new(), Vec::new());
        for b in batches {
            let keys = self.keys.partition(b.topic, b.partition);
            fenced.extend([keys.offset(), keys.totals()]);
            let writer = match b.current {
                Some(c) => c.writer.as_deref().unwrap_or("-"),
                None => "*",
            };
            expected.extend([b.expected.to_string(), writer.to_string()]);
        }
        let touch = self.keys.fence();
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH").arg(&fenced).arg(&touch).ignore();
        // EVAL with the script's text, never EVALSHA: a NOSCRIPT error would let the
        // transaction run unchecked (fence.lua) or half done (apply.lua).
        pipe.cmd("EVAL")
            .arg(FENCE_LUA)
            .arg(fenced.len() + 1)
            .arg(&fenced)
            .arg(&touch)
            .arg(&expected);
        pipe.cmd("MULTI").ignore();
        pipe.cmd("EVAL")
            .arg(APPLY_LUA)
            .arg(call.keys.len())
            .arg(&call.keys)
            .arg(&call.args)
            .ignore();
        for (key, values) in &call.sets {
            let cmd = pipe.cmd("HSET").arg(&call.keys[*key]);
            for (field, value) in values {
                cmd.arg(&call.names[*field]).arg(value);
            }
            cmd.ignore();
        }
        for (key, field, delta) in &call.increments {
            pipe.cmd("HINCRBY")
                .arg(&call.keys[*key])
                .arg(&call.names[*field])
                .arg(delta)
                .ignore();
        }
        pipe.cmd("EXEC");
        let mut conn = self.conn.clone();
        let (fence, exec): (i64, redis::Value) = pipe.query_async(&mut conn).await?;
        let replies = match exec {
            redis::Value::Nil => return Ok(None),
            redis::Value::Array(replies) => replies,
            other => return Err(StoreError::Reply(format!("EXEC answered {other:?}"))),
        };
        if fence != 1 {
            // fence.lua touched a watched key, so Redis cannot have run the transaction.
            return Err(StoreError::Reply(
                "a transaction ran though its fence failed".into(),
            ));
        }
        if let Some(redis::Value::ServerError(e)) = replies
            .iter()
            .find(|r| matches!(r, redis::Value::ServerError(_)))
        {
            return Err(StoreError::Reply(format!("in a transaction: {e:?}")));
        }
        let reply: Vec<i64> = match replies.into_iter().next() {
            Some(first) => redis::from_redis_value(first)?,
            None => Vec::new(),
        };
        applied(reply, batches.len()).map(Some)
    }

    /// On a cluster, the apply calls and the directory update as one pipeline per node;
    /// `None` where they go call by call (see `nodes`).
    async fn apply_by_node(
        &self,
        calls: &[apply::ApplyCall],
        tags: &[String],
    ) -> Option<Result<Vec<Vec<i64>>, StoreError>> {
        if !self.conn.is_cluster() {
            return None;
        }
        let mut sends = Vec::with_capacity(calls.len() + 1);
        for call in calls {
            let mut cmd = evalsha(&self.script, &call.keys);
            cmd.arg(&call.args);
            sends.push((nodes::route_key(call.keys.first()), cmd));
        }
        let directory = self.keys.directory();
        let mut listed = redis::cmd("SADD");
        listed.arg(&directory).arg(tags);
        sends.push((directory.into_bytes(), listed));
        let mut answers = self.nodes.send(&self.conn, sends).await?;
        answers.pop();
        Some(answers.into_iter().map(from_value).collect())
    }

    /// On a cluster, lists the partitions of `batches` that have nothing stored yet, before
    /// their first counters are written. The directory is a key of its own there, on its own
    /// node, and it is otherwise updated beside the counters: were the process killed between
    /// the two, nothing would list the partition until its next batch, which a quiet one may
    /// never send, and readers would leave its counts out. A round trip of its own, once in a
    /// partition's life; listing a partition with nothing stored is harmless.
    async fn list_new(
        &self,
        batches: &[PartitionBatch<'_>],
        tags: &[String],
    ) -> Result<(), StoreError> {
        let new: Vec<&String> = batches
            .iter()
            .zip(tags)
            .filter(|(b, _)| b.expected < 0)
            .map(|(_, tag)| tag)
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.list(&new).await
    }

    /// The apply.lua call for `batches` (see `apply::call`).
    fn apply_call(
        &self,
        batches: &[&PartitionBatch<'_>],
        directory: Option<&[String]>,
        writer: &str,
        now: i64,
        counters_inline: bool,
    ) -> apply::ApplyCall {
        apply::call(
            &self.keys,
            &self.datasets,
            batches,
            directory,
            writer,
            now,
            counters_inline,
        )
    }

    /// Applies through apply.lua alone: one call for every partition on a single Redis, one
    /// per partition (and a directory update) on a cluster, in one pipeline per node.
    async fn apply_scripted(
        &self,
        batches: &[PartitionBatch<'_>],
        tags: &[String],
        writer: &str,
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        let calls: Vec<apply::ApplyCall> = if self.conn.is_cluster() {
            self.list_new(batches, tags).await?;
            batches
                .iter()
                .map(|b| self.apply_call(&[b], None, writer, now, true))
                .collect()
        } else {
            let all: Vec<&PartitionBatch<'_>> = batches.iter().collect();
            vec![self.apply_call(&all, Some(tags), writer, now, true)]
        };
        if let Some(replies) = self.apply_by_node(&calls, tags).await {
            return applied(replies?.into_iter().flatten().collect(), batches.len());
        }
        let listed = async {
            if !self.conn.is_cluster() {
                return Ok(());
            }
            self.list(tags).await
        };
        let calls = calls.into_iter().map(|call| {
            let mut invocation = self.script.prepare_invoke();
            invocation.key(call.keys).arg(call.args);
            let mut conn = self.conn.clone();
            async move {
                let reply: Vec<i64> = invocation.invoke_async(&mut conn).await?;
                Ok::<_, StoreError>(reply)
            }
        });
        let (_, replies) = futures::try_join!(listed, try_join_all(calls))?;
        applied(replies.into_iter().flatten().collect(), batches.len())
    }
}

/// `EVALSHA` of `script` with `keys`, its arguments to add: for a pipeline, where a script
/// cannot be loaded on the way as `Script::invoke_async` does.
fn evalsha(script: &Script, keys: &[impl redis::ToRedisArgs]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

fn from_value<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, StoreError> {
    Ok(redis::from_redis_value(value)?)
}

/// The next reply of a transaction, which must hold one per command sent.
fn next_reply(
    replies: &mut impl Iterator<Item = redis::Value>,
) -> Result<redis::Value, StoreError> {
    match replies.next() {
        Some(redis::Value::ServerError(e)) => Err(StoreError::Reply(format!("{e:?}"))),
        Some(value) => Ok(value),
        None => Err(StoreError::Reply(
            "a transaction answered too few values".into(),
        )),
    }
}

/// apply.lua's answer: (1 stored | 0 fenced, offset) per partition batch.
fn applied(reply: Vec<i64>, batches: usize) -> Result<Vec<Applied>, StoreError> {
    if reply.len() != 2 * batches {
        return Err(StoreError::Reply(format!(
            "{} values for {batches} partition batches",
            reply.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Metric;
    use crate::provinces::{Scheme, Unit};

    /// A counter of dataset `d` of unit 1, in the totals.
    fn cell(d: u8) -> (Slot, Field) {
        let unit = Unit {
            scheme: Scheme::Current34,
            code: 1,
        };
        let metric = Metric::Records(d);
        (Slot::Total, Field { unit, metric })
    }

    /// What a batch at `next` by `writer` wrote whole over the state `over` left: values 1
    /// of datasets `ds`.
    fn written(ds: &[u8], next: i64, writer: &str, over: Option<&str>) -> Held {
        let current = Current {
            values: ds.iter().map(|d| (cell(*d), 1)).collect(),
            writer: over.map(str::to_string),
        };
        Held::after(
            &current,
            &Cells::default(),
            0,
            (next - 10, next),
            writer.into(),
        )
    }

    #[test]
    fn a_batch_written_over_the_held_state_adds_to_what_is_held() {
        let mut held = written(&[0, 1], 10, "a.1", None);
        held.update(written(&[1, 2], 20, "a.2", Some("a.1")), 100);
        assert_eq!(
            (held.offset, held.writer.as_str(), held.len()),
            (20, "a.2", 3)
        );
    }

    #[test]
    fn a_batch_written_over_another_state_replaces_what_is_held() {
        // Between the two, another writer (b.7) wrote: what a.1 left may be gone.
        let mut held = written(&[0, 1], 10, "a.1", None);
        held.update(written(&[2], 20, "a.2", Some("b.7")), 100);
        assert_eq!((held.offset, held.len()), (20, 1));
        assert!(held.values.contains_key(&cell(2)));
    }

    #[test]
    fn a_batch_read_at_another_offset_replaces_what_is_held() {
        // A version without tokens moved the partition from 10 to 20 and left a.1's token:
        // what a.1 left is gone, though the token is the same.
        let mut held = written(&[0, 1], 10, "a.1", None);
        held.update(written(&[2], 30, "a.2", Some("a.1")), 100);
        assert_eq!((held.offset, held.len()), (30, 1));
    }

    #[test]
    fn beyond_the_limit_only_the_last_batch_is_held() {
        let mut held = written(&[0, 1], 10, "a.1", None);
        held.update(written(&[2, 3], 20, "a.2", Some("a.1")), 3);
        assert_eq!(held.len(), 2);
    }
}
