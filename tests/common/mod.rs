//! One helper for every integration test: a private Redis, an in-process Kafka (librdkafka's
//! mock cluster, which speaks the real protocol over TCP), settings pointing at both, and ways
//! to run the pipeline in this process or as a `tiendo run` child process that can be killed.
#![allow(dead_code)]

pub mod aof;
pub mod batches;
pub mod browser;
pub mod chat;
pub mod relay;
pub mod tansu;
pub mod tls;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Span, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tiendo::clock::{SharedClock, SystemClock};
use tiendo::config::{ReceiverKind, ReceiverSettings, Secret, Settings};
use tiendo::embedded::{MockKafka, RedisServer};
use tiendo::events::{channel_name, Channel, CodeScheme};
use tiendo::generator::{publish, Generated, Generator};
use tiendo::pipeline::Pipeline;
use tiendo::rules::ledger::Ledger;
use tiendo::store::{self, Snapshot, Store};

pub const RECORD_PARTITIONS: i32 = 4;
pub const PROCEDURE_PARTITIONS: i32 = 2;

/// The Kafka-protocol broker a test runs against.
pub enum Broker {
    /// librdkafka's in-process mock cluster (expires sessions; slow fetches).
    Mock(MockKafka),
    /// Tansu, an independent broker, as a child process.
    Tansu(tansu::Tansu),
}

impl Broker {
    pub fn bootstrap_servers(&self) -> String {
        match self {
            Broker::Mock(m) => m.bootstrap_servers(),
            Broker::Tansu(t) => t.bootstrap_servers(),
        }
    }
}

pub struct Env {
    pub kafka: Broker,
    pub redis: RedisServer,
    pub settings: Settings,
    producer: tiendo::source::Producer,
}

/// A pipeline running as a task of this process.
pub struct Running {
    pub stop: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("pipeline stops within 30 s")
            .expect("pipeline task did not panic");
    }
}

impl Env {
    /// On librdkafka's mock cluster.
    pub fn start() -> Env {
        Env::start_with(|topics| Broker::Mock(MockKafka::start(topics).expect("mock kafka starts")))
    }

    /// On Tansu.
    pub fn start_tansu() -> Env {
        Env::start_with(|topics| Broker::Tansu(tansu::Tansu::start(topics)))
    }

    /// On a Tansu whose log is kept on disk, so the test can stop it and start it again.
    pub fn start_tansu_persistent() -> Env {
        Env::start_with(|topics| Broker::Tansu(tansu::Tansu::start_persistent(topics)))
    }

    /// On a Tansu that serves only `login`, with SASL/SCRAM-SHA-512 over TLS (SASL_SSL) with a
    /// certificate of a private CA; the settings, and every client of this Env, log in and
    /// trust that CA (`ssl.ca.location`).
    pub fn start_tansu_with_login(login: &tansu::Login) -> Env {
        let certs = tls::Certificates::new();
        let ca = certs.path("ca.pem").to_string_lossy().into_owned();
        Env::start_with_properties(
            |topics| {
                Broker::Tansu(tansu::Tansu::start_with_login_over_tls(
                    topics, login, certs,
                ))
            },
            &[
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", &ca),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", login.user),
                ("sasl.password", login.password),
            ],
        )
    }

    /// A client of the test's broker, as tiendo is configured (`kafka.properties`).
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.settings.kafka.brokers);
        for (k, v) in &self.settings.kafka.properties {
            config.set(k, v.expose());
        }
        config
    }

    /// A producer that shares no code with tiendo, configured as tiendo is
    /// (`kafka.properties`).
    pub fn independent_producer(&self) -> FutureProducer {
        self.client()
            .set("linger.ms", "20")
            .set("acks", "all")
            .create()
            .expect("producer")
    }

    fn start_with(broker: impl FnOnce(&[(&str, i32)]) -> Broker) -> Env {
        Env::start_with_properties(broker, &[])
    }

    /// With these librdkafka properties (`kafka.properties`) for tiendo and the test's clients.
    fn start_with_properties(
        broker: impl FnOnce(&[(&str, i32)]) -> Broker,
        properties: &[(&str, &str)],
    ) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,librdkafka=error".into()),
            )
            .with_test_writer()
            .try_init();
        let redis = RedisServer::start().expect("redis-server starts (is it installed?)");
        let mut settings = Settings::default();
        let topics = settings.kafka.topics.clone();
        let kafka = broker(&[
            (&topics.records, RECORD_PARTITIONS),
            (&topics.procedures, PROCEDURE_PARTITIONS),
            (&topics.dead_letter, 1),
            (&topics.alerts, 1),
        ]);
        settings.kafka.brokers = kafka.bootstrap_servers();
        settings.kafka.group_id = "tiendo-test".into();
        // Short sessions so a killed member's partitions move on quickly.
        for (k, v) in [
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("max.poll.interval.ms", "30000"),
        ] {
            settings
                .kafka
                .consumer_properties
                .insert(k.into(), Secret::new(v));
        }
        for (k, v) in properties {
            settings
                .kafka
                .properties
                .insert(k.to_string(), Secret::new(*v));
        }
        settings.redis.url = Secret::new(redis.url());
        settings.http.listen = String::new();
        settings.pipeline.batch_linger = Duration::from_millis(50);
        settings.pipeline.batch_max_messages = 500;
        settings.pipeline.max_backoff = Duration::from_millis(500);
        let settings = settings.validated().expect("valid test settings");
        let producer =
            tiendo::source::producer(&settings.kafka, "test producer").expect("producer");
        Env {
            kafka,
            redis,
            settings,
            producer,
        }
    }

    pub fn generator(&self, seed: u64) -> Generator {
        Generator::new(
            seed,
            &format!("t{seed}"),
            &self.settings.validation.datasets,
        )
    }

    pub async fn publish(&self, messages: &[Generated]) {
        for chunk in messages.chunks(1000) {
            publish(&self.producer, &self.settings.kafka.topics, chunk)
                .await
                .expect("publish");
        }
    }

    pub async fn spawn(&self) -> Running {
        self.spawn_with(self.settings.clone()).await
    }

    pub async fn spawn_with(&self, settings: Settings) -> Running {
        let clock: SharedClock = Arc::new(SystemClock);
        let pipeline = Pipeline::new(&settings, clock).await.expect("pipeline");
        let stop = CancellationToken::new();
        let handle = tokio::spawn(pipeline.run(stop.clone()));
        Running { stop, handle }
    }

    /// `tiendo run` as a child process, configured through environment variables; killed
    /// when dropped.
    pub fn spawn_process(&self) -> Killed {
        Killed(
            self.process_command()
                .spawn()
                .expect("tiendo binary starts"),
        )
    }

    /// The command `spawn_process` runs, to adjust before spawning.
    pub fn process_command(&self) -> Command {
        let s = &self.settings;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tiendo"));
        cmd.arg("run")
            .env("TIENDO_KAFKA__BROKERS", &s.kafka.brokers)
            .env("TIENDO_KAFKA__GROUP_ID", &s.kafka.group_id)
            .env("TIENDO_REDIS__URL", s.redis.url.expose())
            .env("TIENDO_HTTP__LISTEN", "")
            .env("TIENDO_PIPELINE__BATCH_LINGER", "50ms")
            .env("TIENDO_PIPELINE__BATCH_MAX_MESSAGES", "500")
            .env("TIENDO_LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (section, properties) in [
            ("PROPERTIES", &s.kafka.properties),
            ("CONSUMER_PROPERTIES", &s.kafka.consumer_properties),
        ] {
            for (k, v) in properties {
                let var = format!(
                    "TIENDO_KAFKA__{section}__{}",
                    k.replace('.', "_").to_uppercase()
                );
                cmd.env(var, v.expose());
            }
        }
        cmd
    }

    pub async fn reader(&self) -> Store {
        let conn = store::connect(&self.settings.redis).await.expect("redis");
        Store::new(
            conn,
            &self.settings.redis.key_prefix,
            self.settings.validation.datasets.clone(),
            1,
        )
    }

    pub async fn snapshot(&self) -> Snapshot {
        self.reader()
            .await
            .snapshot(Utc::now())
            .await
            .expect("snapshot")
    }

    /// High watermarks of every event topic partition: what "all consumed" means.
    pub fn watermarks(&self) -> BTreeMap<String, i64> {
        let consumer: BaseConsumer = self.client().create().expect("consumer");
        let topics = &self.settings.kafka.topics;
        let mut marks = BTreeMap::new();
        for (topic, n) in [
            (&topics.records, RECORD_PARTITIONS),
            (&topics.procedures, PROCEDURE_PARTITIONS),
        ] {
            for p in 0..n {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks");
                if high > 0 {
                    marks.insert(format!("{topic}/{p}"), high);
                }
            }
        }
        marks
    }

    /// Sum of all stored offsets: grows as the pipeline makes progress.
    pub async fn progress(&self) -> i64 {
        match self.reader().await.snapshot(Utc::now()).await {
            Ok(snap) => snap.offsets.values().sum(),
            Err(_) => 0,
        }
    }

    /// Waits until stored offsets have grown past `beyond`.
    pub async fn wait_progress(&self, beyond: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let p = self.progress().await;
            if p > beyond {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no progress past {beyond} in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until Redis's stored offsets reach every partition's end, then returns the
    /// figures. Panics after `timeout`.
    pub async fn wait_consumed(&self, timeout: Duration) -> Snapshot {
        if let Broker::Tansu(_) = self.kafka {
            return self.wait_counted(timeout).await;
        }
        let marks = self.watermarks();
        let reader = self.reader().await;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(snap) = reader.snapshot(Utc::now()).await {
                if marks
                    .iter()
                    .all(|(tag, high)| snap.offsets.get(tag).is_some_and(|o| o >= high))
                {
                    return snap;
                }
                if Instant::now() > deadline {
                    panic!(
                        "not consumed in {timeout:?}: stored {:?}, ends {marks:?}",
                        snap.offsets
                    );
                }
            } else if Instant::now() > deadline {
                panic!("redis unreadable for {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Like `wait_consumed`, for brokers whose offset queries answer low (Tansu): the end of
    /// each partition is found by fetching from the stored offset, as the catch-up check does.
    pub async fn wait_counted(&self, timeout: Duration) -> Snapshot {
        let watch = tiendo::catchup::Watch::new(&self.settings, self.reader().await).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            let c = watch.check(Utc::now()).await;
            if c.behind == 0 && c.unknown == 0 && c.partitions > 0 {
                return self.snapshot().await;
            }
            assert!(
                Instant::now() < deadline,
                "not counted in {timeout:?}: {c:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message in the dead-letter topic: (reason, source partition, source offset).
    pub fn dead_letters(&self) -> Vec<(String, String, String)> {
        self.letters()
            .into_iter()
            .map(|l| (l.reason, l.partition, l.offset))
            .collect()
    }

    /// Every message in the dead-letter topic, with what its headers say.
    pub fn letters(&self) -> Vec<Letter> {
        let topic = &self.settings.kafka.topics.dead_letter;
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", "dlq-reader")
            .create()
            .expect("consumer");
        let (_, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (out.len() as i64) < high && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let header = |name: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == name))
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).to_string())
                        .unwrap_or_default()
                };
                out.push(Letter {
                    reason: header("tiendo.reason"),
                    topic: header("tiendo.source.topic"),
                    partition: header("tiendo.source.partition"),
                    offset: header("tiendo.source.offset"),
                    truncated: header("tiendo.payload.truncated"),
                    key_truncated: header("tiendo.key.truncated"),
                    bytes: m.payload().map_or(0, <[u8]>::len),
                    key_bytes: m.key().map_or(0, <[u8]>::len),
                });
            }
        }
        out
    }
}

/// One message of the dead-letter topic: its headers, and its payload's and key's sizes.
#[derive(Debug, Clone)]
pub struct Letter {
    pub reason: String,
    pub topic: String,
    pub partition: String,
    pub offset: String,
    /// The original size, when the payload was cut to fit the topic.
    pub truncated: String,
    /// The same for the key.
    pub key_truncated: String,
    pub bytes: usize,
    pub key_bytes: usize,
}

/// A chat or webhook receiver at `url`, as the tests configure one.
pub fn receiver(kind: ReceiverKind, url: &str) -> ReceiverSettings {
    ReceiverSettings {
        kind,
        url: Secret::new(url),
        token: Secret::new("123:SECRET"),
        chat_id: "-100042".into(),
        language: None,
        max_chars: None,
        routes: vec![tiendo::rules::Route::Taskforce],
    }
}

/// A replica's store and alert ledger, on a Redis connection of their own.
pub async fn store_and_ledger(s: &Settings) -> (Store, Ledger) {
    let conn = store::connect(&s.redis).await.expect("redis");
    let store = Store::new(
        conn.clone(),
        &s.redis.key_prefix,
        s.validation.datasets.clone(),
        1,
    );
    (store, Ledger::new(conn, &s.redis.key_prefix))
}

/// Targets 40 days out for four provinces of the 34-unit table.
pub fn stall_targets(now: DateTime<Utc>, datasets: &[String]) -> tiendo::targets::Targets {
    stall_targets_and(now, datasets, "")
}

/// [`stall_targets`] and the CSV rows `more`.
pub fn stall_targets_and(
    now: DateTime<Utc>,
    datasets: &[String],
    more: &str,
) -> tiendo::targets::Targets {
    let deadline = (now.with_timezone(&tiendo::clock::vn_offset()) + Span::days(40)).date_naive();
    let csv = format!(
        "province,dataset,target,deadline\n\
         01,civil_status,1000000,{deadline}\n\
         04,civil_status,1000000,{deadline}\n\
         08,civil_status,200000,{deadline}\n\
         11,civil_status,1000000,{deadline}\n{more}"
    );
    tiendo::targets::Targets::parse(&csv, datasets).unwrap()
}

/// Hà Nội silent for 5 days; Cao Bằng reporting but behind pace; Tuyên Quang done; Điện Biên
/// healthy. Counted by the real pipeline.
pub async fn seed_stalls(env: &Env, now: DateTime<Utc>) {
    let mut g = env.generator(4);
    let mut events = Vec::new();
    let rec = |g: &mut tiendo::generator::Generator, code: &str, n: u64, ago: Span| {
        g.record_for(code, CodeScheme::Provinces34, "civil_status", n, now - ago)
    };
    for i in 0..5 {
        events.push(rec(&mut g, "01", 100_000, Span::days(5) + Span::minutes(i)));
    }
    for day in 1..=6 {
        for _ in 0..4 {
            events.push(rec(
                &mut g,
                "04",
                100_000 / 24,
                Span::days(day) - Span::hours(3),
            ));
        }
    }
    events.push(rec(&mut g, "08", 250_000, Span::days(2)));
    for day in 0..6 {
        events.push(rec(&mut g, "11", 100_000, Span::days(day) + Span::hours(1)));
    }
    env.publish(&events).await;
    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(60)).await;
    running.shutdown().await;
}

/// What the counters must hold after a set of messages, computed independently of the
/// pipeline: records summed per province and dataset, procedures per channel, each event id
/// counted once, bad messages per reason.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expected {
    pub totals: BTreeMap<String, i64>,
    pub dead: BTreeMap<String, i64>,
    seen: HashSet<String>,
}

fn unit(code: &str, scheme: i32) -> String {
    let tag = if scheme == CodeScheme::Provinces63 as i32 {
        'o'
    } else {
        'n'
    };
    format!("{tag}{code}")
}

impl Expected {
    pub fn add(&mut self, m: &Generated) {
        match m {
            Generated::Record(r) => {
                if self.seen.insert(format!("r:{}", r.event_id)) {
                    let key = format!("{}|r.{}", unit(&r.province_code, r.code_scheme), r.dataset);
                    *self.totals.entry(key).or_default() += r.record_count as i64;
                }
            }
            Generated::Procedure(p) => {
                if self.seen.insert(format!("p:{}", p.event_id)) {
                    let channel =
                        channel_name(Channel::try_from(p.channel).expect("valid channel"));
                    let u = unit(&p.province_code, p.code_scheme);
                    *self.totals.entry(format!("{u}|p.{channel}.n")).or_default() += 1;
                    if p.on_time {
                        *self
                            .totals
                            .entry(format!("{u}|p.{channel}.ot"))
                            .or_default() += 1;
                    }
                }
            }
            Generated::Poison { reason, .. } => {
                *self.dead.entry(reason.as_str().to_string()).or_default() += 1;
            }
        }
    }

    pub fn add_all(&mut self, ms: &[Generated]) {
        for m in ms {
            self.add(m);
        }
    }

    pub fn records(&self) -> i64 {
        self.totals
            .iter()
            .filter(|(k, _)| k.contains("|r."))
            .map(|(_, v)| v)
            .sum()
    }

    /// Asserts the snapshot's totals are exactly these, field by field.
    pub fn assert_matches(&self, snap: &Snapshot) {
        let got = totals(snap);
        let got_sum: i64 = got
            .iter()
            .filter(|(k, _)| k.contains("|r."))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(got_sum, self.records(), "total records");
        assert_eq!(got, self.totals, "per-field totals");
        assert_eq!(snap.dead, self.dead, "dead letters by reason");
    }
}

/// Every counter's total that is not zero, by field (`n56|r.land`).
pub fn totals(snap: &Snapshot) -> BTreeMap<String, i64> {
    snap.counts
        .iter()
        .filter(|(_, c)| c.total != 0)
        .map(|(k, c)| (k.clone(), c.total))
        .collect()
}

/// A child process killed (SIGKILL) when dropped: a crash where a test wants one, and no
/// process left running by a failed assertion (one that outlived its test would also keep
/// the test's output pipe open).
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Killed {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// Sends a signal (`TERM`, `STOP`, `CONT`…) to a child process, as `kill -s` would.
pub fn signal(child: &std::process::Child, name: &str) {
    let sent = std::process::Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -s {name} failed");
}

/// The Prometheus `/metrics` page of the server at `base`; `None` while it does not answer.
pub async fn metrics_page(base: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Reads `/metrics` until `done` holds for the page or `timeout` has passed, and returns the
/// last page read (empty if the server never answered), for the caller to assert on. The
/// pipeline counts a batch in its metrics a moment after Redis holds it.
pub async fn wait_metrics(base: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let page = metrics_page(base).await.unwrap_or_default();
        if done(&page) || Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One counter or gauge from a Prometheus `/metrics` page, summed over its label sets;
/// `None` while the server does not answer.
pub async fn scrape(base: &str, name: &str) -> Option<f64> {
    let page = metrics_page(base).await?;
    Some(metric(&page, name).unwrap_or(0.0))
}

/// One counter or gauge on a `/metrics` page, summed over its label sets; `None` if the page
/// has no series of it.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Sends each message to its topic with `producer` (see `Env::independent_producer`), and
/// waits until the broker has them all.
pub async fn send_all(
    producer: &FutureProducer,
    topics: &tiendo::config::TopicSettings,
    messages: &[Generated],
) {
    let sends = messages.iter().map(|m| {
        let topic = match m.kind() {
            tiendo::events::Kind::Records => &topics.records,
            tiendo::events::Kind::Procedures => &topics.procedures,
        };
        let (key, payload) = (m.key(), m.encode());
        async move {
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(topic)
                        .key(&key)
                        .payload(&payload),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
    });
    futures::future::join_all(sends).await;
}

/// A mixed stream of `n` valid events at the current time: mostly records, some procedures.
pub fn events(g: &mut Generator, n: usize) -> Vec<Generated> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            if i % 5 == 4 {
                g.procedure(now)
            } else {
                g.record(now)
            }
        })
        .collect()
}

/// The autumn-2024 season up to 20 November (records only, history included), moved in time
/// so that its last day is today, with its civil-status targets, deadlines moved alike: what a
/// deployment meets when it starts on a topic that already holds weeks of events.
pub fn season_until_now(now: DateTime<Utc>, datasets: &[String]) -> (Vec<Generated>, String) {
    use tiendo::scenario::Scenario;
    let mut scenario = Scenario::autumn_2024(0.0);
    let season_now = scenario.start + Span::days(50);
    let shift = Span::days((now - season_now).num_days());
    let mut g = Generator::new(5, "season", datasets);
    let mut rng = fastrand::Rng::with_seed(5);
    let mut events = scenario.history(&mut g);
    let mut day = scenario.start;
    while day < season_now {
        events.extend(scenario.between(&mut g, &mut rng, day, day + Span::days(1)));
        day += Span::days(1);
    }
    for e in &mut events {
        if let Generated::Record(r) = e {
            if let Some(t) = r.occurred_at.as_mut() {
                t.seconds += shift.num_seconds();
            }
        }
    }
    let mut targets = String::from("province,dataset,target,deadline,scheme\n");
    for s in scenario
        .series
        .iter()
        .filter(|s| s.dataset == "civil_status")
    {
        let deadline = s.deadline + shift;
        targets.push_str(&format!(
            "{},{},{},{deadline},63\n",
            s.code, s.dataset, s.target
        ));
    }
    (events, targets)
}

/// Redis loses everything, as a failover to an empty replica or a bad restore would leave it.
pub async fn flush_redis(env: &Env) {
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// All a finished child wrote to its piped stderr (its log).
pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut log)
        .unwrap();
    log
}

/// A child's stderr, read line by line on a thread of its own: the test can wait for a line
/// while the process runs, and still read the whole log once it has exited.
pub struct Log {
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    pub fn of(child: &mut Child) -> Self {
        use std::io::BufRead;
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a line contains `needle`: panics with the log so far after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.last().is_some_and(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("no {needle:?} logged ({e}): {:#?}", self.seen),
            }
        }
    }

    /// The lines read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Every line, once the process has exited (its end of the pipe is closed).
    pub fn rest(mut self) -> Vec<String> {
        self.seen.extend(self.lines.iter());
        self.seen
    }
}
