//! Every setting tiendo has: its type, its default and its environment variable.
//!
//! Settings are layered: built-in defaults, then the TOML file given with `--config` (or
//! `TIENDO_CONFIG`), then environment variables `TIENDO_<SECTION>__<KEY>` (double underscore
//! between levels, e.g. `TIENDO_REDIS__URL`, `TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD`; see
//! [`env`]). They are validated once, at start. Values that can hold credentials are wrapped
//! in [`Secret`] so they never print.

pub mod env;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::wire::Encoding;

/// A value that must not appear in logs or debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

/// Accepts numbers and booleans too: librdkafka wants text, and a TOML file may well say
/// `"session.timeout.ms" = 6000`.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        text(d).map(Secret)
    }
}

/// A scalar read as text: `chat_id = -1001234567890` is as good as `chat_id = "-100…"`.
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::Text(s) => s,
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => f.to_string(),
        Scalar::Bool(b) => b.to_string(),
    })
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Name of the outbox that feeds the Kafka alerts topic; no chat receiver may take it.
pub const KAFKA_OUTBOX: &str = "kafka";

/// The label of every source not configured, and of messages too broken to name theirs.
pub const OTHER: &str = "other";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub pipeline: PipelineSettings,
    pub validation: ValidationSettings,
    pub targets: TargetSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub alerts: AlertSettings,
    pub report: ReportSettings,
    pub commands: CommandSettings,
    pub sources: SourceSettings,
}

/// The upstream systems that publish events, known by their `source_system` field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// Their names. Events and rejects are counted per known source; any other name (and a
    /// message too broken to say) counts as `other`, so hostile input adds no series or keys.
    pub known: Vec<String>,
    /// A known source with no message for this long is quiet: rule `source_quiet`, for the
    /// receivers that take route `ops`.
    #[serde(with = "humantime_serde")]
    pub quiet_after: Duration,
    /// Rule `source_rejecting`: over this share of a source's messages rejected in 24 hours
    /// (0..1)...
    pub reject_ratio_max: f64,
    /// ...with at least this many messages in them (three bad ones out of ten page no one)...
    pub reject_min_messages: u64,
    /// ...and, once firing, resolved only below `reject_ratio_max` minus this (0..1).
    pub reject_resolve_margin: f64,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            known: Vec::new(),
            quiet_after: Duration::from_secs(6 * 3600),
            reject_ratio_max: 0.05,
            reject_min_messages: 100,
            reject_resolve_margin: 0.01,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSettings {
    /// A province at or above this share of its target (but below it) is "basically
    /// completed" in `tiendo report`.
    pub basically_done: f64,
    /// When the report is posted to chat, in Vietnam time: `"Mon 08:00"`, `"daily 17:30"`.
    /// Empty: never.
    pub schedule: Vec<String>,
    /// The receivers it is posted to; empty: every receiver in `alerts.receivers`.
    pub receivers: Vec<String>,
    /// A report sent this long after its time (every replica was down) says it is late.
    #[serde(with = "humantime_serde")]
    pub late_after: Duration,
}

impl Default for ReportSettings {
    fn default() -> Self {
        ReportSettings {
            basically_done: 0.95,
            schedule: Vec::new(),
            receivers: Vec::new(),
            late_after: Duration::from_secs(15 * 60),
        }
    }
}

/// Questions from chat: Telegram commands read by long polling, Slack and Mattermost slash
/// commands at `/slack/commands`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CommandSettings {
    /// The Telegram receiver (in `alerts.receivers`) whose bot answers commands; empty: none.
    pub telegram: String,
    /// Chats answered: Telegram chat ids, Slack or Mattermost channel ids. Empty: the chat of
    /// the `telegram` receiver only.
    #[serde(deserialize_with = "texts")]
    pub chats: Vec<String>,
    /// Who may silence and unsilence: Telegram user ids, Slack or Mattermost user ids.
    #[serde(deserialize_with = "texts")]
    pub silencers: Vec<String>,
    /// How long one `getUpdates` call waits for news.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Slack's signing secret; `/slack/commands` answers Slack only when set.
    pub slack_signing_secret: Secret,
    /// The token of a Mattermost slash command; `/slack/commands` answers Mattermost only when
    /// set.
    pub mattermost_token: Secret,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            telegram: String::new(),
            chats: Vec::new(),
            silencers: Vec::new(),
            poll_timeout: Duration::from_secs(25),
            slack_signing_secret: Secret::default(),
            mattermost_token: Secret::default(),
        }
    }
}

/// A list of scalars read as text: `chats = [-1001234567890]`.
fn texts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Text(#[serde(deserialize_with = "text")] String);
    Ok(Vec::<Text>::deserialize(d)?
        .into_iter()
        .map(|t| t.0)
        .collect())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group shared by every tiendo replica.
    pub group_id: String,
    /// Static membership (`group.instance.id`): a restarted pod takes its partitions back
    /// without a rebalance. Empty means dynamic membership.
    pub group_instance_id: String,
    pub topics: TopicSettings,
    /// Passed to librdkafka's consumer and producers (security.protocol, sasl.*, ssl.*, ...);
    /// the consumer ignores the three its exactness depends on (see `source::consumer_config`).
    /// Keys may be written with `_` for `.` so they can come from environment variables.
    pub properties: BTreeMap<String, Secret>,
    /// Passed to the consumer only (session.timeout.ms, fetch.*, ...).
    pub consumer_properties: BTreeMap<String, Secret>,
    /// Passed to the producers only (dead letters, alerts topic, `publish`, the demo).
    pub producer_properties: BTreeMap<String, Secret>,
    pub schema_registry: SchemaRegistrySettings,
}

/// The Confluent Schema Registry that framed messages' schema ids are checked against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistrySettings {
    /// Its base URL (`https://user:password@registry:8081`); empty: ids are not checked.
    pub url: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    pub records: String,
    pub procedures: String,
    pub dead_letter: String,
    /// Alert transitions, one protobuf `tiendo.v1.Alert` each; empty to publish none.
    pub alerts: String,
    /// How each topic's messages are encoded: `auto` (recognised per message: Confluent
    /// Schema Registry frame, JSON or plain protobuf), `protobuf` or `json`.
    pub records_encoding: Encoding,
    pub procedures_encoding: Encoding,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` URL, password included if any.
    pub url: Secret,
    /// Redis Cluster seed nodes; when set, `url` is ignored.
    pub cluster_urls: Vec<Secret>,
    /// Prefix of every key tiendo writes, so several deployments can share one Redis.
    pub key_prefix: String,
    /// For `rediss://`: the CA (PEM) that signed Redis's certificate, when it is not a public
    /// one (an internal CA); default: the public roots.
    pub tls_ca_file: Option<PathBuf>,
    /// For `rediss://` with client certificates (`tls-auth-clients yes`): tiendo's certificate
    /// and key (PEM).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// A batch closes at this many messages...
    pub batch_max_messages: usize,
    /// ...or this long after its first message, whichever comes first.
    #[serde(with = "humantime_serde")]
    pub batch_linger: Duration,
    /// A re-sent event (same id) within this time of the first is counted once.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Longest wait between retries while Redis or Kafka is unreachable.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

/// The largest `validation.max_record_count` accepted.
pub const MAX_RECORD_COUNT: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSettings {
    /// Datasets a record-digitized event may name.
    pub datasets: Vec<String>,
    /// Largest `record_count` one event may carry.
    pub max_record_count: u64,
    /// How far in the future an event time may lie (clock skew upstream).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Events before this day (Vietnam time) are rejected: the programme (Đề án 06,
    /// Decision 06/QĐ-TTg) began on 6 January 2022.
    pub programme_start: NaiveDate,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSettings {
    /// CSV of province,dataset,target,deadline[,scheme]; empty for none.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address of the HTTP server: /metrics, /healthz, /readyz, /api/v1/provinces and the
    /// status page; empty to serve none.
    pub listen: String,
    /// Where people reach the status page (`https://tiendo.example.gov.vn/`): chat messages
    /// link to it. Empty for no link.
    pub public_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `tiendo=debug,rdkafka=warn`; RUST_LOG wins if set.
    pub filter: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// Evaluate stall rules and deliver notifications in `tiendo run`. Any number of replicas
    /// may do so: each transition is committed, and sent, once.
    pub enabled: bool,
    /// How often the rules are evaluated.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Unit table the rules run over (and targets are read in): `34` or `63`.
    pub view: crate::provinces::View,
    /// Language of chat messages: `vi` or `en` (receivers may override).
    pub language: Language,
    /// A firing alert is repeated this long after it was last notified.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// Longest wait between delivery retries to a receiver that is down.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Figures are current, and rules may fire or resolve, only while the event topics hold
    /// at most this many messages that Redis has not counted yet.
    pub max_lag: u64,
    /// In a digest, this many notices of one rule, dataset and change become one line (the
    /// count and the worst provinces); fewer are listed one by one, unless the digest would
    /// not fit one message.
    pub group_at: usize,
    pub rules: RuleSettings,
    /// Chat receivers by name; each gets the digests of the routes it takes.
    pub receivers: BTreeMap<String, ReceiverSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSettings {
    /// A rule must hold this long before it fires (like Prometheus `for:`).
    #[serde(with = "humantime_serde")]
    pub pending_for: Duration,
    /// A firing rule must be clear this long before it resolves.
    #[serde(with = "humantime_serde")]
    pub clear_for: Duration,
    /// `silent`: no record-digitized events for this long while below target.
    #[serde(with = "humantime_serde")]
    pub silent_after: Duration,
    /// `behind_pace` is critical when the 7-day pace is below this share of the needed pace.
    pub critical_pace_ratio: f64,
    /// `projected_miss` projects at the rate of this window (`7d` or `30d`).
    pub projection_window: String,
    /// `online_share_low`: online end-to-end share below this (0..1)...
    pub online_share_min: f64,
    /// ...over this window (`1h`, `24h`, `7d` or `30d`)...
    pub online_share_window: String,
    /// ...counted only with at least this many dossiers in it.
    pub online_min_dossiers: u64,
    /// `procedures_silent`: a province that has reported procedures sends none for this long.
    #[serde(with = "humantime_serde")]
    pub procedures_silent_after: Duration,
    /// Weekdays whose hours do not count towards `silent_after` and `procedures_silent_after`
    /// (Vietnam time): a feed quiet over a weekend has not stalled.
    pub days_off: Vec<chrono::Weekday>,
    /// Dates and runs of dates likewise (`2026-04-30`, `2026-02-14..2026-02-22`): Tết and
    /// the other public holidays, as the government sets them each year.
    pub holidays: Vec<crate::clock::Holiday>,
    /// A firing `behind_pace` resolves only once the 7-day pace is this share above the pace
    /// needed (and a critical one turns warning only this share above the critical line).
    pub pace_resolve_margin: f64,
    /// A firing `projected_miss` resolves only once completion is projected this long before
    /// the deadline.
    #[serde(with = "humantime_serde")]
    pub projection_resolve_margin: Duration,
    /// A firing `online_share_low` resolves only at `online_share_min` plus this (0..1).
    pub online_share_resolve_margin: f64,
    /// An alert that would resolve for the (`flap_max`+1)th time within `flap_window` is held
    /// firing instead, with one notice saying so...
    pub flap_max: usize,
    #[serde(with = "humantime_serde")]
    pub flap_window: Duration,
    /// ...and then resolves only once it has been clear this long.
    #[serde(with = "humantime_serde")]
    pub flap_clear_for: Duration,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Vi,
    En,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// Telegram Bot API `sendMessage` (HTML).
    Telegram,
    /// Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat).
    Slack,
    /// Generic JSON webhook (schema in the README).
    Webhook,
}

impl ReceiverKind {
    /// A chat people read (Telegram, Slack), as opposed to a webhook that records every
    /// transition: a chat's backlog is merged before it is sent.
    pub fn is_chat(self) -> bool {
        matches!(self, ReceiverKind::Telegram | ReceiverKind::Slack)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverSettings {
    pub kind: ReceiverKind,
    /// Webhook URL (slack, webhook), or the Bot API base for telegram
    /// (default `https://api.telegram.org`). Webhook URLs carry credentials: kept secret.
    #[serde(default)]
    pub url: Secret,
    /// Telegram bot token.
    #[serde(default)]
    pub token: Secret,
    /// Telegram chat id (a number, or `@channel`).
    #[serde(default, deserialize_with = "text")]
    pub chat_id: String,
    /// Overrides `alerts.language` for this receiver.
    #[serde(default)]
    pub language: Option<Language>,
    /// Longest message; longer digests are split (default 4096 Telegram, 3500 Slack).
    #[serde(default)]
    pub max_chars: Option<usize>,
    /// What it hears: `taskforce` (provinces' progress, reports, commands) and/or `ops`
    /// (upstream feeds gone quiet or rejected).
    #[serde(default = "taskforce_only")]
    pub routes: Vec<Route>,
}

/// Who a rule speaks to. Receivers take one or both routes (`alerts.receivers.*.routes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The task force: provinces' progress.
    Taskforce,
    /// Whoever runs the feeds: upstream systems' health, never the provinces'.
    Ops,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Taskforce => "taskforce",
            Route::Ops => "ops",
        }
    }
}

fn taskforce_only() -> Vec<Route> {
    vec![Route::Taskforce]
}

impl ReceiverSettings {
    pub fn takes(&self, route: Route) -> bool {
        self.routes.contains(&route)
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            enabled: true,
            interval: Duration::from_secs(60),
            view: crate::provinces::View::Current34,
            language: Language::Vi,
            repeat_interval: Duration::from_secs(24 * 3600),
            max_backoff: Duration::from_secs(600),
            max_lag: 10_000,
            group_at: 5,
            rules: RuleSettings::default(),
            receivers: BTreeMap::new(),
        }
    }
}

impl Default for RuleSettings {
    fn default() -> Self {
        RuleSettings {
            pending_for: Duration::from_secs(15 * 60),
            clear_for: Duration::from_secs(30 * 60),
            silent_after: Duration::from_secs(48 * 3600),
            critical_pace_ratio: 0.5,
            projection_window: "30d".into(),
            online_share_min: 0.8,
            online_share_window: "7d".into(),
            online_min_dossiers: 50,
            procedures_silent_after: Duration::from_secs(48 * 3600),
            days_off: vec![chrono::Weekday::Sat, chrono::Weekday::Sun],
            holidays: Vec::new(),
            pace_resolve_margin: 0.1,
            projection_resolve_margin: Duration::from_secs(7 * 86_400),
            online_share_resolve_margin: 0.02,
            flap_max: 2,
            flap_window: Duration::from_secs(7 * 86_400),
            flap_clear_for: Duration::from_secs(2 * 86_400),
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            group_id: "tiendo".into(),
            group_instance_id: String::new(),
            topics: TopicSettings::default(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            schema_registry: SchemaRegistrySettings::default(),
        }
    }
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            records: "tiendo.record-digitized.v1".into(),
            procedures: "tiendo.procedure-completed.v1".into(),
            dead_letter: "tiendo.dead-letter.v1".into(),
            alerts: "tiendo.alerts.v1".into(),
            records_encoding: Encoding::Auto,
            procedures_encoding: Encoding::Auto,
        }
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: Secret::new("redis://127.0.0.1:6379"),
            cluster_urls: Vec::new(),
            key_prefix: "tiendo".into(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            batch_max_messages: 30000,
            batch_linger: Duration::from_millis(100),
            dedup_horizon: Duration::from_secs(7 * 24 * 3600),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl Default for ValidationSettings {
    fn default() -> Self {
        ValidationSettings {
            datasets: ["civil_status", "land", "health_book", "labor", "other"]
                .map(String::from)
                .to_vec(),
            max_record_count: 1_000_000,
            max_future_skew: Duration::from_secs(3600),
            programme_start: NaiveDate::from_ymd_opt(2022, 1, 6).expect("valid date"),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "0.0.0.0:9464".into(),
            public_url: String::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            filter: "info,librdkafka=warn,rdkafka=warn".into(),
            format: LogFormat::Text,
        }
    }
}

impl Settings {
    /// Defaults, then `file` if given, then `TIENDO_*` environment variables; validated.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_with(file, env::EnvOverrides::from_env()?)
    }

    /// Defaults, then `file` if given, then `env`; validated.
    pub fn load_with(file: Option<&Path>, env: env::EnvOverrides) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(env);
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validated()
    }

    /// Defaults, then a TOML document (no environment); validated.
    pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        settings.validated()
    }

    /// Checks what types cannot, and normalises Kafka property keys (`_` → `.`).
    pub fn validated(mut self) -> Result<Settings, ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        self.validate_chat()?;
        let registry = self.kafka.schema_registry.url.expose();
        if !(registry.is_empty()
            || registry.starts_with("https://")
            || registry.starts_with("http://"))
        {
            return invalid("kafka.schema_registry.url must be an http:// or https:// URL");
        }
        if self.validation.datasets.is_empty() {
            return invalid("validation.datasets must name at least one dataset");
        }
        if self.validation.datasets.len() > 64 {
            return invalid("validation.datasets may name at most 64 datasets");
        }
        if self
            .validation
            .datasets
            .iter()
            .any(|d| d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return invalid("dataset names are letters, digits and _ only");
        }
        if self.sources.known.len() > 64 {
            return invalid("sources.known may name at most 64 sources");
        }
        if self.sources.known.iter().any(|n| {
            n.is_empty()
                || n.len() > 64
                || n == OTHER
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }) {
            return invalid(
                "sources.known: names are 1-64 letters, digits, '-', '_' or '.', and not 'other'",
            );
        }
        if !(0.0..=1.0).contains(&self.sources.reject_ratio_max)
            || !(0.0..=1.0).contains(&self.sources.reject_resolve_margin)
        {
            return invalid("sources ratios lie between 0 and 1");
        }
        // A firing source_rejecting resolves at or below the difference: below zero, never.
        if self.sources.reject_resolve_margin > self.sources.reject_ratio_max {
            return invalid("sources.reject_resolve_margin must not exceed reject_ratio_max");
        }
        if self.sources.quiet_after.is_zero() {
            return invalid("sources.quiet_after must be longer than zero");
        }
        if self.pipeline.batch_max_messages == 0 {
            return invalid("pipeline.batch_max_messages must be at least 1");
        }
        if self.pipeline.dedup_horizon.as_secs() == 0 {
            return invalid("pipeline.dedup_horizon must be at least one second");
        }
        if self.validation.max_record_count == 0 {
            return invalid("validation.max_record_count must be at least 1");
        }
        // Counts are summed as i64 (Redis's integers) per batch and over time: a trillion
        // records in one event leaves millions of such events before a counter could overflow.
        if self.validation.max_record_count > MAX_RECORD_COUNT {
            return invalid("validation.max_record_count must be at most 1000000000000");
        }
        if self.redis.tls_cert_file.is_some() != self.redis.tls_key_file.is_some() {
            return invalid("redis.tls_cert_file and redis.tls_key_file go together");
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            return invalid("redis.key_prefix must be non-empty and free of { }");
        }
        let t = &self.kafka.topics;
        if t.records.is_empty() || t.procedures.is_empty() || t.dead_letter.is_empty() {
            return invalid("kafka.topics.* must all be set");
        }
        if t.records == t.procedures {
            return invalid("kafka.topics.records and kafka.topics.procedures must differ");
        }
        self.validate_alerts()?;
        let k = &mut self.kafka;
        for map in [
            &mut k.properties,
            &mut k.consumer_properties,
            &mut k.producer_properties,
        ] {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase().replace('_', "."), v))
                .collect();
        }
        Ok(self)
    }

    fn validate_chat(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for when in &self.report.schedule {
            if let Err(e) = crate::clock::Slot::parse(when) {
                return invalid(format!("report.schedule: {e}"));
            }
        }
        for name in &self.report.receivers {
            if !self.alerts.receivers.contains_key(name) {
                return invalid(format!(
                    "report.receivers: {name:?} is not in alerts.receivers"
                ));
            }
        }
        let c = &self.commands;
        if !c.telegram.is_empty() {
            match self.alerts.receivers.get(&c.telegram) {
                Some(r) if r.kind == ReceiverKind::Telegram => {}
                _ => {
                    return invalid(format!(
                        "commands.telegram: {:?} is not a telegram receiver in alerts.receivers",
                        c.telegram
                    ))
                }
            }
        }
        if c.poll_timeout.is_zero() || c.poll_timeout > Duration::from_secs(50) {
            return invalid("commands.poll_timeout lies between 1s and 50s".into());
        }
        Ok(())
    }

    fn validate_alerts(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let a = &self.alerts;
        let r = &a.rules;
        let windows: Vec<&str> = crate::buckets::WINDOWS.iter().map(|w| w.name).collect();
        if !(0.0..=1.0).contains(&self.report.basically_done) {
            return invalid("report.basically_done lies between 0 and 1".into());
        }
        if a.interval.is_zero() {
            return invalid("alerts.interval must be positive".into());
        }
        if a.group_at < 2 {
            return invalid("alerts.group_at must be at least 2".into());
        }
        let url = &self.http.public_url;
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return invalid("http.public_url must be an http:// or https:// URL".into());
        }
        let days_off: std::collections::BTreeSet<u32> = r
            .days_off
            .iter()
            .map(|d| d.num_days_from_monday())
            .collect();
        if days_off.len() == 7 {
            return invalid("alerts.rules.days_off leaves no working day".into());
        }
        if !windows.contains(&r.online_share_window.as_str()) {
            return invalid(format!(
                "alerts.rules.online_share_window must be one of {windows:?}"
            ));
        }
        // A rate over a rolling hour or day follows office hours: a projection at it would
        // see every province miss its deadline each night.
        let whole_days: Vec<&str> = crate::buckets::WINDOWS
            .iter()
            .filter(|w| w.calendar_days().is_some())
            .map(|w| w.name)
            .collect();
        if !whole_days.contains(&r.projection_window.as_str()) {
            return invalid(format!(
                "alerts.rules.projection_window must be one of {whole_days:?}"
            ));
        }
        if !(0.0..=1.0).contains(&r.online_share_min)
            || !(0.0..=1.0).contains(&r.critical_pace_ratio)
            || !(0.0..=1.0).contains(&r.online_share_resolve_margin)
            || !(0.0..=1.0).contains(&r.pace_resolve_margin)
        {
            return invalid("alerts.rules ratios lie between 0 and 1".into());
        }
        // A firing online_share_low resolves at or above the sum: above 100%, never.
        if r.online_share_min + r.online_share_resolve_margin > 1.0 {
            return invalid(
                "alerts.rules.online_share_min + online_share_resolve_margin must not exceed 1"
                    .into(),
            );
        }
        if a.receivers.contains_key(KAFKA_OUTBOX) {
            return invalid(
                "alerts.receivers: the name `kafka` is taken by the alerts topic".into(),
            );
        }
        for (name, rcv) in &a.receivers {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return invalid(format!(
                    "receiver name {name:?}: letters, digits, - and _ only"
                ));
            }
            let missing = match rcv.kind {
                ReceiverKind::Telegram if rcv.token.expose().is_empty() => Some("token"),
                ReceiverKind::Telegram if rcv.chat_id.is_empty() => Some("chat_id"),
                ReceiverKind::Slack | ReceiverKind::Webhook if rcv.url.expose().is_empty() => {
                    Some("url")
                }
                _ => None,
            };
            if let Some(key) = missing {
                return invalid(format!("alerts.receivers.{name}.{key} must be set"));
            }
            if rcv.routes.is_empty() {
                return invalid(format!(
                    "alerts.receivers.{name}.routes must name `taskforce`, `ops` or both"
                ));
            }
            let url = rcv.url.expose();
            if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
                return invalid(format!(
                    "alerts.receivers.{name}.url must be an http:// or https:// URL"
                ));
            }
            if rcv.max_chars.is_some_and(|m| !(300..=40_000).contains(&m))
                || (rcv.kind == ReceiverKind::Telegram && rcv.max_chars.is_some_and(|m| m > 4096))
            {
                return invalid(format!(
                    "alerts.receivers.{name}.max_chars lies between 300 and 4096 (Telegram) or 40000"
                ));
            }
        }
        Ok(())
    }

    /// The Redis URL with any password removed, for logs.
    pub fn redis_display(&self) -> String {
        let urls: Vec<&Secret> = if self.redis.cluster_urls.is_empty() {
            vec![&self.redis.url]
        } else {
            self.redis.cluster_urls.iter().collect()
        };
        urls.iter()
            .map(|u| redact_url(u.expose()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `rediss://user:pw@host:6380/0` → `rediss://***@host:6380/0`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let mut s = Settings::default();
        s.redis.url = Secret::new("rediss://u:hunter2@redis:6380");
        s.kafka
            .properties
            .insert("sasl.password".into(), Secret::new("hunter2"));
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(s.redis_display(), "rediss://***@redis:6380");
    }

    #[test]
    fn property_keys_accept_underscores_for_dots() {
        let mut s = Settings::default();
        s.kafka
            .properties
            .insert("SECURITY_PROTOCOL".into(), Secret::new("SASL_SSL"));
        let s = s.validated().unwrap();
        assert_eq!(s.kafka.properties["security.protocol"].expose(), "SASL_SSL");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn environment_overrides_the_file_and_numbers_become_property_text() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "[redis]\nurl = \"redis://file:1\"\n[kafka]\ngroup_id = \"g\"\n",
            )?;
            jail.set_env("TIENDO_REDIS__URL", "redis://env:2");
            jail.set_env("TIENDO_KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
            jail.set_env("TIENDO_PIPELINE__DEDUP_HORIZON", "3d");
            let s = Settings::load(Some(Path::new("t.toml"))).expect("loads");
            assert_eq!(s.redis.url.expose(), "redis://env:2");
            assert_eq!(s.kafka.group_id, "g");
            assert_eq!(s.kafka.properties["session.timeout.ms"].expose(), "6000");
            assert_eq!(s.pipeline.dedup_horizon, Duration::from_secs(3 * 86_400));
            Ok(())
        });
    }

    #[test]
    fn rejects_nonsense() {
        let mut s = Settings::default();
        s.validation.datasets.clear();
        assert!(s.validated().is_err());
        let mut s = Settings::default();
        s.redis.key_prefix = "a{b}".into();
        assert!(s.validated().is_err());
        // A count whose sums could overflow.
        let mut s = Settings::default();
        s.validation.max_record_count = MAX_RECORD_COUNT + 1;
        assert!(s.validated().is_err());
        let mut s = Settings::default();
        s.validation.max_record_count = MAX_RECORD_COUNT;
        assert!(s.validated().is_ok());
        // Resolve margins past their threshold: alerts that could never resolve.
        let mut s = Settings::default();
        s.sources.reject_resolve_margin = s.sources.reject_ratio_max + 0.01;
        assert!(s.validated().is_err());
        let mut s = Settings::default();
        s.alerts.rules.online_share_min = 0.95;
        s.alerts.rules.online_share_resolve_margin = 0.06;
        assert!(s.validated().is_err());
        // A projection at a rolling day's rate would miss every deadline each night.
        let with = |projection: &str, share: &str| {
            let mut s = Settings::default();
            s.alerts.rules.projection_window = projection.into();
            s.alerts.rules.online_share_window = share.into();
            s.validated()
        };
        assert!(with("24h", "7d").is_err());
        assert!(with("7d", "1h").is_ok());
        let mut s = Settings::default();
        s.alerts.rules.days_off = vec![
            chrono::Weekday::Mon,
            chrono::Weekday::Tue,
            chrono::Weekday::Wed,
            chrono::Weekday::Thu,
            chrono::Weekday::Fri,
            chrono::Weekday::Sat,
            chrono::Weekday::Sun,
        ];
        assert!(s.validated().is_err());
    }
}
