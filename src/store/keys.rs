//! Every Redis key tiendo writes, in one place.
//!
//! Keys of one partition share the hash tag `{topic/partition}`, so the batch script touches
//! a single slot and the same code runs on Redis Cluster. Dedup claims are spread over a fixed
//! set of tags so a batch's claims go out as a few same-slot pipelines.

use crate::buckets::Tier;
use crate::events::Kind;

/// How many hash tags dedup claims are spread over.
pub const DEDUP_SHARDS: u64 = 16;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// A partition's key family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKeys {
    /// `topic/partition`, the hash tag and the directory entry.
    pub tag: String,
    base: String,
}

impl PartitionKeys {
    pub fn offset(&self) -> String {
        format!("{}:off", self.base)
    }
    pub fn totals(&self) -> String {
        format!("{}:tot", self.base)
    }
    pub fn latest(&self) -> String {
        format!("{}:last", self.base)
    }
    pub fn dead(&self) -> String {
        format!("{}:dead", self.base)
    }
    pub fn bucket(&self, tier: Tier, b: i64) -> String {
        format!("{}:{}{}", self.base, tier.letter(), b)
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn partition(&self, topic: &str, partition: i32) -> PartitionKeys {
        self.tagged(&format!("{topic}/{partition}"))
    }

    /// The key family of a directory entry.
    pub fn tagged(&self, tag: &str) -> PartitionKeys {
        PartitionKeys {
            tag: tag.to_string(),
            base: format!("{}:{{{}}}", self.prefix, tag),
        }
    }

    /// Set of the tags of every partition that ever stored data: how readers find them.
    pub fn directory(&self) -> String {
        format!("{}:partitions", self.prefix)
    }

    /// A key of the alert ledger (states, outboxes, silences): all share the tag `{alerts}`
    /// so one script can commit an evaluation atomically, on Redis Cluster too.
    pub fn alerts(&self, name: &str) -> String {
        format!("{}:{{alerts}}:{}", self.prefix, name)
    }

    /// The shard an event id's claim lives in.
    pub fn dedup_shard(id: &str) -> u64 {
        fnv1a(id.as_bytes()) % DEDUP_SHARDS
    }

    /// The claim bucket of one shard, kind and day (of the event's time).
    pub fn dedup(&self, shard: u64, kind: Kind, day: i64) -> String {
        format!("{}:{{dd{}}}:{}:{}", self.prefix, shard, kind.letter(), day)
    }
}

/// FNV-1a: a tiny, stable hash; shard choice must never change between versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_share_one_hash_tag() {
        let k = Keys::new("tiendo").partition("recs", 3);
        for key in [
            k.offset(),
            k.totals(),
            k.latest(),
            k.dead(),
            k.bucket(Tier::Hour, 7),
        ] {
            assert!(key.starts_with("tiendo:{recs/3}:"), "{key}");
        }
    }

    #[test]
    fn dedup_shard_is_stable() {
        // Changing the hash would split claims made before an upgrade from those after it.
        assert_eq!(Keys::dedup_shard("abc"), 0xe71fa2190541574b % DEDUP_SHARDS);
        assert_eq!(
            Keys::new("t").dedup(3, Kind::Records, 20000),
            "t:{dd3}:r:20000"
        );
    }
}
