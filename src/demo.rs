//! `tiendo demo`: everything on one machine with nothing installed by hand but
//! `redis-server`. An in-process Kafka (librdkafka's mock cluster), a private Redis, a
//! generator publishing events for every province (with some re-sends and some bad input), the
//! real pipeline, and a live progress table. At the end it checks the counts against what was
//! published.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Settings;
use crate::embedded::{MockKafka, RedisServer};
use crate::generator::{publish, Generated, Generator};
use crate::pipeline::Pipeline;
use crate::status::{Status, View};
use crate::store::{self, Store};
use crate::targets::Targets;
use crate::telemetry;

/// Targets for the demo's provinces (also the example file in deploy/).
const DEMO_TARGETS: &str = include_str!("../deploy/targets.example.csv");

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Events published per second.
    pub rate: u32,
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    pub view: View,
    /// HTTP server of the demo (status page, metrics); empty for none.
    pub http_listen: String,
}

/// What the generator sent, to check the counters against.
#[derive(Debug, Default)]
struct Sent {
    records: i64,
    procedures: i64,
    resent: u64,
    poison: u64,
}

pub async fn demo(options: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let mut settings = Settings::default();
    let topics = settings.kafka.topics.clone();
    let kafka = MockKafka::start(&[
        (&topics.records, 6),
        (&topics.procedures, 3),
        (&topics.dead_letter, 1),
        (&topics.alerts, 1),
    ])?;
    settings.kafka.brokers = kafka.bootstrap_servers();
    settings.redis.url = crate::config::Secret::new(redis.url());
    settings.pipeline.batch_linger = Duration::from_millis(200);
    let settings = settings.validated()?;
    let metrics = match telemetry::install_prometheus() {
        Ok(h) => Some(h),
        Err(error) => {
            tracing::warn!(%error, "metrics not recorded");
            None
        }
    };
    let datasets = settings.validation.datasets.clone();
    let targets = Targets::parse(DEMO_TARGETS, &datasets)?;
    println!(
        "tiendo demo: Kafka (in-process) at {}, Redis at {}, {} events/s. Ctrl-C to stop.",
        settings.kafka.brokers,
        redis.url(),
        options.rate
    );

    let clock: SharedClock = Arc::new(SystemClock);
    let pipeline = Pipeline::new(&settings, clock.clone()).await?;
    let stop_pipeline = CancellationToken::new();
    let mut side_tasks = Vec::new();
    if !options.http_listen.is_empty() {
        let state = crate::run::app_state(
            &settings,
            targets.clone(),
            clock.clone(),
            metrics,
            Some(pipeline.assignment()),
        )
        .await?;
        let (addr, task) =
            crate::serve::serve(&options.http_listen, state, stop_pipeline.clone()).await?;
        println!("status page: http://{addr}/   metrics: http://{addr}/metrics");
        side_tasks.push(task);
    }
    side_tasks.extend(
        crate::run::spawn_alerting(
            &settings,
            targets.clone(),
            clock.clone(),
            stop_pipeline.clone(),
        )
        .await?,
    );
    let consumer = tokio::spawn(pipeline.run(stop_pipeline.clone()));

    let producer = crate::source::producer(&settings.kafka)?;
    let reader = Store::new(
        store::connect(&settings.redis).await?,
        &settings.redis.key_prefix,
        datasets.clone(),
        1,
    );
    let mut generator = Generator::new(
        Utc::now().timestamp_millis() as u64,
        &format!("demo{}", std::process::id()),
        &datasets,
    );
    let mut sent = Sent::default();
    let mut previous: Vec<Generated> = Vec::new();
    let tick = Duration::from_millis(100);
    let per_tick = (options.rate as usize / 10).max(1);
    let started = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(tick);
    let mut last_draw = tokio::time::Instant::now();
    let tty = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if options.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let now = clock.now();
        let mut batch = Vec::with_capacity(per_tick + 2);
        for _ in 0..per_tick {
            let m = if fastrand::u8(0..4) == 0 {
                generator.procedure(now)
            } else {
                generator.record(now)
            };
            count(&mut sent, &m);
            batch.push(m);
        }
        // Upstream re-sends now and then (counted once) and some bad input (dead-lettered).
        if let Some(again) = previous.first().cloned() {
            sent.resent += 1;
            batch.push(again);
        }
        if fastrand::u8(0..50) == 0 {
            sent.poison += 1;
            batch.push(generator.poison(now));
        }
        publish(&producer, &settings.kafka.topics, &batch).await?;
        previous = batch;
        if last_draw.elapsed() >= Duration::from_secs(2) {
            last_draw = tokio::time::Instant::now();
            if let Ok(snap) = reader.snapshot(clock.now()).await {
                draw(
                    &Status::build(&snap, &targets, &datasets, options.view),
                    tty,
                );
            }
        }
    }

    println!("stopping: waiting for the pipeline to count everything published…");
    let settle = tokio::time::Instant::now() + Duration::from_secs(60);
    let snap = loop {
        let snap = reader.snapshot(clock.now()).await?;
        let status = Status::build(&snap, &targets, &datasets, options.view);
        let records: i64 = status.national.datasets.values().map(|d| d.total).sum();
        if (records == sent.records && status.national.procedures.completed == sent.procedures)
            || tokio::time::Instant::now() > settle
            || (shutdown.is_cancelled()
                && options.duration.is_none()
                && tokio::time::Instant::now() > settle - Duration::from_secs(50))
        {
            break snap;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop_pipeline.cancel();
    let _ = consumer.await;
    for task in side_tasks {
        let _ = task.await;
    }
    let status = Status::build(&snap, &targets, &datasets, options.view);
    draw(&status, false);
    let records: i64 = status.national.datasets.values().map(|d| d.total).sum();
    println!(
        "published {} records in unique events, {} procedures, {} re-sent events, {} bad messages",
        sent.records, sent.procedures, sent.resent, sent.poison
    );
    println!(
        "counted   {} records, {} procedures, {} dead letters: {}",
        records,
        status.national.procedures.completed,
        snap.dead.values().sum::<i64>(),
        if records == sent.records && status.national.procedures.completed == sent.procedures {
            "exact"
        } else {
            "NOT EXACT (still catching up?)"
        }
    );
    drop(kafka);
    drop(redis);
    Ok(())
}

fn count(sent: &mut Sent, m: &Generated) {
    match m {
        Generated::Record(r) => sent.records += r.record_count as i64,
        Generated::Procedure(_) => sent.procedures += 1,
        Generated::Poison { .. } => sent.poison += 1,
    }
}

fn draw(status: &Status, clear: bool) {
    if clear {
        print!("\x1b[2J\x1b[H");
    }
    println!("{}", status.table());
}
