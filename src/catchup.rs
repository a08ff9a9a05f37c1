//! Whether the figures in Redis are current. Rules judged on figures that are still catching
//! up (a new deployment reading weeks of history, a recount after Redis lost its data,
//! replicas far behind) would call every province stalled, so alerts wait for this to say
//! yes.
//!
//! Catching up ends only when Redis holds everything the event topics held when catching up
//! began: at the first check of a process, each partition's log end is noted, and the figures
//! are current once every partition's stored offset has reached its noted end (or the
//! partition is at its end). From then on they stay current while the topics hold at most
//! `alerts.max_lag` messages that Redis has not counted; beyond that, catching up begins
//! again, with new ends noted. A count of messages alone could not tell a few fresh events
//! from weeks of history in a few bulk events.
//!
//! The check compares, per partition, the offset Redis has stored with the end of the log, and
//! asks the log itself: a probe consumer (it never joins the group) is assigned every
//! partition at its stored offset and waits for the first answer of each partition's fetch,
//! each on a queue of its own: a message there means "behind", an end-of-partition event
//! means "at the end". How far behind comes from the high watermark of that same fetch
//! response. Broker offset queries only say where to fetch from: some Kafka-compatible brokers
//! (Tansu) answer them low, while fetch responses are right, or nearly so. When the
//! listed end is far beyond the stored offset (`LISTED_AHEAD`), the partition is behind, and
//! the fetch starts shortly before that end, read for a second, so that it does not bring the
//! backlog into memory. On a broker that lists ends low and reports watermarks short of its
//! last record batch (Tansu), that end can fall short by about a batch per partition, far
//! within `alerts.max_lag`. (An aborted transaction of that many records at the very end of a
//! log would read as behind until the next message.)
//!
//! The answer holds for the whole deployment, whichever replica asks: it reads only Redis and
//! the log, so a replica that consumes nothing (a standby) knows as much as the others.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Settings;
use crate::store::Store;
use crate::telemetry;

/// How long one probe waits for every partition to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the probe waits for brokers to list the partitions' starts and ends, in all; a
/// partition not listed in time is fetched from its stored offset.
const LISTED_TIMEOUT: Duration = Duration::from_secs(3);
/// A partition is fetched from its listed end only when that lies this many offsets or more
/// beyond the stored offset. A transaction's commit marker, or an aborted transaction, takes
/// offsets that are never delivered, so a log can end a little beyond the stored offset with
/// everything counted: only a fetch from the stored offset tells that apart, and over so few
/// offsets it brings little into memory.
const LISTED_AHEAD: i64 = 1_000;
/// How long a partition fetched from near its listed end is read, to find where it ends.
const LISTED_WAIT: Duration = Duration::from_secs(1);
/// How long a partition may stay behind with its stored offset unmoved before figures are
/// not current: nobody counts it (no member holds it, or its batches keep failing), so its
/// provinces would read as stalled while the lag over all partitions stays small. A member's
/// restart, or a rebalance, moves it again well within this.
const STUCK_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Currency {
    /// Every partition answered and, together, they are at most `max_lag` messages ahead of
    /// Redis.
    pub current: bool,
    /// Messages in the log that Redis has not counted yet, over the partitions that answered.
    pub behind: u64,
    /// Partitions of the event topics, and how many of them could not be checked.
    pub partitions: usize,
    pub unknown: usize,
    /// Partitions measured from near the end their broker lists, being far behind, rather
    /// than fetched from the stored offset.
    #[serde(skip)]
    pub from_listed_end: usize,
    /// Why not current, for people: "catching up", "kafka unreachable"…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checked_at: DateTime<Utc>,
}

impl Currency {
    /// A check that could not read the partitions or their offsets: none of the
    /// `partitions` known from the check before was measured.
    fn unknown(reason: String, partitions: usize, checked_at: DateTime<Utc>) -> Currency {
        Currency {
            current: false,
            behind: 0,
            partitions,
            unknown: partitions,
            from_listed_end: 0,
            reason: Some(reason),
            checked_at,
        }
    }
}

/// Where this process stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No complete check yet.
    Unset,
    /// The log end each lagging partition must reach.
    CatchingUp(BTreeMap<(usize, i32), i64>),
    Current,
}

/// One partition, as a check saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    AtEnd,
    Behind { stored: i64, end: i64 },
    Unknown,
}

impl Phase {
    /// Where a check that saw `seen` leaves things.
    /// `rewound`: Redis stores an earlier offset than at the last check for some partition
    /// (it lost data and a recount runs).
    fn next(self, seen: &BTreeMap<(usize, i32), Seen>, max_lag: u64, rewound: bool) -> Phase {
        let complete = !seen.is_empty() && seen.values().all(|s| *s != Seen::Unknown);
        let ends = || -> BTreeMap<(usize, i32), i64> {
            seen.iter()
                .filter_map(|(k, s)| match s {
                    Seen::Behind { end, .. } => Some((*k, *end)),
                    _ => None,
                })
                .collect()
        };
        let mut phase = match self {
            // Ends are noted once, from a check where every partition answered.
            Phase::Unset if !complete => return Phase::Unset,
            Phase::Unset => Phase::CatchingUp(ends()),
            // A recount, however short, counts up to today's ends before figures are current.
            _ if rewound && complete => Phase::CatchingUp(ends()),
            _ if rewound => return Phase::Unset,
            Phase::Current if behind(seen) > max_lag => Phase::CatchingUp(ends()),
            other => other,
        };
        if let Phase::CatchingUp(targets) = &mut phase {
            // A partition is done once at its end, or stored up to the end noted.
            targets.retain(|key, end| match seen.get(key) {
                Some(Seen::AtEnd) => false,
                Some(Seen::Behind { stored, .. }) => stored < end,
                Some(Seen::Unknown) | None => true,
            });
            if targets.is_empty() && complete {
                // Every end noted is reached; a partition unanswered when they were noted,
                // or a burst since, may still leave figures far behind: noted anew.
                if behind(seen) > max_lag {
                    return Phase::CatchingUp(ends());
                }
                return Phase::Current;
            }
        }
        phase
    }
}

/// Messages not counted yet, over the partitions that answered.
fn behind(seen: &BTreeMap<(usize, i32), Seen>) -> u64 {
    seen.values()
        .map(|s| match s {
            Seen::Behind { stored, end } => (end - stored) as u64,
            _ => 0,
        })
        .sum()
}

/// Each partition's answer.
type Answers = BTreeMap<(usize, i32), Answer>;

/// One partition's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    AtEnd,
    /// A message exists at the stored offset; the log ends at this high watermark.
    Behind {
        end: Option<i64>,
    },
}

/// The check, with its probe consumers and the last answer (shared by the evaluator and the
/// HTTP server, so a page view does not probe Kafka).
#[derive(Clone)]
pub struct Watch {
    inner: Arc<Inner>,
}

/// The probes' client context: reaching the end of a partition is their answer, not an error
/// to log (librdkafka reports it both ways).
struct ProbeContext;

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::PartitionEOF)
        ) {
            crate::source::log_client_error("catch-up probe", &error, reason);
        }
    }
}

impl ConsumerContext for ProbeContext {}

type Probe = BaseConsumer<ProbeContext>;

struct Inner {
    probe: Mutex<Arc<Probe>>,
    topics: [String; 2],
    store: Store,
    max_lag: u64,
    last: Mutex<Option<(Instant, Currency)>>,
    /// Held for a whole check, so checks run one at a time (evaluator, page, report poster):
    /// offsets read by an earlier check and judged after a later one would look like offsets
    /// going back.
    checking: tokio::sync::Mutex<Checked>,
}

/// What the checks so far established.
struct Checked {
    phase: Phase,
    /// The offsets Redis stored at the last check, to see them go back.
    stored: BTreeMap<(usize, i32), i64>,
    /// Partitions behind, with the offset stored and when a check first saw them behind at
    /// it (real time: the demo's clock runs fast).
    unmoved: BTreeMap<(usize, i32), (i64, Instant)>,
}

impl Checked {
    /// Notes which partitions are behind at what offset at `now`; returns those behind at
    /// the same offset for [`STUCK_AFTER`] or longer.
    fn stuck(&mut self, seen: &BTreeMap<(usize, i32), Seen>, now: Instant) -> Vec<(usize, i32)> {
        self.unmoved.retain(|key, (offset, _)| {
            matches!(seen.get(key), Some(Seen::Behind { stored, .. }) if stored == offset)
        });
        for (key, s) in seen {
            if let Seen::Behind { stored, .. } = s {
                self.unmoved.entry(*key).or_insert((*stored, now));
            }
        }
        self.unmoved
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= STUCK_AFTER)
            .map(|(key, _)| *key)
            .collect()
    }
}

impl Watch {
    pub fn new(settings: &Settings, store: Store) -> Result<Watch, CatchUpError> {
        let probe = || -> Result<Probe, KafkaError> {
            let mut config = crate::source::client_config(&settings.kafka);
            config
                // Never joins the group (it only assigns); librdkafka wants a name to assign.
                .set(
                    "group.id",
                    format!("{}.catch-up-probe", settings.kafka.group_id),
                )
                .set("enable.partition.eof", "true")
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                // Only the first message of each partition matters: fetch as little as
                // the protocol allows, and answer quickly at the end of a log.
                .set("fetch.wait.max.ms", "100")
                .set("fetch.message.max.bytes", "1024")
                .set("queued.min.messages", "1");
            for (key, value) in &settings.kafka.consumer_properties {
                if key.starts_with("ssl.") || key.starts_with("sasl.") || key == "security.protocol"
                {
                    config.set(key, value.expose());
                }
            }
            crate::source::create(&config, ProbeContext)
        };
        let t = &settings.kafka.topics;
        Ok(Watch {
            inner: Arc::new(Inner {
                probe: Mutex::new(Arc::new(probe()?)),
                topics: [t.records.clone(), t.procedures.clone()],
                store,
                max_lag: settings.alerts.max_lag,
                last: Mutex::new(None),
                checking: tokio::sync::Mutex::new(Checked {
                    phase: Phase::Unset,
                    stored: BTreeMap::new(),
                    unmoved: BTreeMap::new(),
                }),
            }),
        })
    }

    /// The last answer if it is younger than `max_age`, else a fresh one.
    pub async fn recent(&self, max_age: Duration, now: DateTime<Utc>) -> Currency {
        if let Some((at, c)) = self.inner.last.lock().expect("lock").as_ref() {
            if at.elapsed() < max_age {
                return c.clone();
            }
        }
        self.check(now).await
    }

    /// Reads the stored offsets and probes the log, now.
    pub async fn check(&self, now: DateTime<Utc>) -> Currency {
        let currency = match self.measure(now).await {
            Ok(c) => c,
            Err(reason) => {
                let last = self.inner.last.lock().expect("lock");
                let partitions = last.as_ref().map_or(0, |(_, c)| c.partitions);
                Currency::unknown(reason, partitions, now)
            }
        };
        // Why before whether: a scrape between the two never sees "not current" without its
        // unanswered partitions.
        metrics::gauge!(telemetry::FIGURES_UNANSWERED).set(currency.unknown as f64);
        metrics::gauge!(telemetry::FIGURES_BEHIND).set(currency.behind as f64);
        metrics::gauge!(telemetry::FIGURES_CURRENT).set(if currency.current { 1.0 } else { 0.0 });
        metrics::gauge!(telemetry::MAX_LAG).set(self.inner.max_lag as f64);
        *self.inner.last.lock().expect("lock") = Some((Instant::now(), currency.clone()));
        currency
    }

    async fn measure(&self, now: DateTime<Utc>) -> Result<Currency, String> {
        let mut checked = self.inner.checking.lock().await;
        let inner = self.inner.clone();
        let partitions = tokio::task::spawn_blocking(move || inner.partitions())
            .await
            .map_err(|e| e.to_string())??;
        let parts: Vec<(&str, i32)> = partitions
            .iter()
            .map(|(t, p)| (self.inner.topics[*t].as_str(), *p))
            .collect();
        let stored = self
            .inner
            .store
            .offsets(&parts)
            .await
            .map_err(|e| format!("redis unreachable: {e}"))?;
        let wanted: Vec<((usize, i32), Option<i64>)> = partitions.into_iter().zip(stored).collect();
        let inner = self.inner.clone();
        let probe = wanted.clone();
        let (answers, from_listed_end) = tokio::task::spawn_blocking(move || inner.probe(&probe))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("kafka unreachable: {e}"))?;
        let seen: BTreeMap<(usize, i32), Seen> = wanted
            .iter()
            .map(|(key, stored)| {
                let from = stored.unwrap_or(0);
                let seen = match answers.get(key) {
                    None => Seen::Unknown,
                    Some(Answer::AtEnd) => Seen::AtEnd,
                    // A message at the stored offset: at least one behind.
                    Some(Answer::Behind { end }) => Seen::Behind {
                        stored: from,
                        end: end.unwrap_or(from + 1).max(from + 1),
                    },
                };
                (*key, seen)
            })
            .collect();
        let behind = behind(&seen);
        let unknown = seen.values().filter(|s| **s == Seen::Unknown).count();
        let last = &mut checked.stored;
        let rewound = wanted.iter().any(|(key, stored)| {
            last.get(key)
                .is_some_and(|before| stored.is_none_or(|now| now < *before))
        });
        // A partition missing from this check keeps what was last seen of it.
        for (key, stored) in &wanted {
            match stored {
                Some(offset) => last.insert(*key, *offset),
                None => last.remove(key),
            };
        }
        if rewound {
            tracing::warn!(
                "redis stores older offsets than at the last check (data lost, or topics \
                 recreated): catching up again"
            );
        }
        let phase = std::mem::replace(&mut checked.phase, Phase::Unset);
        checked.phase = phase.next(&seen, self.inner.max_lag, rewound);
        let caught_up = checked.phase == Phase::Current;
        let stuck = checked.stuck(&seen, Instant::now());
        let current = caught_up && unknown == 0 && stuck.is_empty();
        let reason = match (unknown, stuck.first(), current) {
            (0, _, true) => None,
            (0, Some((t, p)), _) => Some(format!(
                "{}/{p} not counted for {} minutes ({} partitions)",
                self.inner.topics[*t],
                STUCK_AFTER.as_secs() / 60,
                stuck.len()
            )),
            (0, None, false) => Some("catching up".to_string()),
            (n, _, _) => Some(format!("{n} partitions did not answer")),
        };
        Ok(Currency {
            current,
            behind,
            partitions: wanted.len(),
            unknown,
            from_listed_end,
            reason,
            checked_at: now,
        })
    }
}

impl Inner {
    /// Every partition of both event topics, from the broker's metadata.
    /// Errs with the reason, for people: a topic the broker does not have is named as such,
    /// not taken for Kafka being unreachable.
    fn partitions(&self) -> Result<Vec<(usize, i32)>, String> {
        let probe = self.probe.lock().expect("probe lock");
        let mut out = Vec::new();
        for (t, topic) in self.topics.iter().enumerate() {
            let meta = probe
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map_err(|e| format!("kafka unreachable: {e}"))?;
            for m in meta.topics() {
                if let Some(error) = m.error() {
                    let error = RDKafkaErrorCode::from(error);
                    return Err(format!("topic {topic}: {error}"));
                }
                out.extend(m.partitions().iter().map(|p| (t, p.id())));
            }
        }
        Ok(out)
    }

    /// Assigns every partition and collects the first answer of each, each partition on its
    /// own queue so that one partition's backlog does not hide another's answer.
    ///
    /// A partition is fetched from its stored offset, or from shortly before the end its broker
    /// lists when that is [`LISTED_AHEAD`] or more further on (and past the log's start): the
    /// listed end may be low (Tansu), so only the fetch tells the real end, but starting near
    /// it spares the probe the backlog. A fetch from the stored offset brings back as much as
    /// the broker sends at once, whatever size was asked (Tansu: about 60,000 messages per
    /// partition), and it would all be held in memory until the probe lets go: about 200 MB
    /// for a backlog of a million messages.
    /// Returns the answers, and how many partitions were measured from their listed end.
    fn probe(
        &self,
        wanted: &[((usize, i32), Option<i64>)],
    ) -> Result<(Answers, usize), KafkaError> {
        let probe = self.probe.lock().expect("probe lock");
        let mut tpl = TopicPartitionList::new();
        let mut listed = BTreeMap::new();
        let ends = self.list_ends(&probe, wanted);
        for ((t, p), stored) in wanted {
            let topic = &self.topics[*t];
            let at = match ends.get(&(*t, *p)).copied() {
                Some((low, high)) if high - stored.unwrap_or(low).max(low) >= LISTED_AHEAD => {
                    listed.insert((*t, *p), high);
                    // A little before the end, where there are messages: a response with
                    // messages carries the real end even where the listed one is low, and an
                    // empty one may not (Tansu).
                    Offset::Offset(high - LISTED_AHEAD / 2)
                }
                _ => stored.map(Offset::Offset).unwrap_or(Offset::Beginning),
            };
            tpl.add_partition_offset(topic, *p, at)?;
        }
        probe.assign(&tpl)?;
        let assigned = Instant::now();
        // Queues are split after `assign`, which undoes earlier splits.
        let queues: Vec<((usize, i32), _)> = wanted
            .iter()
            .filter_map(|((t, p), _)| {
                Some(((*t, *p), probe.split_partition_queue(&self.topics[*t], *p)?))
            })
            .collect();
        let mut answers = BTreeMap::new();
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while answers.len() < wanted.len() && Instant::now() < deadline {
            let mut heard = false;
            // Serves callbacks; a message fetched before the split may arrive here.
            if let Some(Ok(m)) = probe.poll(Duration::ZERO) {
                if let Some(t) = self.topics.iter().position(|t| t == m.topic()) {
                    let key = (t, m.partition());
                    match listed.get_mut(&key) {
                        Some(end) => *end = (*end).max(m.offset() + 1),
                        None => {
                            let end = high_watermark(&probe, &self.topics[t], key.1);
                            answers.entry(key).or_insert(Answer::Behind { end });
                        }
                    }
                    heard = true;
                }
            }
            for (key, queue) in &queues {
                if answers.contains_key(key) {
                    continue;
                }
                let high = || high_watermark(&probe, &self.topics[key.0], key.1);
                let polled = queue.poll(Duration::ZERO);
                let Some(end) = listed.get_mut(key) else {
                    let answer = match polled {
                        None => continue,
                        Some(Ok(_)) => Answer::Behind { end: high() },
                        Some(Err(KafkaError::PartitionEOF(_))) => Answer::AtEnd,
                        Some(Err(error)) => {
                            tracing::debug!(%error, "catch-up probe");
                            continue;
                        }
                    };
                    answers.insert(*key, answer);
                    heard = true;
                    continue;
                };
                // Fetched from near a listed end beyond the stored offset: behind, by as far
                // as the messages read in a while and the watermarks go. Not up to the first
                // end-of-partition: a broker that lists ends low (Tansu) may also report its
                // watermark short of the last record batch, and the fetches after it go on.
                match polled {
                    Some(Ok(m)) => {
                        *end = (*end).max(m.offset() + 1);
                        heard = true;
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                    Some(Err(error)) => tracing::debug!(%error, "catch-up probe"),
                }
                // An older watermark is never beyond the log's end (short of a topic made
                // anew, whose partitions then read as at their end), so any is a lower bound.
                *end = (*end).max(high().unwrap_or(0));
                if assigned.elapsed() >= LISTED_WAIT {
                    answers.insert(*key, Answer::Behind { end: Some(*end) });
                    heard = true;
                }
            }
            if !heard {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // A listed end beyond the stored offset is an answer by itself, if a low one.
        let from_listed_end = listed.len();
        for (key, end) in listed {
            answers
                .entry(key)
                .or_insert(Answer::Behind { end: Some(end) });
        }
        drop(queues);
        probe.unassign()?;
        Ok((answers, from_listed_end))
    }

    /// The start and end the broker lists for each partition, as many as it answers within
    /// [`LISTED_TIMEOUT`] in all (two requests per partition). Not `offsets_for_times`: it asks
    /// with the consumer's isolation level, for the last stable offset, which Tansu lists
    /// further below the end than the plain watermark query.
    fn list_ends(
        &self,
        probe: &Probe,
        wanted: &[((usize, i32), Option<i64>)],
    ) -> BTreeMap<(usize, i32), (i64, i64)> {
        let deadline = Instant::now() + LISTED_TIMEOUT;
        let mut ends = BTreeMap::new();
        for ((t, p), _) in wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::debug!("catch-up probe: out of time listing ends");
                break;
            }
            match probe.fetch_watermarks(&self.topics[*t], *p, left) {
                Ok(listed) => {
                    ends.insert((*t, *p), listed);
                }
                Err(error) => {
                    tracing::debug!(%error, partition = p, "catch-up probe: no listed end")
                }
            }
        }
        ends
    }
}

/// The high watermark of the last fetch response for a partition, as librdkafka caches it.
/// rdkafka wraps only the broker query (`fetch_watermarks`), which some brokers answer low.
fn high_watermark(consumer: &Probe, topic: &str, partition: i32) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`, `topic` is a NUL-terminated
    // string that outlives the call, and `low`/`high` are valid for writes.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(parts: &[Seen]) -> BTreeMap<(usize, i32), Seen> {
        parts
            .iter()
            .enumerate()
            .map(|(i, s)| ((0, i as i32), *s))
            .collect()
    }

    const fn behind(stored: i64, end: i64) -> Seen {
        Seen::Behind { stored, end }
    }

    #[test]
    fn catching_up_ends_at_the_ends_noted_when_it_began() {
        // First check: two partitions behind; their ends are noted.
        let p = Phase::Unset.next(&seen(&[behind(0, 500), Seen::AtEnd]), 10_000, false);
        assert_eq!(p, Phase::CatchingUp(BTreeMap::from([((0, 0), 500)])));
        // New messages keep arriving, but reaching the noted end is enough.
        let p = p.next(&seen(&[behind(300, 700), behind(0, 10)]), 10_000, false);
        assert!(matches!(p, Phase::CatchingUp(_)));
        let p = p.next(&seen(&[behind(500, 900), behind(0, 20)]), 10_000, false);
        assert_eq!(p, Phase::Current);
        // Current while the lag is within the bound, catching up again beyond it.
        let p = p.next(&seen(&[behind(900, 9_000), behind(20, 40)]), 10_000, false);
        assert_eq!(p, Phase::Current);
        let p = p.next(&seen(&[behind(900, 20_000), Seen::AtEnd]), 10_000, false);
        assert_eq!(p, Phase::CatchingUp(BTreeMap::from([((0, 0), 20_000)])));
    }

    #[test]
    fn a_recount_after_redis_lost_data_is_caught_up_however_small() {
        let p = Phase::Unset.next(&seen(&[behind(0, 50), Seen::AtEnd]), 10_000, false);
        let p = p.next(&seen(&[Seen::AtEnd, Seen::AtEnd]), 10_000, false);
        assert_eq!(p, Phase::Current);
        // Redis lost its data: 60 messages behind, far within the bound, but a recount.
        let p = p.next(&seen(&[behind(0, 50), behind(0, 10)]), 10_000, true);
        assert_eq!(
            p,
            Phase::CatchingUp(BTreeMap::from([((0, 0), 50), ((0, 1), 10)]))
        );
        let p = p.next(&seen(&[Seen::AtEnd, behind(5, 12)]), 10_000, false);
        assert!(matches!(p, Phase::CatchingUp(ref t) if t.len() == 1));
        let p = p.next(&seen(&[Seen::AtEnd, Seen::AtEnd]), 10_000, false);
        assert_eq!(p, Phase::Current);
        // Lost data with a partition not answering: nothing can be noted yet.
        assert_eq!(
            p.next(&seen(&[Seen::Unknown, behind(0, 10)]), 10_000, true),
            Phase::Unset
        );
    }

    #[test]
    fn a_partition_that_does_not_answer_is_never_taken_as_done() {
        // Nothing is noted from an incomplete first check.
        let p = Phase::Unset.next(&seen(&[Seen::AtEnd, Seen::Unknown]), 10, false);
        assert_eq!(p, Phase::Unset);
        let p = Phase::Unset.next(&seen(&[behind(0, 50), Seen::AtEnd]), 10, false);
        // A noted partition that goes silent stays to be done; nothing is current meanwhile.
        let p = p.next(&seen(&[Seen::Unknown, Seen::AtEnd]), 10, false);
        assert!(matches!(p, Phase::CatchingUp(ref t) if t.len() == 1));
        assert_eq!(
            p.next(&seen(&[Seen::AtEnd, Seen::AtEnd]), 10, false),
            Phase::Current
        );
        // No partitions at all tells nothing.
        assert_eq!(Phase::Unset.next(&BTreeMap::new(), 10, false), Phase::Unset);
    }

    /// A partition behind at the same stored offset for ten minutes is counted by nobody;
    /// one that moves, or reaches its end, is fine.
    #[test]
    fn a_partition_nobody_counts_is_stuck() {
        let mut checked = Checked {
            phase: Phase::Current,
            stored: BTreeMap::new(),
            unmoved: BTreeMap::new(),
        };
        let t0 = Instant::now();
        let at = |minutes: u64| t0 + Duration::from_secs(60 * minutes);
        let none: Vec<(usize, i32)> = Vec::new();
        assert_eq!(
            checked.stuck(&seen(&[behind(10, 12), behind(5, 6)]), at(0)),
            none
        );
        assert_eq!(
            checked.stuck(&seen(&[behind(12, 13), behind(5, 8)]), at(6)),
            none
        );
        // Partition 0 moved at minute 6; partition 1 has not since minute 0.
        assert_eq!(
            checked.stuck(&seen(&[behind(12, 14), behind(5, 9)]), at(10)),
            vec![(0, 1)]
        );
        assert_eq!(
            checked.stuck(&seen(&[Seen::AtEnd, behind(9, 9 + 1)]), at(17)),
            none
        );
        assert_eq!(
            checked.stuck(&seen(&[Seen::AtEnd, Seen::AtEnd]), at(40)),
            none
        );
    }

    /// Reaching the ends noted is not current while a partition unanswered when they were
    /// noted turns out far behind: its end is noted then.
    #[test]
    fn the_ends_noted_reached_with_others_far_behind_is_not_current() {
        let p = Phase::Current.next(&seen(&[behind(0, 20_000), Seen::Unknown]), 10_000, false);
        assert_eq!(p, Phase::CatchingUp(BTreeMap::from([((0, 0), 20_000)])));
        let p = p.next(&seen(&[Seen::AtEnd, behind(0, 50_000)]), 10_000, false);
        assert_eq!(p, Phase::CatchingUp(BTreeMap::from([((0, 1), 50_000)])));
        let p = p.next(&seen(&[Seen::AtEnd, behind(49_000, 50_100)]), 10_000, false);
        assert_eq!(p, Phase::CatchingUp(BTreeMap::from([((0, 1), 50_000)])));
        let p = p.next(&seen(&[Seen::AtEnd, behind(50_000, 50_200)]), 10_000, false);
        assert_eq!(p, Phase::Current);
    }
}
