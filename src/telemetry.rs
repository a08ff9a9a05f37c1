//! Logs and metrics: the tracing subscriber, the Prometheus exporter, and the name, help text
//! and labels of every metric tiendo emits. The README's metric table is checked against
//! [`METRICS`] by a test, so the two cannot drift apart.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

pub const EVENTS: &str = "tiendo_events_total";
pub const DEAD_LETTERS: &str = "tiendo_dead_letters_total";
pub const SOURCE_EVENTS: &str = "tiendo_source_events_total";
pub const SOURCE_LAST_MESSAGE: &str = "tiendo_source_last_message_timestamp_seconds";
pub const SOURCE_QUIET: &str = "tiendo_source_quiet";
pub const SOURCE_MESSAGES_24H: &str = "tiendo_source_messages_24h";
pub const SOURCE_REJECT_RATIO_24H: &str = "tiendo_source_reject_ratio_24h";
pub const INFERRED: &str = "tiendo_events_inferred_total";
pub const BATCH_MESSAGES: &str = "tiendo_batch_messages";
pub const BATCH_SECONDS: &str = "tiendo_batch_duration_seconds";
pub const FLUSH_SECONDS: &str = "tiendo_redis_flush_duration_seconds";
pub const PIPELINE_WAIT: &str = "tiendo_pipeline_wait_seconds";
pub const REDIS_ERRORS: &str = "tiendo_redis_errors_total";
pub const CLUSTER_CALL_BY_CALL: &str = "tiendo_redis_cluster_call_by_call_total";
pub const KAFKA_ERRORS: &str = "tiendo_kafka_errors_total";
pub const SCHEMA_LOOKUPS: &str = "tiendo_schema_registry_lookups_total";
pub const FENCED: &str = "tiendo_fenced_batches_total";
pub const READ_AHEAD: &str = "tiendo_batches_read_ahead_total";
pub const REFETCHED: &str = "tiendo_refetched_batches_total";
pub const REBALANCES: &str = "tiendo_rebalances_total";
pub const ASSIGNED: &str = "tiendo_assigned_partitions";
pub const CONSUMER_LAG: &str = "tiendo_consumer_lag_messages";
pub const FIGURES_CURRENT: &str = "tiendo_figures_current";
pub const FIGURES_BEHIND: &str = "tiendo_figures_behind_messages";
pub const FIGURES_UNANSWERED: &str = "tiendo_figures_unanswered_partitions";
pub const MAX_LAG: &str = "tiendo_alerts_max_lag_messages";
pub const PROGRESS: &str = "tiendo_province_progress_ratio";
pub const PACE: &str = "tiendo_province_pace_7d_records_per_day";
pub const NEEDED_PACE: &str = "tiendo_province_needed_pace_records_per_day";
pub const DAYS_LEFT: &str = "tiendo_province_days_to_deadline";
pub const ONLINE_SHARE: &str = "tiendo_province_online_share_ratio";
pub const ALERT_EVALUATIONS: &str = "tiendo_alert_evaluations_total";
pub const ALERT_TRANSITIONS: &str = "tiendo_alert_transitions_total";
pub const ALERTS_FIRING: &str = "tiendo_alerts_firing";
pub const NOTIFICATIONS_SENT: &str = "tiendo_notifications_sent_total";
pub const NOTIFICATIONS_FAILED: &str = "tiendo_notifications_failed_total";
pub const NOTIFICATIONS_PENDING: &str = "tiendo_notifications_pending";
pub const NOTIFICATIONS_SILENCED: &str = "tiendo_notifications_silenced_total";
pub const NOTIFICATIONS_MERGED: &str = "tiendo_notifications_merged_total";
pub const REPORTS_POSTED: &str = "tiendo_reports_posted_total";
pub const CHAT_COMMANDS: &str = "tiendo_chat_commands_total";
pub const CHAT_POLLS: &str = "tiendo_chat_polls_total";

/// (name, kind, labels, help) of every metric.
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (EVENTS, "counter", "topic, outcome",
     "Messages consumed, by outcome: counted, duplicate, dead_letter, replayed (already stored or delivered twice, skipped)."),
    (DEAD_LETTERS, "counter", "reason, source",
     "Messages sent to the dead-letter topic, by reason and source system (a configured name in sources.known, else other)."),
    (SOURCE_EVENTS, "counter", "topic, source",
     "Valid events received (counted or re-sent), by source system (a configured name in sources.known, else other)."),
    (SOURCE_LAST_MESSAGE, "gauge", "source",
     "When a message of the source last arrived (unix seconds), from Redis: every replica reports the same."),
    (SOURCE_QUIET, "gauge", "source",
     "1 when a configured source heard from before has sent nothing for sources.quiet_after."),
    (SOURCE_MESSAGES_24H, "gauge", "source",
     "Messages of the source in the last 24 hours: counted, re-sent and rejected."),
    (SOURCE_REJECT_RATIO_24H, "gauge", "source",
     "Share of the source's messages of the last 24 hours that were dead-lettered."),
    (INFERRED, "counter", "reason",
     "Events counted with something inferred, by reason: legacy_code_inferred (a code only the 63-unit table has, sent without code_scheme after 1 July 2025)."),
    (BATCH_MESSAGES, "histogram", "", "Messages per processed batch."),
    (BATCH_SECONDS, "histogram", "", "Time to process one batch, from decode to stored offsets."),
    (FLUSH_SECONDS, "histogram", "", "Time of the Redis round trips of one batch: its claims and counter read (unless made while the batch before was written), its transaction, and the next batch's read sent behind it."),
    (PIPELINE_WAIT, "histogram", "stage",
     "Waits of a pipeline stage on the other (the rate of its sum is the share of time spent waiting): storer (for the next batch: reading from Kafka and decoding set the pace, or the topics are quiet) or collector (a read batch waiting for the storer: storing in Redis sets the pace)."),
    (REDIS_ERRORS, "counter", "", "Failed Redis calls; each is retried with backoff."),
    (CLUSTER_CALL_BY_CALL, "counter", "reason",
     "On a Redis Cluster, round trips sent call by call rather than as one pipeline per node, by reason: noscript (a node had not loaded a script yet: once per node and script after it starts), error (another error in an answer: a slot still moving after the client's retries, a node down), slot_map (CLUSTER SLOTS failed or was unreadable: every round trip for a minute; or it left a slot without an owner)."),
    (KAFKA_ERRORS, "counter", "", "Kafka errors: consumer and producer client errors, failed consumes and dead-letter sends."),
    (SCHEMA_LOOKUPS, "counter", "outcome",
     "Schema ids looked up in the Schema Registry: known, refused, or error (not reached)."),
    (FENCED, "counter", "", "Partition batches refused because another consumer had stored further offsets."),
    (READ_AHEAD, "counter", "outcome",
     "Batches whose claims and counters were read while the batch before was being written: used, again (what was stored changed meanwhile, or retries held the batch up, so they were read again), or failed (read again too)."),
    (REFETCHED, "counter", "", "Partition batches dropped and fetched again because they began beyond the stored offset (a leftover of an earlier assignment, or a broker skipping to its next record batch)."),
    (REBALANCES, "counter", "kind", "Consumer group rebalances seen, by kind (assign, revoke)."),
    (ASSIGNED, "gauge", "", "Partitions currently assigned to this consumer."),
    (CONSUMER_LAG, "gauge", "topic, partition",
     "Messages behind the partition's end, per assigned partition (librdkafka statistics)."),
    (FIGURES_CURRENT, "gauge", "",
     "1 while Redis holds every event in the topics up to alerts.max_lag messages (rules may fire and resolve), 0 while catching up or unable to tell."),
    (FIGURES_BEHIND, "gauge", "", "Messages in the event topics not yet counted in Redis, at the last check."),
    (FIGURES_UNANSWERED, "gauge", "",
     "Event-topic partitions the last check could not measure: no answer to the probe's fetch in time (all those of the check before when Kafka or Redis could not be read; 0 before any check listed them). Figures are not current while any is."),
    (MAX_LAG, "gauge", "", "alerts.max_lag: the most uncounted messages with which figures are still current."),
    (PROGRESS, "gauge", "province, name, dataset", "Records done over target, per province (alerts.view) and dataset with a target."),
    (PACE, "gauge", "province, name, dataset", "Records per day over the 7 whole calendar days before today (Vietnam time)."),
    (NEEDED_PACE, "gauge", "province, name, dataset", "Records per day needed from now to reach the target by the deadline."),
    (DAYS_LEFT, "gauge", "province, name, dataset", "Days to the end of the deadline day (negative once past)."),
    (ONLINE_SHARE, "gauge", "province, name", "Online end-to-end share of completed procedures over alerts.rules.online_share_window (its whole days before today)."),
    (ALERT_EVALUATIONS, "counter", "outcome",
     "Stall-rule evaluations: committed, unchanged, conflict (another replica committed first), held (figures not current), error."),
    (ALERT_TRANSITIONS, "counter", "rule, change", "Alert transitions committed (firing, repeated, resolved, completed, flapping: held firing)."),
    (ALERTS_FIRING, "gauge", "rule, severity", "Alerts firing after the last evaluation."),
    (NOTIFICATIONS_SENT, "counter", "receiver", "Messages a receiver accepted (a split digest counts each part)."),
    (NOTIFICATIONS_FAILED, "counter", "receiver, outcome",
     "Failed deliveries: retried (receiver down, 5xx, 429), rejected for good or unreadable by this version (both moved to the failed list)."),
    (NOTIFICATIONS_PENDING, "gauge", "receiver", "Digests waiting in a receiver's outbox."),
    (NOTIFICATIONS_SILENCED, "counter", "rule", "Transitions recorded but not sent to chat because a silence matched."),
    (NOTIFICATIONS_MERGED, "counter", "receiver", "Digests of a chat outbox's backlog folded into the one before them (a backlog of k sent as one counts k-1; a receiver was down)."),
    (REPORTS_POSTED, "counter", "late", "Scheduled reports queued for chat, by whether they went out late (every replica was down at the time)."),
    (CHAT_COMMANDS, "counter", "via, command, outcome",
     "Chat commands by where they came from (telegram, slack, mattermost), command and outcome: answered, usage (could not be parsed), refused (chat or user not allowed), unauthenticated (a slash command without a valid signature or token), stale (a Telegram message over 10 minutes old when read: not answered)."),
    (CHAT_POLLS, "counter", "outcome", "Telegram getUpdates calls by outcome: ok, error."),
];

/// Registers help texts with the metrics recorder.
pub fn describe() {
    for (name, kind, _, help) in METRICS {
        match *kind {
            "counter" => describe_counter!(*name, *help),
            "gauge" => describe_gauge!(*name, *help),
            _ if name.ends_with("_seconds") => describe_histogram!(*name, Unit::Seconds, *help),
            _ => describe_histogram!(*name, *help),
        }
    }
}

/// Installs the Prometheus recorder; the HTTP server renders it at `/metrics`. Once per
/// process: later calls return the first handle.
pub fn install_prometheus() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(BATCH_MESSAGES.into()),
            &[
                1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 30000.0,
            ],
        )?
        .install_recorder()?;
    describe();
    let handle = HANDLE.get_or_init(|| handle).clone();
    // Histograms are drained into their buckets on upkeep.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        })?;
    Ok(handle)
}

/// Installs the tracing subscriber: text for people, JSON for collectors. RUST_LOG wins.
pub fn init_logs(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    // Colours only for a person at a terminal: in a file, journald or `docker compose logs`
    // escape codes are noise. NO_COLOR (no-color.org) turns them off at a terminal too.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Lets the first of a repeating error through to the log, then at most one line per `every`
/// for it, saying how many like it were held back since. A broker that is down makes each
/// Kafka client report every 100 ms: without this, thousands of lines an hour that bury
/// everything else logged. The error metrics still count every one.
pub struct Throttle {
    every: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    logged: Instant,
    held: u64,
}

/// Keys kept at most: errors are a handful of kinds; this only bounds the unexpected.
const THROTTLE_KEYS: usize = 256;

/// Kafka client errors, shared by every Kafka client of the process.
pub static KAFKA_LOG: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(Duration::from_secs(60)));

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an error of this `key` is logged now: `Some(held back since the last line)`,
    /// or `None` to leave it out.
    pub fn admit(&self, key: &str) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    fn admit_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = seen.get_mut(key) {
            if now.duration_since(s.logged) < self.every {
                s.held += 1;
                return None;
            }
            let held = std::mem::take(&mut s.held);
            s.logged = now;
            return Some(held);
        }
        if seen.len() >= THROTTLE_KEYS {
            seen.clear();
        }
        seen.insert(
            key.to_string(),
            Seen {
                logged: now,
                held: 0,
            },
        );
        Some(0)
    }
}

/// A run of Kafka client errors, from the first until the client is seen answering again:
/// the throttle above leaves a broker's return unlogged, so this says when it is over, once.
/// An outage ends only at a statistics tick with a broker up and no error since the tick
/// before, so an error that keeps coming back while the broker answers cannot make the
/// "answering again" line flap; and it is worth the line only if some tick found no broker up,
/// so a broker closing an idle connection now and then says nothing.
#[derive(Default)]
pub struct Outage {
    first: Option<Instant>,
    errors: u64,
    errors_at_last_tick: u64,
    /// A tick during this run of errors found no broker up.
    down: bool,
}

impl Outage {
    pub fn error(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.errors += 1;
    }

    /// At each statistics tick: `Some((since the first error, errors))` once an outage in which
    /// no broker was up is over.
    pub fn tick(&mut self, broker_up: bool, now: Instant) -> Option<(Duration, u64)> {
        let quiet = self.errors == self.errors_at_last_tick;
        self.errors_at_last_tick = self.errors;
        let first = self.first?;
        self.down |= !broker_up;
        if !(broker_up && quiet) {
            return None;
        }
        let over = (now.duration_since(first), self.errors);
        let down = self.down;
        *self = Outage::default();
        down.then_some(over)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_error_is_logged_once_per_interval_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_millis(s * 100);
        // A broker down: every 100 ms for 3 minutes.
        let logged: Vec<(u64, u64)> = (0..1800)
            .filter_map(|i| t.admit_at("AllBrokersDown", at(i)).map(|held| (i, held)))
            .collect();
        assert_eq!(logged, vec![(0, 0), (600, 599), (1200, 599)]);
        // Another error is its own: logged at once.
        assert_eq!(t.admit_at("BrokerTransportFailure", at(1201)), Some(0));
    }

    #[test]
    fn an_outage_ends_once_a_broker_is_up_and_a_tick_passed_without_errors() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut o = Outage::default();
        assert_eq!(o.tick(true, at(0)), None, "no errors, no outage");
        // Down from 1 s to 20 s, an error a second; statistics every 15 s.
        for s in 1..=14 {
            o.error(at(s));
        }
        assert_eq!(o.tick(false, at(15)), None);
        for s in 15..=20 {
            o.error(at(s));
        }
        assert_eq!(
            o.tick(true, at(30)),
            None,
            "errors came since the tick before"
        );
        assert_eq!(o.tick(true, at(45)), Some((Duration::from_secs(44), 20)));
        assert_eq!(o.tick(true, at(60)), None, "said once");
        // An error that keeps coming while the broker answers never reads as over; once it
        // stops, nothing is said either: no tick found the broker down.
        for tick in [75, 90, 105] {
            o.error(at(tick - 1));
            assert_eq!(o.tick(true, at(tick)), None);
        }
        assert_eq!(o.tick(true, at(120)), None);
        // A connection closed and opened again between two ticks says nothing.
        o.error(at(121));
        assert_eq!(o.tick(true, at(135)), None);
        assert_eq!(o.tick(true, at(150)), None);
    }
}
