//! The claim.lua calls of one batch, and how their answers become new-or-re-sent per event.
//!
//! Each id goes to Redis once per batch: a repeat of an id inside the batch (a re-send that
//! arrived close to its original) is settled here from the answer for its first occurrence,
//! so claim.lua keeps no table of the claims it made in the call.

use std::collections::HashMap;

use super::keys::{self, Keys, CLAIM_ID_SIZE, CLAIM_SIZE};
use super::{Claim, StoreError};
use crate::events::Kind;

/// A claim's stored value: the claimant's partition and offset, big-endian.
type Owner = [u8; CLAIM_SIZE - CLAIM_ID_SIZE];

fn owner(c: &Claim) -> Owner {
    let mut v = [0u8; CLAIM_SIZE - CLAIM_ID_SIZE];
    v[..4].copy_from_slice(&(c.partition as u32).to_be_bytes());
    v[4..].copy_from_slice(&c.offset.to_be_bytes());
    v
}

/// A digest's first 8 bytes as a number: digests are SHA-256 prefixes, so this alone almost
/// always orders two of them, in one comparison rather than a byte-wise one.
fn head(id: &[u8; CLAIM_ID_SIZE]) -> u64 {
    u64::from_be_bytes(id[..8].try_into().expect("a digest is longer than 8 bytes"))
}

/// One claim.lua call: its buckets with their packed claims, in argument order.
#[derive(Debug, Default)]
pub(super) struct Call {
    pub buckets: Vec<(String, Vec<u8>)>,
    /// The position in the batch's claims of each claim sent, in the order sent.
    positions: Vec<usize>,
}

/// A batch's claims, grouped into calls.
#[derive(Debug)]
pub struct Plan {
    pub(super) calls: Vec<Call>,
    owners: Vec<Owner>,
    /// (position, position of the first claim of the same id and bucket): not sent.
    repeats: Vec<(usize, usize)>,
}

impl Plan {
    /// Every bucket in one call, or (`per_shard`, for a cluster) one call per shard.
    pub(super) fn new(keys: &Keys, claims: &[Claim], per_shard: bool) -> Plan {
        // Keyed by what publishers choose (event times), so the hasher is seeded at random:
        // no input can be crafted to pile keys into one probe sequence. foldhash rather than
        // std's SipHash: with SipHash and B-trees this function took about a tenth of
        // tiendo's CPU in a profile of a backfill.
        type Seeded = foldhash::fast::RandomState;
        // (shard, kind, week) → index in `buckets`, which holds them in the order first met,
        // each with its claims' digests and positions, in batch order.
        type Bucket = (u64, Kind, i64);
        // A claim's id digest and its position in the batch.
        type Member = ([u8; CLAIM_ID_SIZE], usize);
        let mut index: HashMap<Bucket, usize, Seeded> = HashMap::default();
        let mut buckets: Vec<(Bucket, Vec<Member>)> = Vec::new();
        for (position, c) in claims.iter().enumerate() {
            let bucket = (u64::from(c.id.shard), c.kind, keys::claim_week(c.at));
            let b = *index.entry(bucket).or_insert_with(|| {
                buckets.push((bucket, Vec::new()));
                buckets.len() - 1
            });
            buckets[b].1.push((c.id.digest, position));
        }
        let owners: Vec<Owner> = claims.iter().map(owner).collect();
        let mut repeats = Vec::new();
        // Calls go out by shard, and buckets by kind and week inside one: the same order for
        // the same claims, whatever order they came in.
        buckets.sort_unstable_by_key(|(bucket, _)| *bucket);
        let mut calls: Vec<Call> = Vec::new();
        let mut last_shard = None;
        for ((shard, kind, week), mut members) in buckets {
            // Sorted, a bucket's claims of one id lie side by side, the earliest first: only
            // that one is sent. A bucket's sort works in the cache, which a map of the whole
            // batch's ids (about 2 MB for 30,000 claims) did not fit.
            members.sort_unstable_by(|a, b| head(&a.0).cmp(&head(&b.0)).then_with(|| a.cmp(b)));
            if calls.is_empty() || (per_shard && last_shard != Some(shard)) {
                calls.push(Call::default());
            }
            last_shard = Some(shard);
            let call = calls.last_mut().expect("one call at least");
            let mut packed = Vec::with_capacity(members.len() * CLAIM_SIZE);
            for same in members.chunk_by(|a, b| a.0 == b.0) {
                let (id, first) = same[0];
                packed.extend_from_slice(&id);
                packed.extend_from_slice(&owners[first]);
                call.positions.push(first);
                repeats.extend(same[1..].iter().map(|&(_, position)| (position, first)));
            }
            call.buckets.push((keys.dedup(shard, kind, week), packed));
        }
        Plan {
            calls,
            owners,
            repeats,
        }
    }

    /// `true` where the event is new (or is this very message replayed), from each call's
    /// answer: claim.lua's (position from 1, owner) of every claim another message owns.
    pub(super) fn settle(&self, answers: Vec<Vec<redis::Value>>) -> Result<Vec<bool>, StoreError> {
        let mut fresh = vec![true; self.owners.len()];
        let mut taken: HashMap<usize, Owner> = HashMap::new();
        for (call, answer) in self.calls.iter().zip(answers) {
            if answer.len() % 2 != 0 {
                return Err(StoreError::Reply(format!(
                    "{} values for duplicates and their owners",
                    answer.len()
                )));
            }
            let mut answer = answer.into_iter();
            while let (Some(at), Some(by)) = (answer.next(), answer.next()) {
                let position = match at {
                    redis::Value::Int(n) => usize::try_from(n - 1)
                        .ok()
                        .and_then(|i| call.positions.get(i)),
                    _ => None,
                };
                let by = match by {
                    redis::Value::BulkString(b) => Owner::try_from(b.as_slice()).ok(),
                    _ => None,
                };
                let (Some(&position), Some(by)) = (position, by) else {
                    return Err(StoreError::Reply(format!(
                        "a duplicate not among the {} claims sent",
                        call.positions.len()
                    )));
                };
                fresh[position] = false;
                taken.insert(position, by);
            }
        }
        // A repeat is new only if it owns the id: the first occurrence found it claimed by
        // this very message (a replay after a crash, the re-send earlier in the batch).
        for &(position, first) in &self.repeats {
            let by = taken.get(&first).unwrap_or(&self.owners[first]);
            fresh[position] = self.owners[position] == *by;
        }
        Ok(fresh)
    }

    /// Claims sent in all calls.
    #[cfg(test)]
    fn sent(&self) -> usize {
        self.calls.iter().map(|c| c.positions.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::Entry;
    use std::collections::HashSet;

    use super::*;

    fn claim(id: &str, partition: i32, offset: i64, at: i64) -> Claim {
        Claim {
            kind: Kind::Records,
            id: keys::IdKey::of(id),
            partition,
            offset,
            at,
        }
    }

    /// What claim.lua answers for one call, given what is stored: (position, owner) of every
    /// claim stored under another owner. Panics on an id sent twice: the script would claim
    /// it twice and count both.
    fn answer(call: &Call, stored: &mut HashMap<(String, Vec<u8>), Owner>) -> Vec<redis::Value> {
        let mut out = Vec::new();
        let mut n = 0;
        let mut seen = HashSet::new();
        for (key, packed) in &call.buckets {
            for record in packed.chunks(CLAIM_SIZE) {
                n += 1;
                let (id, value) = record.split_at(CLAIM_ID_SIZE);
                assert!(seen.insert((key.clone(), id.to_vec())), "an id sent twice");
                let value = Owner::try_from(value).unwrap();
                match stored.entry((key.clone(), id.to_vec())) {
                    Entry::Vacant(e) => {
                        e.insert(value);
                    }
                    Entry::Occupied(e) if *e.get() != value => {
                        out.push(redis::Value::Int(n));
                        out.push(redis::Value::BulkString(e.get().to_vec()));
                    }
                    Entry::Occupied(_) => {}
                }
            }
        }
        assert_eq!(n as usize, call.positions.len());
        out
    }

    fn run(claims: &[Claim], stored: &mut HashMap<(String, Vec<u8>), Owner>) -> Vec<bool> {
        let plan = Plan::new(&Keys::new("t"), claims, false);
        let answers = plan.calls.iter().map(|c| answer(c, stored)).collect();
        plan.settle(answers).unwrap()
    }

    #[test]
    fn a_batch_sends_each_id_once_and_counts_it_once() {
        let at = 1_727_740_800;
        let ids: Vec<String> = (0..500).map(|i| format!("e-{}", i % 200)).collect();
        let claims: Vec<Claim> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| claim(id, (i % 3) as i32, i as i64, at))
            .collect();
        let plan = Plan::new(&Keys::new("t"), &claims, true);
        assert_eq!(plan.sent(), 200);
        let fresh = run(&claims, &mut HashMap::new());
        assert_eq!(fresh.iter().filter(|f| **f).count(), 200);
        assert!(fresh[..200].iter().all(|f| *f));
    }

    #[test]
    fn a_cluster_gets_one_call_per_shard_and_a_single_redis_one_call() {
        let day = 86_400;
        let ids: Vec<String> = (0..300).map(|i| format!("e-{i}")).collect();
        let claims: Vec<Claim> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| claim(id, 0, i as i64, (i as i64 % 40) * day))
            .collect();
        let keys = Keys::new("t");
        let single = Plan::new(&keys, &claims, false);
        let cluster = Plan::new(&keys, &claims, true);
        assert_eq!(single.calls.len(), 1);
        assert_eq!(cluster.calls.len(), keys::DEDUP_SHARDS as usize);
        let names = |plan: &Plan| -> Vec<String> {
            plan.calls
                .iter()
                .flat_map(|c| c.buckets.iter().map(|(k, _)| k.clone()))
                .collect()
        };
        // The same buckets in the same order, each named once.
        assert_eq!(names(&single), names(&cluster));
        let unique: HashSet<String> = names(&single).into_iter().collect();
        assert_eq!(unique.len(), names(&single).len());
        // Each cluster call holds one shard's buckets: one hash tag.
        for call in &cluster.calls {
            let tags: HashSet<&str> = call
                .buckets
                .iter()
                .map(|(k, _)| &k[k.find('{').unwrap()..=k.find('}').unwrap()])
                .collect();
            assert_eq!(tags.len(), 1, "{:?}", call.buckets.len());
        }
        assert_eq!(single.sent(), 300);
        assert_eq!(cluster.sent(), 300);
    }

    #[test]
    fn the_same_id_in_another_week_is_another_claim() {
        let claims = [claim("x", 0, 1, 0), claim("x", 0, 2, 30 * 86_400)];
        assert_eq!(run(&claims, &mut HashMap::new()), [true, true]);
    }

    #[test]
    fn a_replayed_owner_after_its_re_send_in_one_batch_is_counted_once() {
        // A crash after the claims, before the counters: "x" is claimed by partition 0 at
        // offset 10. The replayed batch also holds a re-send of "x" from partition 1 that
        // comes first: the re-send is the duplicate, the owner is counted.
        let mut stored = HashMap::new();
        assert_eq!(run(&[claim("x", 0, 10, 0)], &mut stored), [true]);
        let replay = [
            claim("x", 1, 5, 0),
            claim("x", 0, 10, 0),
            claim("x", 2, 7, 0),
        ];
        assert_eq!(run(&replay, &mut stored), [false, true, false]);
        // And the whole batch retried again (Redis failed half-way): the same answer.
        assert_eq!(run(&replay, &mut stored), [false, true, false]);
    }

    #[test]
    fn a_bad_answer_is_an_error_not_a_guess() {
        let claims = [claim("x", 0, 1, 0)];
        let plan = Plan::new(&Keys::new("t"), &claims, false);
        for answer in [
            vec![redis::Value::Int(2), redis::Value::BulkString(vec![0; 12])],
            vec![redis::Value::Int(1), redis::Value::BulkString(vec![0; 3])],
            vec![redis::Value::Int(1)],
        ] {
            assert!(plan.settle(vec![answer]).is_err());
        }
    }
}
