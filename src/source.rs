//! Stage 1: Kafka. Builds the consumer and handles rebalances explicitly.
//!
//! Redis, not Kafka, holds the authoritative offsets. When the group assigns partitions, the
//! consumer context reads each partition's stored offset from Redis and starts fetching there,
//! before any message is delivered. Kafka commits are still made (after Redis has the data) so
//! the usual lag tooling works, but they are never trusted for where to resume.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use redis::Commands;

use crate::config::{KafkaSettings, RedisSettings, Settings};
use crate::store::Keys;
use crate::telemetry;

/// Where a newly assigned partition starts, as far as Redis knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Redis holds this next offset; fetching starts there.
    At(i64),
    /// Nothing was ever stored for this partition.
    Fresh,
    /// Redis could not be read during the rebalance: the pipeline must check before counting.
    Unverified,
}

/// The partitions this consumer owns, shared between the rebalance callback (which runs inside
/// librdkafka's poll) and the pipeline. `generation` changes on every rebalance, so the
/// pipeline can notice with one atomic load per message instead of a lock.
#[derive(Debug, Default)]
pub struct Assignment {
    generation: AtomicU64,
    /// Set at the first assignment the group hands this member, even an empty one.
    joined: std::sync::atomic::AtomicBool,
    partitions: Mutex<HashMap<(String, i32), Start>>,
}

impl Assignment {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the group has assigned this member anything yet (a standby replica, with more
    /// replicas than partitions, is assigned nothing and is still a working member).
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// How many partitions this consumer holds now.
    pub fn count(&self) -> usize {
        self.partitions.lock().expect("assignment lock").len()
    }

    pub fn partitions(&self) -> HashMap<(String, i32), Start> {
        self.partitions.lock().expect("assignment lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<(String, i32), Start>)) {
        let mut parts = self.partitions.lock().expect("assignment lock");
        let before: Vec<(String, i32)> = parts.keys().cloned().collect();
        f(&mut parts);
        // A partition let go of has no lag here any more: its new owner reports it, and a
        // value kept would be summed twice, or stay frozen.
        for (topic, p) in before.iter().filter(|k| !parts.contains_key(*k)) {
            metrics::gauge!(
                telemetry::CONSUMER_LAG,
                "topic" => topic.clone(),
                "partition" => p.to_string()
            )
            .set(0.0);
        }
        metrics::gauge!(telemetry::ASSIGNED).set(parts.len() as f64);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reads stored offsets with a blocking client: the rebalance callback is synchronous.
struct OffsetReader {
    redis: RedisSettings,
    keys: Keys,
}

impl OffsetReader {
    fn read(&self, parts: &[(String, i32)]) -> redis::RedisResult<Vec<Option<i64>>> {
        let timeout = Duration::from_secs(3);
        let keys: Vec<String> = parts
            .iter()
            .map(|(t, p)| self.keys.partition(t, *p).offset())
            .collect();
        if self.redis.cluster_urls.is_empty() {
            let client = redis::Client::open(self.redis.url.expose())?;
            let mut conn = client.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            keys.iter().map(|k| conn.get(k)).collect()
        } else {
            let seeds: Vec<&str> = self.redis.cluster_urls.iter().map(|u| u.expose()).collect();
            let client = redis::cluster::ClusterClient::builder(seeds)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            let mut conn = client.get_connection()?;
            keys.iter().map(|k| conn.get(k)).collect()
        }
    }
}

pub struct Context {
    assignment: Arc<Assignment>,
    offsets: OffsetReader,
    outage: Mutex<telemetry::Outage>,
}

impl Context {
    fn outage(&self) -> std::sync::MutexGuard<'_, telemetry::Outage> {
        self.outage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// librdkafka's own log lines, as `tracing` events with target `librdkafka`.
fn forward_log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
        }
        _ => tracing::debug!(target: "librdkafka", facility = fac, "{log_message}"),
    }
}

/// A client error, logged through the process's Kafka throttle ([`telemetry::KAFKA_LOG`]):
/// a broker down is a line a minute per client and error, not ten a second.
pub fn log_client_error(client: &str, error: &KafkaError, reason: &str) {
    if let Some(held_back) = telemetry::KAFKA_LOG.admit(&format!("{client}: {error}")) {
        tracing::warn!(client, %error, reason, held_back, "kafka client error");
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(telemetry::KAFKA_ERRORS).increment(1);
        log_client_error("consumer", &error, reason);
        self.outage().error(Instant::now());
    }

    /// librdkafka's statistics (every `statistics.interval.ms`): lag per assigned partition,
    /// from the broker's high watermark and the position this consumer has reached. Its own
    /// `consumer_lag` counts from Kafka-committed offsets, which tiendo never writes (offsets
    /// live in Redis), so the lag is computed from the application's position instead.
    fn stats(&self, stats: rdkafka::Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        if let Some((since, errors)) = self.outage().tick(up, Instant::now()) {
            tracing::info!(
                client = "consumer",
                errors,
                since_first_error = ?Duration::from_secs(since.as_secs()),
                "kafka answering again"
            );
        }
        let assigned = self.assignment.partitions();
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id < 0 || !assigned.contains_key(&(topic.clone(), *id)) {
                    continue;
                }
                let position = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.next_offset
                };
                if position >= 0 && p.hi_offset >= 0 {
                    metrics::gauge!(
                        telemetry::CONSUMER_LAG,
                        "topic" => topic.clone(),
                        "partition" => id.to_string()
                    )
                    .set((p.hi_offset - position).max(0) as f64);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assignment.joined.store(true, Ordering::Release);
                metrics::counter!(telemetry::REBALANCES, "kind" => "assign").increment(1);
                let starts: Vec<Start> = match self.offsets.read(&parts) {
                    Ok(stored) => stored
                        .into_iter()
                        .map(|o| o.map(Start::At).unwrap_or(Start::Fresh))
                        .collect(),
                    Err(error) => {
                        tracing::warn!(%error, "redis unreachable during rebalance; offsets will be checked before counting");
                        vec![Start::Unverified; parts.len()]
                    }
                };
                for ((topic, p), start) in parts.iter().zip(&starts) {
                    // Nothing stored means nothing counted: start at the beginning of the log,
                    // never at a Kafka commit that Redis knows nothing of.
                    let offset = match start {
                        Start::At(next) => Offset::Offset(*next),
                        Start::Fresh => Offset::Beginning,
                        Start::Unverified => continue,
                    };
                    if let Err(error) = tpl.set_partition_offset(topic, *p, offset) {
                        tracing::error!(%error, topic, partition = p, "cannot set start offset");
                    }
                }
                tracing::info!(partitions = ?parts.iter().zip(&starts).collect::<Vec<_>>(), "partitions assigned");
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(error) = result {
                    tracing::error!(%error, "assign failed");
                }
                self.assignment.update(|map| {
                    if !cooperative {
                        map.clear();
                    }
                    map.extend(parts.into_iter().zip(starts));
                });
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                metrics::counter!(telemetry::REBALANCES, "kind" => "revoke").increment(1);
                tracing::info!(partitions = ?parts, "partitions revoked");
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::error!(%error, "unassign failed");
                }
                self.assignment.update(|map| {
                    for part in &parts {
                        map.remove(part);
                    }
                });
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                self.assignment.update(|map| map.clear());
                let _ = consumer.unassign();
            }
        }
    }
}

pub type EventConsumer = StreamConsumer<Context>;

/// Brokers and the operator's common properties (security, timeouts): every client starts here.
pub fn client_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (key, value) in &kafka.properties {
        config.set(key, value.expose());
    }
    config.set_log_level(librdkafka_level());
    config
}

/// How much librdkafka reports. Its debug lines (the `debug` property: `fetch`, `cgrp`, ...)
/// are asked for only when the log filter lets the `librdkafka` target through at debug
/// level, so by default it does not format lines that would be dropped.
fn librdkafka_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    }
}

/// The consumer, subscribed to both event topics.
pub fn consumer(settings: &Settings) -> KafkaResult<(Arc<EventConsumer>, Arc<Assignment>)> {
    let kafka = &settings.kafka;
    let assignment = Arc::new(Assignment::default());
    // Zero until the group assigns anything: a member that never joins (ACLs, brokers
    // unreachable) reads as holding nothing, not as no figure at all.
    metrics::gauge!(telemetry::ASSIGNED).set(0.0);
    let context = Context {
        assignment: assignment.clone(),
        outage: Mutex::default(),
        offsets: OffsetReader {
            redis: settings.redis.clone(),
            keys: Keys::new(&settings.redis.key_prefix),
        },
    };
    let consumer: EventConsumer = create(&consumer_config(kafka), context)?;
    consumer.subscribe(&[&kafka.topics.records, &kafka.topics.procedures])?;
    Ok((Arc::new(consumer), assignment))
}

/// Whether librdkafka takes the consumer's and producers' properties as configured (`tiendo
/// check`): an unknown or misspelt property, or a bad value, is refused as a client would
/// refuse it on starting. No client is made: nothing is asked of the brokers.
pub fn check(kafka: &KafkaSettings) -> KafkaResult<()> {
    consumer_config(kafka)
        .create_native_config()
        .map_err(withheld)?;
    producer_config(kafka)
        .create_native_config()
        .map(drop)
        .map_err(withheld)
}

/// A client of `config`: every client is made here, so none prints a value it was given
/// (see [`withheld`]).
pub fn create<X, C>(config: &ClientConfig, context: X) -> KafkaResult<C>
where
    X: ClientContext,
    C: FromClientConfigAndContext<X>,
{
    config.create_with_context(context).map_err(withheld)
}

/// A client's configuration error without the value it was given: a misspelt
/// `sasl.pasword` must not print the password (librdkafka's own text may quote it too).
pub fn withheld(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, desc, key, value) => {
            let desc = if value.is_empty() {
                desc
            } else {
                desc.replace(&value, "[withheld]")
            };
            KafkaError::ClientConfig(code, desc, key, "[value withheld]".into())
        }
        other => other,
    }
}

/// The consumer's librdkafka properties: tiendo's defaults, then the operator's, except the
/// ones tiendo's exactness depends on.
fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A broker holds a fetch that has nothing to return for at most this long. Kafka
        // answers as soon as data arrives, so there it only bounds idle waits (10 small
        // fetches a second per broker instead of librdkafka's 2). Tansu 0.6 answers only
        // when the wait ends: with 500 ms, latency p99 through it was 0.86-0.92 s, with
        // 100 ms 0.41-0.45 s; catch-up was faster on one machine, slower on another
        // (BENCHMARKS.md, 3 December).
        .set("fetch.wait.max.ms", "100")
        // A partition whose local queue is over librdkafka's thresholds has its next fetch
        // put off by this long (librdkafka's default is 1000 ms). The collector takes a batch
        // at a time and then waits for the storer, so the queue crosses them often; after a
        // 1 s pause the storer stood waiting for messages for up to a third of a backfill
        // (BENCHMARKS.md, tenth session). The queue's size limits are unchanged.
        .set("fetch.queue.backoff.ms", "10")
        // librdkafka fetches ahead until a partition's local queue holds this many messages
        // (its default is 100,000). Its documentation says per partition, but a group
        // consumer's partition queues are forwarded to one queue and the check reads the
        // length of that one (rd_kafka_q_len follows the forward, rdkafka_fetcher.c): this
        // bounds all partitions' messages together. Those messages and their fetch buffers
        // are most of tiendo's heap where Redis sets the pace and the queue stays full:
        // 100,000 held up to 171 MiB over a 60-day backfill (thirteenth session). With 50,000
        // (about 90 ms of messages, less than a fetch takes to come back from Tansu) the
        // storer waited for batches 1.2-6 s of a 24 s run, with 75,000 0.3-3 s, and tiendo read
        // 1-10 points of the baseline faster on AMD and Intel machines. Over a 60-day backfill
        // where Redis set the pace, 75,000 held 111-127 MiB at most, and 115-122 with tiendo
        // and Redis on one core, against 92-110 with 50,000. The 130-158 MiB it held in the
        // sixteenth session were older code, which held 126-140 with 50,000 (BENCHMARKS.md,
        // eleventh to sixteenth, twenty-third and twenty-fourth sessions).
        .set("queued.min.messages", "75000")
        // Statistics feed the consumer-lag gauge; operators may change the interval.
        .set("statistics.interval.ms", "15000");
    if !kafka.group_instance_id.is_empty() {
        config.set("group.instance.id", &kafka.group_instance_id);
    }
    // Properties the operator set win over the defaults above, except the ones tiendo's
    // exactness depends on.
    for (key, value) in kafka.properties.iter().chain(&kafka.consumer_properties) {
        if !matches!(
            key.as_str(),
            "enable.auto.commit" | "enable.auto.offset.store" | "auto.offset.reset"
        ) {
            config.set(key, value.expose());
        }
    }
    config
}

/// The context of tiendo's producers: librdkafka's lines and client errors logged as the
/// consumer's are (the default context logs each error, ten a second while a broker is down),
/// under the producer's own name, so an operator sees which one failed and one producer's
/// errors do not hold back another's.
pub struct ProducerLog(&'static str);

impl ClientContext for ProducerLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(telemetry::KAFKA_ERRORS).increment(1);
        log_client_error(self.0, &error, reason);
    }
}

pub type Producer = FutureProducer<ProducerLog>;

/// An idempotent producer that waits for all replicas; `name` is how its errors are logged
/// (`client="dead-letter producer"`).
pub fn producer(kafka: &KafkaSettings, name: &'static str) -> KafkaResult<Producer> {
    create(&producer_config(kafka), ProducerLog(name))
}

/// The producers' librdkafka properties: tiendo's defaults, then the operator's.
fn producer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (key, value) in &kafka.producer_properties {
        config.set(key, value.expose());
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn a_partition_let_go_of_reports_no_lag_here() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let a = Assignment::default();
            a.update(|m| {
                m.insert(("t".into(), 0), Start::Fresh);
                m.insert(("t".into(), 1), Start::Fresh);
            });
            for (p, lag) in [("0", 500.0), ("1", 700.0)] {
                metrics::gauge!(telemetry::CONSUMER_LAG, "topic" => "t", "partition" => p).set(lag);
            }
            // Revoked: its new owner reports it now.
            a.update(|m| {
                m.remove(&("t".to_string(), 0));
            });
        });
        let out = handle.render();
        assert!(
            out.contains("tiendo_consumer_lag_messages{topic=\"t\",partition=\"0\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("tiendo_consumer_lag_messages{topic=\"t\",partition=\"1\"} 700\n"),
            "{out}"
        );
        assert!(out.contains("tiendo_assigned_partitions 1\n"), "{out}");
    }

    #[test]
    fn the_operator_overrides_the_consumer_defaults_but_not_what_exactness_needs() {
        let mut kafka = KafkaSettings::default();
        let c = consumer_config(&kafka);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(c.get("queued.min.messages"), Some("75000"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));

        for (k, v) in [
            ("fetch.wait.max.ms", "500"),
            ("fetch.queue.backoff.ms", "1000"),
            ("queued.min.messages", "100000"),
            ("enable.auto.commit", "true"),
        ] {
            kafka
                .consumer_properties
                .insert(k.to_string(), Secret::new(v));
        }
        let c = consumer_config(&kafka);
        assert_eq!(c.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("1000"));
        assert_eq!(c.get("queued.min.messages"), Some("100000"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }
}
