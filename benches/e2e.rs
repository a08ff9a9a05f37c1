//! End-to-end benchmark through a real Kafka-protocol broker (Tansu; see `scripts/bench`).
//! Two data sets are published, both with 3% re-sends: events of today, and events spread over
//! 60 days. On each, in one run: a consume-only baseline, then `tiendo run` (the release
//! binary, configured by environment) on a fresh Redis with `appendfsync everysec`, then with
//! `always`, each printed against its goal with Redis memory per event and tiendo's resident
//! memory, and where the CPU went (the machine's busy cores, tiendo's, Redis's and the rest's
//! CPU time per message), and how long each pipeline stage waited on the other (from tiendo's
//! `/metrics`: which of Kafka and Redis set the pace). Then the event-to-Redis latency at half
//! the first measured rate. Completion is checked by counting (Tansu's high watermarks
//! under-report): the baseline counts messages, tiendo's Redis totals must equal what was
//! published less the re-sends, or the benchmark exits non-zero. Needs
//! TIENDO_BENCH_BROKERS=host:port; EVENTS and DATA (today or spread) change the size and the
//! data sets; LATENCY_RATE (messages/s) fixes the latency run's rate; REDIS_ARGS adds
//! arguments to the benchmarked Redis (`--auto-aof-rewrite-percentage 400`, say); WRONG_BY=n
//! expects n records more than were published, so that `scripts/check-benches` can prove the
//! non-zero exit.

use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};

use tiendo::config::{Secret, Settings, TopicSettings};
use tiendo::embedded::RedisServer;
use tiendo::generator::{publish, Generated, Generator};
use tiendo::status::{Status, View};
use tiendo::store::{self, Store};
use tiendo::targets::Targets;

/// Goals, as shares of the consume-only baseline, per Redis `appendfsync`.
const GOALS: [(&str, f64); 2] = [("everysec", 0.95), ("always", 0.85)];
/// Share of messages that are re-sends of an earlier one (same payload, so same event id).
const RESENDS: f64 = 0.03;
/// Event times of the spread data go back this many days.
const SPREAD_DAYS: i64 = 60;
/// tiendo's resident memory must stay below this, flat over the run.
const RSS_GOAL_MIB: u32 = 150;
/// How long the latency run publishes.
const LATENCY_SECS: f64 = 10.0;

/// What was published to one pair of topics, and what tiendo must count from it.
struct Data {
    name: &'static str,
    topics: TopicSettings,
    messages: usize,
    events: usize,
    records: i64,
    procedures: i64,
}

/// The environment variable `name` parsed, or `default` when it is unset or does not parse.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let Ok(brokers) = std::env::var("TIENDO_BENCH_BROKERS") else {
        eprintln!("e2e bench skipped: set TIENDO_BENCH_BROKERS (scripts/bench starts Tansu)");
        return;
    };
    let events: usize = env_or("EVENTS", 200_000);
    let run = format!("b{}", std::process::id());
    let mut base = Settings::default();
    base.kafka.brokers = brokers.clone();
    base.http.listen = String::new();
    println!(
        "tiendo end-to-end benchmark through Tansu at {brokers}: {events} events per data set, \
         9 partitions, batch {}",
        base.pipeline.batch_max_messages
    );
    // DATA=today or DATA=spread runs one data set (for long runs such as EVENTS=10000000).
    let only = std::env::var("DATA").unwrap_or_default();
    let mut failed = false;
    let mut max_rate: Option<f64> = None;
    for (name, spread) in [("today", false), ("spread", true)] {
        if !only.is_empty() && only != name {
            continue;
        }
        let data = publish_data(&base, &run, name, spread, events).await;
        let (baseline, baseline_cpu) = baseline(&brokers, &run, &data).await;
        println!(
            "  {name}: {} messages ({} re-sent), event times {}",
            data.messages,
            data.messages - data.events,
            if spread {
                format!("over {SPREAD_DAYS} days")
            } else {
                "now".into()
            }
        );
        println!(
            "    consume only          {:>8.0} msg/s  cpu {}; {:.0} msg/s from its first \
             message",
            baseline.whole,
            baseline_cpu.show(),
            baseline.steady
        );
        for (fsync, goal) in GOALS {
            let outcome = tiendo(&base, &run, &data, fsync).await;
            let rate = outcome.rates.whole;
            max_rate.get_or_insert(rate);
            println!(
                "    tiendo, {fsync:<9}     {rate:>8.0} msg/s  ratio {:.2} (goal {goal:.2})  \
                 redis {:.0} bytes/event  exact {}",
                rate / baseline.whole,
                outcome.bytes_per_event,
                if outcome.exact { "yes" } else { "NO" }
            );
            println!(
                "      once running (first stored batch to last, against the baseline from its \
                 first message): {:.0} msg/s, ratio {:.2}",
                outcome.rates.steady,
                outcome.rates.steady / baseline.steady
            );
            println!(
                "      tiendo RSS {:.0} MiB at a quarter of the run, {:.0} MiB at its end, \
                 {:.0} MiB at most (goal: flat, below {RSS_GOAL_MIB} MiB)",
                outcome.rss.quarter, outcome.rss.end, outcome.rss.max
            );
            println!(
                "      cpu {}: tiendo {:.2} (its main thread, the storer, {:.2}), redis {:.2}, its {} \
                 AOF rewrites {:.2}, broker and the rest {:.2}",
                outcome.cpu.show(),
                outcome.tiendo_us,
                outcome.storer_us,
                outcome.redis_us,
                outcome.rewrites.1,
                outcome.rewrites.0,
                outcome.cpu.us_per_msg - outcome.tiendo_us - outcome.redis_us - outcome.rewrites.0
            );
            // Where this is near the ratio, the machine's CPU, not how the stages overlap,
            // set the pace: a goal above it cannot be met here.
            let cores = outcome.cpu.of as f64;
            let ceiling = cores * 1e6 / outcome.cpu.us_per_msg;
            println!(
                "      at that CPU per message, {cores:.0} cores allow at most {ceiling:.0} \
                 msg/s: ratio {:.2}",
                ceiling / baseline.whole
            );
            println!(
                "      waits (tiendo_pipeline_wait_seconds) of {:.2} s: the storer for batches \
                 {:.2} s (reading-bound), read batches for the storer {:.2} s (Redis-bound)",
                outcome.secs, outcome.overlap.waits.0, outcome.overlap.waits.1
            );
            let o = outcome.overlap;
            println!(
                "      batches {:.0}; read while the one before was written {:.0} ({:.0}%), \
                 of which read again {:.0}",
                o.batches,
                o.read_ahead.0 + o.read_ahead.1,
                100.0 * (o.read_ahead.0 + o.read_ahead.1) / o.batches.max(1.0),
                o.read_ahead.1
            );
            failed |= !outcome.exact;
        }
    }
    if let Some(rate) = max_rate {
        // LATENCY_RATE fixes the rate instead, to compare two settings at the same load.
        let half = env_or("LATENCY_RATE", rate / 2.0);
        let (from_send, from_ack) = latency(&base, &run, half, LATENCY_SECS).await;
        let q = |lat: &[f64], q: f64| {
            lat.get(((lat.len() as f64 - 1.0) * q) as usize)
                .map_or(f64::NAN, |s| s * 1e3)
        };
        if from_send.is_empty() {
            eprintln!("latency run: no message reached Redis");
            failed = true;
        } else {
            println!(
                "  latency at half the maximum rate or LATENCY_RATE ({half:.0} msg/s for \
                 {LATENCY_SECS} s, {} messages, appendfsync everysec, batch linger {} ms):",
                from_send.len(),
                base.pipeline.batch_linger.as_millis()
            );
            for (name, lat) in [("from send", &from_send), ("from broker ack", &from_ack)] {
                println!(
                    "    {name:<16} to Redis: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                    q(lat, 0.5),
                    q(lat, 0.99),
                    q(lat, 1.0)
                );
            }
        }
    }
    if failed {
        eprintln!("end-to-end benchmark: the counts are wrong; its figures mean nothing");
        std::process::exit(1);
    }
}

impl Data {
    /// Every (topic, partition) the data was published to.
    fn parts(&self) -> Vec<(String, i32)> {
        (0..RECORD_PARTITIONS)
            .map(|p| (self.topics.records.clone(), p))
            .chain((0..PROCEDURE_PARTITIONS).map(|p| (self.topics.procedures.clone(), p)))
            .collect()
    }
}

const RECORD_PARTITIONS: i32 = 6;
const PROCEDURE_PARTITIONS: i32 = 3;

/// Publishes `events` distinct events plus re-sends to fresh topics.
async fn publish_data(
    base: &Settings,
    run: &str,
    name: &'static str,
    spread: bool,
    events: usize,
) -> Data {
    let topics = TopicSettings {
        records: format!("{run}.{name}.records"),
        procedures: format!("{run}.{name}.procedures"),
        dead_letter: format!("{run}.{name}.dlq"),
        alerts: String::new(),
        ..TopicSettings::default()
    };
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &base.kafka.brokers)
        .create()
        .unwrap();
    let new = [
        NewTopic::new(
            &topics.records,
            RECORD_PARTITIONS,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &topics.procedures,
            PROCEDURE_PARTITIONS,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(&topics.dead_letter, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.expect("topic created");
    }
    let datasets = base.validation.datasets.clone();
    let mut g = Generator::new(11, &format!("{run}{name}"), &datasets);
    let mut rng = fastrand::Rng::with_seed(17);
    let now = Utc::now();
    let mut messages: Vec<Generated> = Vec::with_capacity(events + events / 30);
    let (mut records, mut procedures) = (0i64, 0i64);
    for i in 0..events {
        let at = if spread {
            now - chrono::Duration::seconds(rng.i64(0..SPREAD_DAYS * 86_400))
        } else {
            now
        };
        let m = if i % 5 == 4 {
            procedures += 1;
            g.procedure(at)
        } else {
            let m = g.record(at);
            if let Generated::Record(r) = &m {
                records += r.record_count as i64;
            }
            m
        };
        messages.push(m);
        if !messages.is_empty() && rng.f64() < RESENDS {
            let earlier = messages[rng.usize(0..messages.len())].clone();
            messages.push(earlier);
        }
    }
    let producer = tiendo::source::producer(&base.kafka, "bench producer").unwrap();
    for chunk in messages.chunks(10_000) {
        publish(&producer, &topics, chunk).await.expect("publish");
    }
    Data {
        name,
        topics,
        messages: messages.len(),
        events,
        records,
        procedures,
    }
}

/// Messages per second a plain consumer reads, counting them (Tansu's watermarks under-report),
/// and the machine's CPU while it reads.
async fn baseline(brokers: &str, run: &str, data: &Data) -> (Rates, CpuUse) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{run}-{}-baseline", data.name))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // Tansu 0.6 answers a fetch when its wait ends: at librdkafka's default (500 ms) the
        // fetches, not the broker's capacity, would set the baseline (about 200,000 msg/s
        // against 460,000 here).
        .set("fetch.wait.max.ms", "100")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&data.topics.records, &data.topics.procedures])
        .unwrap();
    let (t, cpu) = (Instant::now(), Machine::now());
    let mut seen = 0usize;
    let mut first = None;
    while seen < data.messages {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await {
            Ok(Ok(_)) => {
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
            Ok(Err(e)) => eprintln!("baseline consume error: {e}"),
            Err(_) => panic!("baseline stalled at {seen} of {}", data.messages),
        }
    }
    let steady = first.map_or(f64::NAN, |f| {
        (data.messages - 1) as f64 / f.elapsed().as_secs_f64()
    });
    (
        Rates {
            whole: data.messages as f64 / t.elapsed().as_secs_f64(),
            steady,
        },
        cpu.since(data.messages),
    )
}

/// Messages per second over a whole phase (joining the group and, for tiendo, starting the
/// process included), and from its first message (the baseline) or first stored batch
/// (tiendo) to its end: the rate once running, without the fixed cost of starting, which
/// could weigh on a short run (it was measured not to: BENCHMARKS.md, thirteenth session).
#[derive(Clone, Copy)]
struct Rates {
    whole: f64,
    steady: f64,
}

struct Outcome {
    /// Seconds from starting tiendo to seeing every message stored (or to the deadline).
    secs: f64,
    /// Over those seconds, and from the first stored batch to the last.
    rates: Rates,
    exact: bool,
    bytes_per_event: f64,
    rss: Rss,
    cpu: CpuUse,
    /// CPU microseconds per message of tiendo's process, of its storer's thread, and of Redis.
    tiendo_us: f64,
    storer_us: f64,
    redis_us: f64,
    /// The same of Redis's AOF rewrites, and how many there were.
    rewrites: (f64, u64),
    /// How tiendo's stages overlapped.
    overlap: Overlap,
}

/// `tiendo run`, the release binary, on a fresh Redis with this `appendfsync`, until Redis
/// has stored every message's offset (or 10 minutes pass); the counts are then final and
/// compared with what was published. Its resident memory is sampled.
async fn tiendo(base: &Settings, run: &str, data: &Data, fsync: &str) -> Outcome {
    let extra = std::env::var("REDIS_ARGS").unwrap_or_default();
    let args: Vec<&str> = ["--appendfsync", fsync]
        .into_iter()
        .chain(extra.split_whitespace())
        .collect();
    let redis = RedisServer::start_with(&args).expect("redis-server");
    let mut settings = base.clone();
    settings.kafka.topics = data.topics.clone();
    settings.redis.url = Secret::new(redis.url());
    let datasets = settings.validation.datasets.clone();
    let reader = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        &settings.redis.key_prefix,
        datasets.clone(),
        1,
    );
    let before = redis.used_memory().unwrap();
    let redis_cpu = redis.used_cpu().unwrap();
    let (redis_children, rewrites) = redis.used_cpu_children().unwrap();
    let (t, cpu) = (Instant::now(), Machine::now());
    let port = tiendo::embedded::free_port().expect("a free port");
    settings.http.listen = format!("127.0.0.1:{port}");
    let child = Tiendo::start(&settings, &format!("{run}-{}-{fsync}", data.name));
    let mut rss = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let want = (data.records + env_or("WRONG_BY", 0i64), data.procedures);
    let parts = data.parts();
    let refs: Vec<(&str, i32)> = parts.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    // When the first batch was seen stored, with how many messages.
    let mut first: Option<(Instant, i64)> = None;
    let mut polls = 0usize;
    loop {
        // Offsets every 20 ms (one small read), for the steady rate's ends; RSS every 100 ms.
        tokio::time::sleep(Duration::from_millis(20)).await;
        polls += 1;
        if polls % 5 == 0 {
            rss.push(child.rss());
        }
        let stored: i64 = reader.offsets(&refs).await.unwrap().iter().flatten().sum();
        if stored > 0 {
            first.get_or_insert((Instant::now(), stored));
        }
        if stored >= data.messages as i64 || Instant::now() > deadline {
            break;
        }
    }
    let last = Instant::now();
    // Every message stored (or the deadline passed): the counters are stored with their
    // offsets, so they are final, right or wrong. They are read once, now: a snapshot of 60
    // days' counters costs Redis about 16 ms of CPU and this process 35 ms more (core bench);
    // taken every 100 ms, it took up to half a core from what was measured.
    let snap = reader.snapshot(Utc::now()).await.unwrap();
    let status = Status::build(&snap, &Targets::default(), &datasets, View::Current34);
    let got = (
        status
            .national
            .datasets
            .values()
            .map(|d| d.total)
            .sum::<i64>(),
        status.national.procedures.completed,
    );
    let secs = last.duration_since(t).as_secs_f64();
    let steady = match first {
        Some((at, stored)) if last > at => {
            (data.messages as i64 - stored) as f64 / last.duration_since(at).as_secs_f64()
        }
        _ => f64::NAN,
    };
    let cpu = cpu.since(data.messages);
    let per_msg = |secs: f64| secs * 1e6 / data.messages as f64;
    let tiendo_us = per_msg(cpu_secs(child.0.id()));
    let storer_us = per_msg(main_thread_secs(child.0.id()));
    let redis_us = per_msg(redis.used_cpu().unwrap() - redis_cpu);
    let (children, rewrites_after) = redis.used_cpu_children().unwrap();
    let rewrites = (
        per_msg(children - redis_children),
        rewrites_after - rewrites,
    );
    let overlap = overlap(&settings.http.listen).await;
    drop(child);
    let after = redis.used_memory().unwrap();
    if got != want {
        eprintln!("{} {fsync}: counted {got:?}, published {want:?}", data.name);
    }
    Outcome {
        secs,
        rates: Rates {
            whole: data.messages as f64 / secs,
            steady,
        },
        exact: got == want,
        bytes_per_event: (after - before) as f64 / data.events as f64,
        rss: Rss::of(&rss),
        cpu,
        tiendo_us,
        storer_us,
        redis_us,
        rewrites,
        overlap,
    }
}

/// What the pipeline's metrics say of how its stages overlapped, from the `/metrics` page of
/// the tiendo listening at `listen` (0 where not read).
#[derive(Debug, Default, Clone, Copy)]
struct Overlap {
    /// The sums of `tiendo_pipeline_wait_seconds` for the storer and the collector.
    waits: (f64, f64),
    /// Batches stored, and of those, read ahead and used or read again.
    batches: f64,
    read_ahead: (f64, f64),
}

async fn overlap(listen: &str) -> Overlap {
    let page = match reqwest::get(format!("http://{listen}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let value = |series: &str| {
        let prefix = format!("{series} ");
        page.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let wait = |stage: &str| {
        value(&format!(
            "tiendo_pipeline_wait_seconds_sum{{stage=\"{stage}\"}}"
        ))
    };
    let ahead = |outcome: &str| {
        value(&format!(
            "tiendo_batches_read_ahead_total{{outcome=\"{outcome}\"}}"
        ))
    };
    Overlap {
        waits: (wait("storer"), wait("collector")),
        batches: value("tiendo_batch_messages_count"),
        read_ahead: (ahead("used"), ahead("again")),
    }
}

/// Clock ticks per second in /proc's CPU times: USER_HZ, 100 on Linux by its ABI.
const USER_HZ: f64 = 100.0;

/// The machine's CPU time so far, busy and in all, from /proc/stat, in clock ticks: a phase's
/// share of busy cores shows whether the machine, not the code, set its pace.
struct Machine {
    busy: u64,
    total: u64,
}

/// The machine's CPU over a phase: cores busy on average, and busy CPU microseconds per message.
struct CpuUse {
    cores: f64,
    /// The machine's cores.
    of: usize,
    us_per_msg: f64,
}

impl Machine {
    fn now() -> Machine {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
        let total = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Machine {
            busy: total - idle,
            total,
        }
    }

    fn since(&self, messages: usize) -> CpuUse {
        let now = Machine::now();
        let of = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (busy, total) = (now.busy - self.busy, (now.total - self.total).max(1));
        CpuUse {
            cores: of as f64 * busy as f64 / total as f64,
            of,
            us_per_msg: busy as f64 / USER_HZ * 1e6 / messages as f64,
        }
    }
}

impl CpuUse {
    fn show(&self) -> String {
        format!(
            "{:.2} of {} cores busy, {:.2} µs/msg",
            self.cores, self.of, self.us_per_msg
        )
    }
}

/// A process's CPU time so far (user and system), in seconds, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    stat_secs(&format!("/proc/{pid}/stat"))
}

/// The same of a process's main thread: in `tiendo run`, the storer (it runs in the runtime's
/// `block_on`, the collector in a task on the workers), whose work is mostly in series with
/// Redis's. The Redis connection's own reading and writing run on the workers.
fn main_thread_secs(pid: u32) -> f64 {
    stat_secs(&format!("/proc/{pid}/task/{pid}/stat"))
}

/// User and system CPU seconds from a `stat` file of /proc.
fn stat_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // After the command name, in parentheses that may hold spaces: utime and stime are the
    // 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / USER_HZ
}

/// Resident memory of tiendo over a run, in MiB: at a quarter of the run, at its end, and
/// the most. Flat means the end is no higher than the quarter.
struct Rss {
    quarter: f64,
    end: f64,
    max: f64,
}

impl Rss {
    fn of(samples: &[f64]) -> Rss {
        Rss {
            quarter: samples.get(samples.len() / 4).copied().unwrap_or(0.0),
            end: samples.last().copied().unwrap_or(0.0),
            max: samples.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// A `tiendo run` child, configured through the environment as a deployment would be;
/// killed when dropped.
struct Tiendo(std::process::Child);

impl Tiendo {
    fn start(s: &Settings, group: &str) -> Tiendo {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
            .arg("run")
            .env("TIENDO_KAFKA__BROKERS", &s.kafka.brokers)
            .env("TIENDO_KAFKA__GROUP_ID", group)
            .env("TIENDO_KAFKA__TOPICS__RECORDS", &s.kafka.topics.records)
            .env(
                "TIENDO_KAFKA__TOPICS__PROCEDURES",
                &s.kafka.topics.procedures,
            )
            .env(
                "TIENDO_KAFKA__TOPICS__DEAD_LETTER",
                &s.kafka.topics.dead_letter,
            )
            .env("TIENDO_REDIS__URL", s.redis.url.expose())
            .env("TIENDO_HTTP__LISTEN", &s.http.listen)
            .env("TIENDO_LOG__FILTER", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("tiendo binary starts");
        Tiendo(child)
    }

    /// Resident set size in MiB.
    fn rss(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Tiendo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Event-to-Redis latency at `rate` messages per second for `secs`: each message from the
/// moment it is handed to the producer until Redis's stored offset for its partition passes
/// it (offsets read every 5 ms), and from the broker's acknowledgement of it. Returns both
/// lists of latencies in seconds, sorted.
async fn latency(base: &Settings, run: &str, rate: f64, secs: f64) -> (Vec<f64>, Vec<f64>) {
    let data = publish_data(base, run, "latency", false, 0).await;
    let redis = RedisServer::start().expect("redis-server");
    let mut settings = base.clone();
    settings.kafka.topics = data.topics.clone();
    settings.redis.url = Secret::new(redis.url());
    let reader = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        &settings.redis.key_prefix,
        settings.validation.datasets.clone(),
        1,
    );
    let _child = Tiendo::start(&settings, &format!("{run}-latency"));
    let producer = tiendo::source::producer(&base.kafka, "bench producer").unwrap();
    let mut g = Generator::new(13, &format!("{run}lat"), &base.validation.datasets);
    let parts = data.parts();
    let refs: Vec<(&str, i32)> = parts.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    // Wait until tiendo has joined and counts: one message, counted.
    let warm = publish(&producer, &data.topics, &[g.record(Utc::now())])
        .await
        .expect("publish");
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = reader.offsets(&refs).await.unwrap();
        let done = warm.iter().all(|((t, p), end)| {
            let i = parts.iter().position(|x| x.0 == *t && x.1 == *p).unwrap();
            stored[i].unwrap_or(0) >= *end
        });
        if done || Instant::now() > warm_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Publish at the rate in 10 ms ticks; note each message's (partition, offset, sent,
    // acked). Messages are encoded beforehand and handed to librdkafka without a task each,
    // so the publisher keeps the rate while tiendo, Redis and the broker share the machine.
    let ticks = (secs * 100.0) as usize;
    let per_tick = (rate / 100.0).max(1.0) as usize;
    let total = ticks * per_tick;
    // Each message's topic (0 records, 1 procedures), key and payload.
    let messages: Vec<(usize, String, Vec<u8>)> = (0..total)
        .map(|i| {
            let m = if i % 5 == 4 {
                g.procedure(Utc::now())
            } else {
                g.record(Utc::now())
            };
            let t = match m.kind() {
                tiendo::events::Kind::Records => 0,
                tiendo::events::Kind::Procedures => 1,
            };
            (t, m.key(), m.encode())
        })
        .collect();
    let (queued, mut acks) = tokio::sync::mpsc::unbounded_channel::<(
        usize,
        Instant,
        rdkafka::producer::DeliveryFuture,
    )>();
    let topics = [data.topics.records.clone(), data.topics.procedures.clone()];
    let publisher = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(10));
        for tick in messages.chunks(per_tick) {
            interval.tick().await;
            for (t, key, payload) in tick {
                let at = Instant::now();
                let mut record = rdkafka::producer::FutureRecord::to(&topics[*t])
                    .key(key)
                    .payload(payload);
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            let _ = queued.send((*t, at, delivery));
                            break;
                        }
                        // The producer's queue is full: its wait counts in the latency.
                        Err((_, back)) => {
                            record = back;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }
        }
        // Kept until every delivery is known: a producer dropped purges what is in flight.
        producer
    });
    // Where each topic's partitions begin in `parts` (records, then procedures).
    let first = [
        0,
        parts
            .iter()
            .take_while(|x| x.0 == data.topics.records)
            .count(),
    ];
    let sent = tokio::spawn(async move {
        use futures::StreamExt;
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut sent = Vec::<(usize, i64, Instant, Instant)>::new();
        let mut open = true;
        while open || !pending.is_empty() {
            tokio::select! {
                next = acks.recv(), if open => match next {
                    Some((t, at, delivery)) => pending.push(async move {
                        (t, at, delivery.await, Instant::now())
                    }),
                    None => open = false,
                },
                Some((t, at, delivered, acked)) = pending.next() => {
                    let (partition, offset) = delivered
                        .expect("not cancelled")
                        .map(|d| (d.partition, d.offset))
                        .map_err(|(e, _)| e)
                        .expect("delivered");
                    sent.push((first[t] + partition as usize, offset, at, acked));
                }
            }
        }
        sent
    });
    // Watch the stored offsets; a message is in Redis once its partition's offset passes it.
    let mut reached: Vec<Vec<Instant>> = vec![Vec::new(); parts.len()];
    let mut last = vec![0i64; parts.len()];
    let deadline = Instant::now() + Duration::from_secs_f64(secs + 60.0);
    loop {
        let stored = reader.offsets(&refs).await.unwrap();
        let now = Instant::now();
        for (i, s) in stored.iter().enumerate() {
            let s = s.unwrap_or(0);
            while last[i] < s {
                reached[i].push(now);
                last[i] += 1;
            }
        }
        if (publisher.is_finished() && total + warm.len() <= reached.iter().map(Vec::len).sum())
            || now > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _producer = publisher.await.expect("the publisher");
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    for (i, offset, at, acked) in sent.await.expect("acks").iter() {
        if let Some(r) = reached[*i].get(*offset as usize) {
            from_send.push(r.saturating_duration_since(*at).as_secs_f64());
            from_ack.push(r.saturating_duration_since(*acked).as_secs_f64());
        }
    }
    from_send.sort_by(f64::total_cmp);
    from_ack.sort_by(f64::total_cmp);
    (from_send, from_ack)
}
