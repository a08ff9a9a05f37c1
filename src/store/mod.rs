//! Stage 4: Redis. Counter deltas are stored atomically with the Kafka offsets that produced
//! them, per partition batch; re-sent events are caught by dedup claims. A batch costs two
//! round trips and, on a single Redis, two writes (a script call for the claims, sent with a
//! read-only transaction that reads the counters; then one transaction for the counters and
//! offsets): under `appendfsync always` Redis pays an fsync per event-loop pass that writes,
//! so the number of writes, not only of commands, sets the speed. On a cluster, script calls
//! are per slot and counters are added blind.
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
mod read;

use futures::future::try_join_all;
use redis::Script;

pub use claims::Plan as ClaimPlan;
pub use conn::{connect, RedisConn};
pub use keys::{Keys, PartitionKeys, CLAIM_SIZE, DEDUP_SHARDS};
pub use read::{Counts, Daily, Snapshot};

use rustc_hash::FxHashMap;

use crate::aggregate::{Aggregate, Field, Slot};
use crate::events::Kind;

const APPLY_LUA: &str = include_str!("apply.lua");
const FENCE_LUA: &str = include_str!("fence.lua");

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
    /// The partition's counters as read by [`Store::current`]; `None` to add to them blind.
    pub current: Option<&'a Current>,
}

/// Counter values of one partition, by slot and field, read in a snapshot in which its stored
/// offset was the expected one (missing counters read as 0).
pub type Current = FxHashMap<(Slot, Field), i64>;

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
            script: Script::new(APPLY_LUA),
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
    pub async fn claim(&self, plan: &ClaimPlan) -> Result<Vec<bool>, StoreError> {
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

    /// Digests and groups claims into the script calls [`Store::claim`] makes: CPU work only,
    /// so it can be done ahead, while the batch before is being stored.
    pub fn plan_claims(&self, claims: &[Claim<'_>]) -> ClaimPlan {
        ClaimPlan::new(&self.keys, claims, self.conn.is_cluster())
    }

    /// Reads the counters each partition batch may add to, so its transaction can write
    /// them whole: one `HSET` per hash instead of one `HINCRBY` per counter, which is most of
    /// a backfill's Redis time (each event is its own day counter). Sent with the claims, so
    /// it costs no round trip of its own, and only reads, so no write or fsync.
    ///
    /// Sound because a partition's counters change only together with its stored offset
    /// (apply.lua and the transaction write both or neither, and the offset only grows), so
    /// every state in which the offset is the expected one holds the same counters: read in
    /// one snapshot (MULTI/EXEC) that shows the expected offset, and written in a transaction
    /// that checks the same offset again, they are the counters the deltas add to. A bucket
    /// that expires in between is past every window's reach. `None` for a partition whose
    /// offset was not the expected one, and for every partition on a cluster.
    pub async fn current(
        &self,
        batches: &[PartitionBatch<'_>],
        now: i64,
    ) -> Result<Vec<Option<Current>>, StoreError> {
        if self.conn.is_cluster() || batches.is_empty() {
            return Ok(batches.iter().map(|_| None).collect());
        }
        let (mut names, mut rendered) = (apply::Names::default(), Vec::new());
        let mut asked: Vec<Vec<(Slot, Vec<Field>)>> = Vec::with_capacity(batches.len());
        let mut pipe = redis::pipe();
        pipe.atomic();
        for b in batches {
            let keys = self.keys.partition(b.topic, b.partition);
            pipe.get(keys.offset());
            let mut by_slot: FxHashMap<Slot, Vec<Field>> = FxHashMap::default();
            for (slot, field) in b.aggregate.cells(now).into_keys() {
                by_slot.entry(slot).or_default().push(field);
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
            asked.push(by_slot);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(batches.len());
        for (b, by_slot) in batches.iter().zip(asked) {
            let stored: Option<i64> = redis::from_redis_value(next_reply(&mut replies)?)?;
            let mut current = Current::default();
            for (slot, fields) in by_slot {
                let values: Vec<Option<i64>> = redis::from_redis_value(next_reply(&mut replies)?)?;
                if values.len() != fields.len() {
                    return Err(StoreError::Reply(format!(
                        "{} values for {} counters",
                        values.len(),
                        fields.len()
                    )));
                }
                for (field, value) in fields.into_iter().zip(values) {
                    current.insert((slot, field), value.unwrap_or(0));
                }
            }
            out.push((stored.unwrap_or(-1) == b.expected).then_some(current));
        }
        Ok(out)
    }

    /// Applies each partition batch atomically with its offsets. On a single Redis, the
    /// counters go out as plain commands in a transaction (see `apply_watched`), and only a
    /// batch a partition's fence stops takes the script path; on a cluster, one script call
    /// per partition and a directory update, all sent together.
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
        if !self.conn.is_cluster() {
            if let Some(applied) = self.apply_watched(batches, &tags, now).await? {
                return Ok(applied);
            }
        }
        self.apply_scripted(batches, &tags, now).await
    }

    /// A single Redis's fast path, one round trip: WATCH the offsets, check them (fence.lua),
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
        now: i64,
    ) -> Result<Option<Vec<Applied>>, StoreError> {
        let all: Vec<&PartitionBatch<'_>> = batches.iter().collect();
        let call = apply::call(&self.keys, &self.datasets, &all, Some(tags), now, false);
        let offsets: Vec<String> = batches
            .iter()
            .map(|b| self.keys.partition(b.topic, b.partition).offset())
            .collect();
        let expected: Vec<i64> = batches.iter().map(|b| b.expected).collect();
        let touch = self.keys.fence();
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH").arg(&offsets).arg(&touch).ignore();
        // EVAL with the script's text, never EVALSHA: a NOSCRIPT error would let the
        // transaction run unchecked (fence.lua) or half done (apply.lua).
        pipe.cmd("EVAL")
            .arg(FENCE_LUA)
            .arg(offsets.len() + 1)
            .arg(&offsets)
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

    /// Applies through apply.lua alone: one call for every partition on a single Redis, one
    /// per partition (and a directory update) on a cluster, all sent together.
    async fn apply_scripted(
        &self,
        batches: &[PartitionBatch<'_>],
        tags: &[String],
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        let calls: Vec<apply::ApplyCall> = if self.conn.is_cluster() {
            batches
                .iter()
                .map(|b| apply::call(&self.keys, &self.datasets, &[b], None, now, true))
                .collect()
        } else {
            let all: Vec<&PartitionBatch<'_>> = batches.iter().collect();
            vec![apply::call(
                &self.keys,
                &self.datasets,
                &all,
                Some(tags),
                now,
                true,
            )]
        };
        let listed = async {
            if !self.conn.is_cluster() {
                return Ok(());
            }
            let mut conn = self.conn.clone();
            redis::cmd("SADD")
                .arg(self.keys.directory())
                .arg(tags)
                .query_async::<()>(&mut conn)
                .await
                .map_err(StoreError::from)
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
