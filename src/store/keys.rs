//! Every Redis key tiendo writes, in one place.
//!
//! Keys of one partition share the hash tag `{topic/partition}`, so the batch script touches
//! a single slot and the same code runs on Redis Cluster. Dedup claims are spread over a fixed
//! set of tags so a batch's claims go out as a few same-slot pipelines.

use crate::buckets::Tier;
use crate::events::Kind;

/// How many hash tags dedup claims are spread over.
pub const DEDUP_SHARDS: u64 = 16;

/// Bytes of a claim's field: an event id's digest.
pub const CLAIM_ID_SIZE: usize = 14;

/// Bytes of one packed claim sent to claim.lua: the id's digest, then the claimant's partition
/// (4 bytes) and offset (8 bytes), big-endian.
pub const CLAIM_SIZE: usize = CLAIM_ID_SIZE + 4 + 8;

/// The week an event's claim is kept in: Vietnam days since the epoch, by seven. A week, not
/// a day, so a batch of events spread over two months touches about 9 buckets per shard and
/// kind rather than 60: each bucket costs a few Redis commands per batch.
pub fn claim_week(at: i64) -> i64 {
    Tier::Day.bucket(at).div_euclid(7)
}

/// The field an event id is claimed under: the first 14 bytes of its SHA-256. Ids are up to
/// 128 characters, so a fixed short field keeps claims small: Redis stores a string under 32
/// bytes with a 1-byte header and a terminator, so 14 bytes fill a 16-byte allocation. A
/// cryptographic hash means no publisher can craft two ids that collide and so hide an event
/// as a re-send; 112 bits make an accidental collision unlikely until about 10^16 events.
fn claim_id(id: &str) -> [u8; CLAIM_ID_SIZE] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let mut out = [0u8; CLAIM_ID_SIZE];
    out.copy_from_slice(&digest[..CLAIM_ID_SIZE]);
    out
}

/// What claims need of an event id: its dedup shard and its digest (`claim_id`). Worked out
/// once, when the event is decoded, so the id itself need not be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdKey {
    pub shard: u8,
    pub digest: [u8; CLAIM_ID_SIZE],
}

const _: () = assert!(DEDUP_SHARDS <= 256, "a shard must fit IdKey's u8");

impl IdKey {
    pub fn of(id: &str) -> IdKey {
        IdKey {
            shard: Keys::dedup_shard(id) as u8,
            digest: claim_id(id),
        }
    }
}

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
    /// Per source, all time: `<source>|e`, `|r`, `|d`, `|x.<reason>`, `|seen`, `|at`.
    pub fn sources(&self) -> String {
        format!("{}:src", self.base)
    }
    /// Per source, what it sent in one hour (bucket number of its messages' Kafka timestamps).
    pub fn source_hour(&self, hour: i64) -> String {
        format!("{}:srch{}", self.base, hour)
    }
    /// Recent rejects per source and reason: `<source>|<reason>|<slot>`.
    pub fn source_examples(&self) -> String {
        format!("{}:srcx", self.base)
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

    /// A key that is never kept: touched to abort a transaction watching it (see fence.lua).
    pub fn fence(&self) -> String {
        format!("{}:fence", self.prefix)
    }

    /// A key of the alert ledger (states, outboxes, silences): all share the tag `{alerts}`
    /// so one script can commit an evaluation atomically, on Redis Cluster too.
    pub fn alerts(&self, name: &str) -> String {
        format!("{}:{{alerts}}:{}", self.prefix, name)
    }

    /// The shard an event id's claim lives in. Private, with [`claim_id`]: claims are keyed
    /// only through [`IdKey::of`], so no caller can digest an id another way.
    fn dedup_shard(id: &str) -> u64 {
        fnv1a(id.as_bytes()) % DEDUP_SHARDS
    }

    /// The claim bucket of one shard, kind and week (of the event's time, see `claim_week`).
    pub fn dedup(&self, shard: u64, kind: Kind, week: i64) -> String {
        format!("{}:{{dd{}}}:{}w{}", self.prefix, shard, kind.letter(), week)
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
            Keys::new("t").dedup(3, Kind::Records, 2857),
            "t:{dd3}:rw2857"
        );
    }

    #[test]
    fn claim_id_is_stable() {
        // Changing the digest would make claims made before an upgrade unrecognisable.
        assert_eq!(
            claim_id("e-1"),
            *b"\xb9\x4f\x52\x31\x96\xaa\xac\xd8\xbd\xb9\xef\x0d\x8c\xf2"
        );
    }
}
