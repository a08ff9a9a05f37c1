//! Stage 4: Redis. Counter deltas are stored atomically with the Kafka offsets that produced
//! them, one script call per partition batch; re-sent events are caught by dedup claims.
//!
//! Dedup claims are written before the counters, in their own round trip, and carry the
//! claimant's coordinates (`partition:offset`). If the process dies between the claim and the
//! counters, the replayed event finds its own claim and is counted; an event re-sent upstream
//! finds someone else's claim and is not. So claims need no atomicity with the counters and
//! may live in any slot, which lets dedup work across partitions.

mod conn;
mod keys;
mod read;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use futures::future::try_join_all;
use redis::Script;

pub use conn::{connect, RedisConn};
pub use keys::{Keys, PartitionKeys, DEDUP_SHARDS};
pub use read::{Counts, Snapshot};

use crate::aggregate::{Aggregate, Slot};
use crate::buckets::Tier;
use crate::events::Kind;

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
}

pub struct Store {
    conn: RedisConn,
    keys: Keys,
    datasets: Vec<String>,
    dedup_ttl: u64,
    script: Script,
    /// Partitions already listed in the directory by this process.
    registered: Mutex<HashSet<String>>,
}

impl Store {
    pub fn new(conn: RedisConn, prefix: &str, datasets: Vec<String>, dedup_ttl: u64) -> Store {
        Store {
            conn,
            keys: Keys::new(prefix),
            datasets,
            dedup_ttl,
            script: Script::new(include_str!("apply.lua")),
            registered: Mutex::new(HashSet::new()),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
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
    pub async fn claim(&self, claims: &[Claim<'_>]) -> Result<Vec<bool>, StoreError> {
        let mut shards: BTreeMap<u64, (redis::Pipeline, Vec<(usize, String)>)> = BTreeMap::new();
        for (i, c) in claims.iter().enumerate() {
            let (shard, key) = self.keys.dedup(c.kind, c.id);
            let mine = format!("{}:{}", c.partition, c.offset);
            let (pipe, owners) = shards
                .entry(shard)
                .or_insert_with(|| (redis::pipe(), vec![]));
            pipe.cmd("SET")
                .arg(key)
                .arg(&mine)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(self.dedup_ttl);
            owners.push((i, mine));
        }
        let sends = shards.into_values().map(|(pipe, owners)| {
            let mut conn = self.conn.clone();
            async move {
                let replies: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                Ok::<_, StoreError>((owners, replies))
            }
        });
        let mut fresh = vec![false; claims.len()];
        for (owners, replies) in try_join_all(sends).await? {
            if owners.len() != replies.len() {
                return Err(StoreError::Reply("claim pipeline length".into()));
            }
            for ((i, mine), previous) in owners.into_iter().zip(replies) {
                fresh[i] = previous.is_none_or(|p| p == mine);
            }
        }
        Ok(fresh)
    }

    /// Applies each partition batch atomically with its offsets; one script call each, all
    /// sent together.
    pub async fn apply(
        &self,
        batches: &[PartitionBatch<'_>],
        now: i64,
    ) -> Result<Vec<Applied>, StoreError> {
        let new_tags: Vec<String> = {
            let registered = self.registered.lock().expect("registered lock");
            batches
                .iter()
                .map(|b| format!("{}/{}", b.topic, b.partition))
                .filter(|t| !registered.contains(t))
                .collect()
        };
        if !new_tags.is_empty() {
            // Listed before the first write, so readers never miss a partition with data.
            redis::cmd("SADD")
                .arg(self.keys.directory())
                .arg(&new_tags)
                .query_async::<()>(&mut self.conn.clone())
                .await?;
            self.registered
                .lock()
                .expect("registered lock")
                .extend(new_tags);
        }
        let calls = batches.iter().map(|b| {
            let invocation = self.invocation(b, now);
            let mut conn = self.conn.clone();
            async move {
                let (ok, offset): (i64, i64) = invocation.invoke_async(&mut conn).await?;
                Ok::<_, StoreError>(if ok == 1 {
                    Applied::Stored
                } else {
                    Applied::Fenced { stored: offset }
                })
            }
        });
        try_join_all(calls).await
    }

    fn invocation(&self, b: &PartitionBatch<'_>, now: i64) -> redis::ScriptInvocation<'_> {
        let keys = self.keys.partition(b.topic, b.partition);
        let mut inv = self.script.prepare_invoke();
        inv.key(keys.offset())
            .key(keys.totals())
            .key(keys.latest())
            .key(keys.dead());
        // Bucket keys are numbered after the four fixed ones (Lua indexes from 1).
        let mut bucket_index: HashMap<(Tier, i64), usize> = HashMap::new();
        let mut expiries: Vec<(usize, i64)> = Vec::new();
        let mut incr: Vec<(usize, String, i64)> = Vec::new();
        for ((slot, field), delta) in &b.aggregate.counters {
            let idx = match slot {
                Slot::Total => 2,
                Slot::Bucket(tier, n) => *bucket_index.entry((*tier, *n)).or_insert_with(|| {
                    let idx = 5 + expiries.len();
                    inv.key(keys.bucket(*tier, *n));
                    expiries.push((idx, tier.ttl(*n, now).unwrap_or(1)));
                    idx
                }),
            };
            incr.push((idx, field.render(&self.datasets), *delta));
        }
        for (reason, n) in &b.aggregate.dead {
            incr.push((4, reason.as_str().to_string(), *n));
        }
        inv.arg(b.expected).arg(b.next).arg(incr.len());
        for (idx, field, delta) in incr {
            inv.arg(idx).arg(field).arg(delta);
        }
        inv.arg(b.aggregate.latest.len());
        for (field, at) in &b.aggregate.latest {
            inv.arg(field.render(&self.datasets)).arg(*at);
        }
        inv.arg(expiries.len());
        for (idx, ttl) in expiries {
            inv.arg(idx).arg(ttl);
        }
        inv
    }
}
