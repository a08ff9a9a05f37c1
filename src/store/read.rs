//! Reading the counters back: every partition's totals, newest times, dead-letter counts and
//! window sums, merged. Readers (status, rules, the HTTP API) all start from a [`Snapshot`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures::future::try_join_all;

use super::{Store, StoreError};
use crate::buckets::{Tier, WINDOWS};

/// A counter's total and its sums over each of [`WINDOWS`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub total: i64,
    pub windows: [i64; WINDOWS.len()],
}

/// Everything stored, summed over partitions, keyed by the field names the pipeline writes
/// (`o94|r.civil_status`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub as_of: DateTime<Utc>,
    pub counts: BTreeMap<String, Counts>,
    pub latest: BTreeMap<String, i64>,
    pub dead: BTreeMap<String, i64>,
    /// Next offset per `topic/partition`.
    pub offsets: BTreeMap<String, i64>,
}

type Raw = HashMap<String, String>;
type Hash = HashMap<String, i64>;

/// Counter values of a hash, without the '~' encoding pin (see apply.lua).
fn counters(raw: Raw) -> Hash {
    raw.into_iter()
        .filter(|(k, _)| !k.starts_with('~'))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect()
}

impl Store {
    /// Reads every partition's figures at `now`, one pipeline per partition, all at once.
    pub async fn snapshot(&self, now: DateTime<Utc>) -> Result<Snapshot, StoreError> {
        let mut conn = self.conn.clone();
        let tags: BTreeSet<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.directory())
            .query_async(&mut conn)
            .await?;
        let plans: Vec<Vec<(Tier, i64)>> = WINDOWS.iter().map(|w| w.plan(now)).collect();
        let buckets: BTreeSet<(Tier, i64)> = plans.iter().flatten().copied().collect();
        let buckets: Vec<(Tier, i64)> = buckets.into_iter().collect();

        let reads = tags.iter().map(|tag| {
            let keys = self.keys.tagged(tag);
            let mut pipe = redis::pipe();
            pipe.get(keys.offset())
                .hgetall(keys.totals())
                .hgetall(keys.latest())
                .hgetall(keys.dead());
            for (tier, b) in &buckets {
                pipe.hgetall(keys.bucket(*tier, *b));
            }
            let mut conn = self.conn.clone();
            async move {
                let mut values: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                let rest = values.split_off(4);
                let (offset, totals, latest, dead): (Option<i64>, Raw, Raw, Raw) =
                    redis::from_redis_value(redis::Value::Array(values))?;
                let head = (offset, counters(totals), counters(latest), counters(dead));
                let rest = rest
                    .into_iter()
                    .map(|v| redis::from_redis_value(v).map(counters))
                    .collect::<Result<Vec<Hash>, _>>()?;
                Ok::<_, StoreError>((tag.clone(), head, rest))
            }
        });
        let mut snap = Snapshot {
            as_of: now,
            ..Snapshot::default()
        };
        for (tag, (offset, totals, latest, dead), bucket_values) in try_join_all(reads).await? {
            if let Some(o) = offset {
                snap.offsets.insert(tag, o);
            }
            for (field, v) in totals {
                snap.counts.entry(field).or_default().total += v;
            }
            for (field, v) in latest {
                let t = snap.latest.entry(field).or_insert(v);
                *t = (*t).max(v);
            }
            for (reason, v) in dead {
                *snap.dead.entry(reason).or_default() += v;
            }
            let by_bucket: HashMap<(Tier, i64), &Hash> =
                buckets.iter().copied().zip(bucket_values.iter()).collect();
            for (w, plan) in plans.iter().enumerate() {
                for bucket in plan {
                    for (field, v) in by_bucket[bucket] {
                        snap.counts.entry(field.clone()).or_default().windows[w] += v;
                    }
                }
            }
        }
        Ok(snap)
    }
}
