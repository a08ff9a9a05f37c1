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
//! asks the log itself: a probe consumer (no group, one per topic, since librdkafka names only
//! the partition of an end-of-partition event) is assigned every partition at its stored
//! offset and waits for the first answer of each fetch: a message there means "behind", an
//! end-of-partition event means "at the end". How far behind comes from the high watermark of
//! that same fetch response. Broker offset queries are not used: some Kafka-compatible
//! brokers (Tansu) answer them low, while fetch responses are right on every broker here.
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
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Settings;
use crate::store::Store;
use crate::telemetry;

/// How long one probe waits for every partition to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Why not current, for people: "catching up", "kafka unreachable"…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checked_at: DateTime<Utc>,
}

impl Currency {
    fn unknown(reason: String, checked_at: DateTime<Utc>) -> Currency {
        Currency {
            current: false,
            behind: 0,
            partitions: 0,
            unknown: 0,
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
            tracing::warn!(%error, reason, "catch-up probe: kafka client error");
        }
    }
}

impl ConsumerContext for ProbeContext {}

type Probe = BaseConsumer<ProbeContext>;

struct Inner {
    probes: Mutex<[Probe; 2]>,
    topics: [String; 2],
    store: Store,
    max_lag: u64,
    phase: Mutex<Phase>,
    last: Mutex<Option<(Instant, Currency)>>,
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
            config.create_with_context(ProbeContext)
        };
        let t = &settings.kafka.topics;
        Ok(Watch {
            inner: Arc::new(Inner {
                probes: Mutex::new([probe()?, probe()?]),
                topics: [t.records.clone(), t.procedures.clone()],
                store,
                max_lag: settings.alerts.max_lag,
                phase: Mutex::new(Phase::Unset),
                last: Mutex::new(None),
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
            Err(reason) => Currency::unknown(reason, now),
        };
        metrics::gauge!(telemetry::FIGURES_CURRENT).set(if currency.current { 1.0 } else { 0.0 });
        metrics::gauge!(telemetry::FIGURES_BEHIND).set(currency.behind as f64);
        metrics::gauge!(telemetry::MAX_LAG).set(self.inner.max_lag as f64);
        *self.inner.last.lock().expect("lock") = Some((Instant::now(), currency.clone()));
        currency
    }

    async fn measure(&self, now: DateTime<Utc>) -> Result<Currency, String> {
        let inner = self.inner.clone();
        let partitions = tokio::task::spawn_blocking(move || inner.partitions())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("kafka unreachable: {e}"))?;
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
        let answers = tokio::task::spawn_blocking(move || inner.probe(&probe))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("kafka unreachable: {e}"))?;
        let mut behind = 0u64;
        let mut unknown = 0;
        let mut ends = BTreeMap::new();
        for (key, stored) in &wanted {
            match answers.get(key) {
                None => unknown += 1,
                Some(Answer::AtEnd) => {}
                Some(Answer::Behind { end }) => {
                    let from = stored.unwrap_or(0);
                    let end = end.unwrap_or(from + 1).max(from + 1);
                    behind += (end - from) as u64;
                    ends.insert(*key, end);
                }
            }
        }
        let caught_up = {
            let mut phase = self.inner.phase.lock().expect("lock");
            let stored: BTreeMap<(usize, i32), i64> =
                wanted.iter().map(|(k, s)| (*k, s.unwrap_or(0))).collect();
            *phase = match std::mem::replace(&mut *phase, Phase::Unset) {
                // Ends are noted once, from a check where every partition answered.
                Phase::Unset if unknown > 0 => Phase::Unset,
                Phase::Unset => Phase::CatchingUp(ends.clone()),
                Phase::Current if behind > self.inner.max_lag => Phase::CatchingUp(ends.clone()),
                other => other,
            };
            if let Phase::CatchingUp(targets) = &mut *phase {
                // Done: at its end now, or stored up to the end noted.
                targets.retain(|key, end| {
                    ends.contains_key(key) && stored.get(key).is_some_and(|s| s < end)
                });
                if targets.is_empty() && unknown == 0 {
                    *phase = Phase::Current;
                }
            }
            *phase == Phase::Current
        };
        let current = caught_up && unknown == 0;
        let reason = match (unknown, current) {
            (0, true) => None,
            (0, false) => Some("catching up".to_string()),
            (n, _) => Some(format!("{n} partitions did not answer")),
        };
        Ok(Currency {
            current,
            behind,
            partitions: wanted.len(),
            unknown,
            reason,
            checked_at: now,
        })
    }
}

impl Inner {
    /// Every partition of both event topics, from the broker's metadata.
    fn partitions(&self) -> Result<Vec<(usize, i32)>, KafkaError> {
        let probes = self.probes.lock().expect("probe lock");
        let mut out = Vec::new();
        for (t, topic) in self.topics.iter().enumerate() {
            let meta = probes[t].fetch_metadata(Some(topic), Duration::from_secs(5))?;
            for m in meta.topics() {
                if let Some(error) = m.error() {
                    return Err(KafkaError::MetadataFetch(error.into()));
                }
                out.extend(m.partitions().iter().map(|p| (t, p.id())));
            }
        }
        Ok(out)
    }

    /// Assigns every partition at its stored offset and collects the first answer of each.
    fn probe(
        &self,
        wanted: &[((usize, i32), Option<i64>)],
    ) -> Result<BTreeMap<(usize, i32), Answer>, KafkaError> {
        let probes = self.probes.lock().expect("probe lock");
        for (t, probe) in probes.iter().enumerate() {
            let mut tpl = TopicPartitionList::new();
            for ((_, p), stored) in wanted.iter().filter(|((pt, _), _)| *pt == t) {
                let at = stored.map(Offset::Offset).unwrap_or(Offset::Beginning);
                tpl.add_partition_offset(&self.topics[t], *p, at)?;
            }
            probe.assign(&tpl)?;
        }
        let mut answers = BTreeMap::new();
        let deadline = Instant::now() + PROBE_TIMEOUT;
        while answers.len() < wanted.len() && Instant::now() < deadline {
            for (t, probe) in probes.iter().enumerate() {
                match probe.poll(Duration::from_millis(20)) {
                    None => {}
                    Some(Ok(m)) => {
                        let key = (t, rdkafka::Message::partition(&m));
                        let end = high_watermark(probe, &self.topics[t], key.1);
                        answers.entry(key).or_insert(Answer::Behind { end });
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        answers.entry((t, p)).or_insert(Answer::AtEnd);
                    }
                    Some(Err(error)) => tracing::debug!(%error, "catch-up probe"),
                }
            }
        }
        for probe in probes.iter() {
            probe.unassign()?;
        }
        Ok(answers)
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
