//! On a Redis Cluster, one pipeline per node for each of a batch's round trips.
//!
//! A cluster takes one slot per script call, so a batch is a claim call per shard and an
//! apply call per partition. Sent as separate requests, a node read them in three or four
//! passes per batch (measured), and under `appendfsync always` each pass that writes pays an
//! fsync. Here the calls of one round trip are grouped by the node that owns their slot (as
//! `CLUSTER SLOTS` last said) and each group goes as one pipeline.
//!
//! A pipeline a node redirects (MOVED, ASK: a slot that moved) is sent again by the client
//! itself, whole, up to its retry limit. Any error left in an answer (a script the node has
//! not loaded yet, redirections past that limit, a node that is down) makes the caller send
//! the same calls one by one, the client's own way, which loads scripts and follows
//! redirections call by call. The slot map is read again after such an error, and at least
//! once a minute, so a map the client had to correct does not stay wrong for long. All of this
//! is sound because any call here may run more than once, even at the same time as its
//! repeat: a claim finds its own value, and an apply whose offset is already stored is fenced
//! at exactly the next offset, which counts as stored.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};

use super::conn::RedisConn;
use crate::telemetry;

/// Why a round trip went call by call (the `reason` of its counter).
#[derive(Clone, Copy)]
enum Fallback {
    NoScript,
    Error,
    SlotMap,
}

impl Fallback {
    fn count(self) {
        let reason = match self {
            Fallback::NoScript => "noscript",
            Fallback::Error => "error",
            Fallback::SlotMap => "slot_map",
        };
        metrics::counter!(telemetry::CLUSTER_CALL_BY_CALL, "reason" => reason).increment(1);
    }
}

/// A key's cluster slot: CRC16 (XMODEM) of its hash tag, or of the whole key without one.
fn slot_of(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % 16384
}

/// The key a call is routed by: its first. A call without keys (none is made today) may run
/// on any node, so it goes to slot 0's rather than falling back uncounted.
pub(super) fn route_key(first: Option<&String>) -> Vec<u8> {
    first.map_or_else(Vec::new, |key| key.as_bytes().to_vec())
}

/// How long a slot map is used before it is read again.
const MAP_AGE: Duration = Duration::from_secs(60);

/// Which node owns each slot, by `CLUSTER SLOTS`: (first slot, last slot, node id).
#[derive(Debug, Default)]
struct SlotOwners {
    ranges: Vec<(u16, u16, String)>,
}

impl SlotOwners {
    fn parse(reply: Value) -> Option<SlotOwners> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut owners = SlotOwners::default();
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            // The primary's node id, which tells nodes apart whatever endpoints they show.
            let Some(Value::BulkString(id)) = primary.get(2) else {
                return None;
            };
            let node = String::from_utf8_lossy(id).into_owned();
            owners.ranges.push((
                u16::try_from(*first).ok()?,
                u16::try_from(*last).ok()?,
                node,
            ));
        }
        Some(owners)
    }

    fn node_of(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, node)| node.as_str())
    }
}

/// What is known of the slot map.
#[derive(Default)]
enum Map {
    #[default]
    Unread,
    Read(Instant, Arc<SlotOwners>),
    /// `CLUSTER SLOTS` failed or said what this cannot read: calls go one by one for a while,
    /// rather than asking again each round trip.
    Failed(Instant),
}

/// The slot map the pipelines are grouped by, shared by a store's clones.
#[derive(Clone, Default)]
pub(super) struct Nodes {
    map: Arc<Mutex<Map>>,
}

impl Nodes {
    /// Sends `calls` (each a command and a key that names its slot) as one pipeline per node,
    /// all at once, and returns their answers in order. `None` if any answer is an error or
    /// the slot map cannot be had (counted, by reason): the caller then sends them its own way.
    pub async fn send(&self, conn: &RedisConn, calls: Vec<(Vec<u8>, Cmd)>) -> Option<Vec<Value>> {
        let RedisConn::Cluster(cluster) = conn else {
            return None;
        };
        let sent = self.pipelined(cluster, conn, calls).await;
        if let Err(why) = sent {
            why.count();
        }
        sent.ok()
    }

    async fn pipelined(
        &self,
        cluster: &redis::cluster_async::ClusterConnection,
        conn: &RedisConn,
        calls: Vec<(Vec<u8>, Cmd)>,
    ) -> Result<Vec<Value>, Fallback> {
        let owners = self.owners(conn).await.ok_or(Fallback::SlotMap)?;
        let count = calls.len();
        // (node, first slot, positions in `calls`, their pipeline), in the order nodes are
        // first met.
        let mut groups: Vec<(&str, u16, Vec<usize>, redis::Pipeline)> = Vec::new();
        for (i, (key, cmd)) in calls.into_iter().enumerate() {
            let slot = slot_of(&key);
            let Some(node) = owners.node_of(slot) else {
                // A slot without an owner (a failover under way): read the map again.
                self.forget();
                return Err(Fallback::SlotMap);
            };
            let g = match groups.iter().position(|g| g.0 == node) {
                Some(g) => g,
                None => {
                    groups.push((node, slot, Vec::new(), redis::pipe()));
                    groups.len() - 1
                }
            };
            groups[g].2.push(i);
            groups[g].3.add_command(cmd);
        }
        let mut positions = Vec::with_capacity(groups.len());
        let mut sends = Vec::with_capacity(groups.len());
        for (_, slot, at, pipe) in groups {
            let mut cluster = cluster.clone();
            // Routed by a slot of the group: to the node the client knows owns it, which is
            // the group's node unless the map changed, and then an answer says MOVED.
            let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
            let n = at.len();
            sends.push(async move { cluster.route_pipeline(pipe, 0, n, route).await });
            positions.push(at);
        }
        let answers = match futures::future::try_join_all(sends).await {
            Ok(answers) => answers,
            Err(error) => {
                tracing::debug!(%error, "a node's pipeline failed: sending call by call");
                self.forget();
                return Err(Fallback::Error);
            }
        };
        let mut out = vec![Value::Nil; count];
        // Every answer is looked at, so that the reason does not depend on which node answered
        // first: any error but NOSCRIPT makes it `error`.
        let mut failed = None;
        for (at, answer) in positions.into_iter().zip(answers) {
            if answer.len() != at.len() {
                failed = Some(Fallback::Error);
                continue;
            }
            for (i, value) in at.into_iter().zip(answer) {
                if let Value::ServerError(error) = &value {
                    // NOSCRIPT on a node's first calls is expected: say nothing louder.
                    tracing::debug!(?error, "a call in a node's pipeline failed");
                    if error.kind() != Some(redis::ServerErrorKind::NoScript) {
                        failed = Some(Fallback::Error);
                    } else if failed.is_none() {
                        failed = Some(Fallback::NoScript);
                    }
                }
                out[i] = value;
            }
        }
        match failed {
            None => Ok(out),
            Some(Fallback::NoScript) => Err(Fallback::NoScript),
            Some(why) => {
                self.forget();
                Err(why)
            }
        }
    }

    /// The slot map, read again once it is a minute old or something failed.
    async fn owners(&self, conn: &RedisConn) -> Option<Arc<SlotOwners>> {
        match &*self.map.lock().expect("slot map lock") {
            Map::Read(at, owners) if at.elapsed() < MAP_AGE => return Some(owners.clone()),
            Map::Failed(at) if at.elapsed() < MAP_AGE => return None,
            _ => {}
        }
        let mut conn = conn.clone();
        let reply: Value = match redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                tracing::debug!(%error, "CLUSTER SLOTS failed");
                *self.map.lock().expect("slot map lock") = Map::Failed(Instant::now());
                return None;
            }
        };
        let Some(owners) = SlotOwners::parse(reply) else {
            tracing::warn!("CLUSTER SLOTS answered what tiendo cannot read: calls go one by one");
            *self.map.lock().expect("slot map lock") = Map::Failed(Instant::now());
            return None;
        };
        let owners = Arc::new(owners);
        *self.map.lock().expect("slot map lock") = Map::Read(Instant::now(), owners.clone());
        Some(owners)
    }

    fn forget(&self) {
        *self.map.lock().expect("slot map lock") = Map::Unread;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(n: i64) -> Value {
        Value::Int(n)
    }

    fn node(host: Value, port: i64, id: &str) -> Value {
        Value::Array(vec![
            host,
            int(port),
            Value::BulkString(id.as_bytes().to_vec()),
        ])
    }

    fn host(name: &str) -> Value {
        Value::BulkString(name.as_bytes().to_vec())
    }

    #[test]
    fn slots_are_redis_cluster_keyslots() {
        // As `CLUSTER KEYSLOT` answers.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"{foo}.counts"), 12182);
        assert_eq!(slot_of(b"x{foo}{bar}"), 12182);
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of(b"{}foo"), 9500);
        assert_eq!(slot_of(b"a{}{b}"), 15033);
    }

    #[test]
    fn a_call_is_routed_by_its_first_key_or_to_slot_0() {
        let key = "{foo}.counts".to_string();
        assert_eq!(slot_of(&route_key(Some(&key))), 12182);
        assert_eq!(slot_of(&route_key(None)), 0);
    }

    #[test]
    fn cluster_slots_map_each_slot_to_its_primary() {
        // Nodes told apart by id, whatever endpoint they show: an unknown endpoint is nil, and
        // two nodes may show the same "?" host.
        let reply = Value::Array(vec![
            Value::Array(vec![
                int(0),
                int(5460),
                node(host("?"), 7000, "a"),
                node(host("replica"), 1, "r"),
            ]),
            Value::Array(vec![int(5461), int(9000), node(host("?"), 7000, "b")]),
            Value::Array(vec![int(9001), int(16383), node(Value::Nil, 7000, "c")]),
        ]);
        let owners = SlotOwners::parse(reply).unwrap();
        assert_eq!(owners.node_of(0), Some("a"));
        assert_eq!(owners.node_of(5460), Some("a"));
        assert_eq!(owners.node_of(5461), Some("b"));
        assert_eq!(owners.node_of(16383), Some("c"));
        assert!(SlotOwners::parse(Value::Nil).is_none());
    }
}
