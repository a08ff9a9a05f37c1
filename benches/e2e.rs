//! End-to-end benchmark through a real Kafka-protocol broker (Tansu; see `scripts/bench`):
//! publish pre-encoded events, then time a consume-only baseline and the tiendo pipeline on
//! the same broker and data, in the same run. Completion is checked by counting (Tansu's high
//! watermarks under-report): the baseline counts messages, tiendo's Redis totals must equal
//! what was published, or the benchmark exits non-zero. Needs TIENDO_BENCH_BROKERS=host:port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use tiendo::clock::SystemClock;
use tiendo::config::{Secret, Settings};
use tiendo::embedded::RedisServer;
use tiendo::generator::{publish, Generated, Generator};
use tiendo::pipeline::Pipeline;
use tiendo::status::{Status, View};
use tiendo::store::{self, Store};
use tiendo::targets::Targets;

const TARGET_RATIO: f64 = 0.8;

#[tokio::main]
async fn main() {
    let Ok(brokers) = std::env::var("TIENDO_BENCH_BROKERS") else {
        eprintln!("e2e bench skipped: set TIENDO_BENCH_BROKERS (scripts/bench starts Tansu)");
        return;
    };
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let run = format!("b{}", std::process::id());
    let redis = RedisServer::start().expect("redis-server");
    let mut settings = Settings::default();
    settings.kafka.brokers = brokers.clone();
    settings.kafka.group_id = format!("{run}-tiendo");
    settings.kafka.topics.records = format!("{run}.records");
    settings.kafka.topics.procedures = format!("{run}.procedures");
    settings.kafka.topics.dead_letter = format!("{run}.dlq");
    settings.redis.url = Secret::new(redis.url());
    settings.http.listen = String::new();
    let settings = settings.validated().unwrap();
    let topics = settings.kafka.topics.clone();

    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let new = [
        NewTopic::new(&topics.records, 6, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.procedures, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&topics.dead_letter, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.expect("topic created");
    }

    // Publish: what was sent is what must be counted.
    let datasets = settings.validation.datasets.clone();
    let mut g = Generator::new(11, &run, &datasets);
    let now = Utc::now();
    let messages: Vec<Generated> = (0..events)
        .map(|i| {
            if i % 5 == 4 {
                g.procedure(now)
            } else {
                g.record(now)
            }
        })
        .collect();
    let records: i64 = messages
        .iter()
        .map(|m| match m {
            Generated::Record(r) => r.record_count as i64,
            _ => 0,
        })
        .sum();
    let procedures = messages
        .iter()
        .filter(|m| matches!(m, Generated::Procedure(_)))
        .count() as i64;
    let producer = tiendo::source::producer(&settings.kafka).unwrap();
    let t = Instant::now();
    for chunk in messages.chunks(10_000) {
        publish(&producer, &topics, chunk).await.expect("publish");
    }
    let publish_secs = t.elapsed().as_secs_f64();
    drop(messages);

    // Baseline: consume only, count messages.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{run}-baseline"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&topics.records, &topics.procedures])
        .unwrap();
    let t = Instant::now();
    let mut seen = 0usize;
    while seen < events {
        match tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await {
            Ok(Ok(_)) => seen += 1,
            Ok(Err(e)) => eprintln!("baseline consume error: {e}"),
            Err(_) => panic!("baseline stalled at {seen} of {events}"),
        }
    }
    let baseline_secs = t.elapsed().as_secs_f64();
    drop(consumer);

    // tiendo: the real pipeline, until Redis holds exactly what was published.
    let reader = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        &settings.redis.key_prefix,
        datasets.clone(),
        1,
    );
    let pipeline = Pipeline::new(&settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let t = Instant::now();
    let task = tokio::spawn(pipeline.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    let (got_records, got_procedures) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
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
        if got == (records, procedures) || Instant::now() > deadline {
            break got;
        }
    };
    let tiendo_secs = t.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;

    let baseline = events as f64 / baseline_secs;
    let tiendo = events as f64 / tiendo_secs;
    println!(
        "tiendo end-to-end benchmark through Tansu at {brokers} ({events} events, 9 partitions)"
    );
    println!(
        "  publish           {:.0} events/s",
        events as f64 / publish_secs
    );
    println!(
        "  consume only      {baseline:.0} events/s ({baseline_secs:.2} s, group join included)"
    );
    println!("  tiendo            {tiendo:.0} events/s ({tiendo_secs:.2} s, group join included)");
    println!(
        "  ratio             {:.2} (target {TARGET_RATIO})",
        tiendo / baseline
    );
    println!(
        "  exact             {} (records {got_records} of {records}, procedures {got_procedures} of {procedures})",
        if (got_records, got_procedures) == (records, procedures) { "yes" } else { "NO" }
    );
    if (got_records, got_procedures) != (records, procedures) {
        eprintln!("end-to-end benchmark: the counts are wrong; its figures mean nothing");
        std::process::exit(1);
    }
}
