//! In-process core benchmark: decode, aggregate and store pre-encoded messages, through the
//! same `Batch` code the pipeline runs, into a private redis-server, with dedup on.
//! Prints events per second against the 300,000/s target, the Redis memory each event costs
//! (its dedup claim), and what one snapshot of every counter costs. Run: `cargo bench --bench
//! core`; EVENTS, BATCH, SPREAD_DAYS, RESENDS, AOF, FSYNC, HOLD and COMMANDSTATS change the
//! run.
//! Exits non-zero when Redis does not hold exactly what was stored: a fast wrong answer is
//! no result. WRONG_BY=n expects n records more than were stored, so that
//! `scripts/check-benches` can prove that exit.

use std::time::Instant;

use chrono::Utc;
use tiendo::config::Settings;
use tiendo::decode::Validator;
use tiendo::embedded::RedisServer;
use tiendo::events::Kind;
use tiendo::generator::Generated;
use tiendo::pipeline::{Batch, HeldCounters, Origin};
use tiendo::status::{Status, View};
use tiendo::store::{self, Applied, Store};
use tiendo::targets::Targets;

const TARGET: f64 = 300_000.0;
const PARTITIONS: i32 = 6;

/// CPU seconds this process has used, from /proc (user + system).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
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
    let events: usize = env_or("EVENTS", 1_000_000);
    // The pipeline's default batch size unless BATCH says otherwise.
    let batch_size: usize = env_or("BATCH", Settings::default().pipeline.batch_max_messages);
    // AOF on (everysec), as exactness across Redis crashes needs; AOF=no to compare.
    let aof: String = env_or("AOF", "yes".into());
    // FSYNC=always for the strictest durability (one fsync per event-loop pass that writes).
    let fsync: String = env_or("FSYNC", "everysec".into());
    let redis = RedisServer::start_with(&["--appendonly", &aof, "--appendfsync", &fsync])
        .expect("redis-server");
    let mut settings = Settings::default();
    settings.redis.url = tiendo::config::Secret::new(redis.url());
    let datasets = settings.validation.datasets.clone();
    let validator = Validator::new(&settings.validation);
    let store = Store::new(
        store::connect(&settings.redis).await.unwrap(),
        "bench",
        datasets.clone(),
        settings.pipeline.dedup_horizon.as_secs(),
    );

    // Pre-encode: records and procedures for every province, spread over partitions.
    let mut g = tiendo::generator::Generator::new(7, "bench", &datasets);
    let now = Utc::now();
    // What Redis must hold afterwards, from the events themselves (every id is new).
    let (mut expected_records, mut expected_procedures) = (0i64, 0i64);
    // SPREAD_DAYS=60 spreads event times over that many days back, as a backfill would.
    let spread_days: i64 = env_or("SPREAD_DAYS", 0);
    // RESENDS=0.03 sends that share of messages again (a copy of an earlier one, anywhere
    // before it), as the end-to-end bench does: the storer must find each one claimed and
    // count it once.
    let resends: f64 = env_or("RESENDS", 0.0);
    let mut rng = fastrand::Rng::with_seed(17);
    let mut messages: Vec<(Kind, i32, Vec<u8>)> = (0..events)
        .map(|i| {
            let at = now - chrono::Duration::seconds(rng.i64(0..=spread_days * 86_400));
            let m = if i % 5 == 4 {
                g.procedure(at)
            } else {
                g.record(at)
            };
            match &m {
                Generated::Record(r) => expected_records += r.record_count as i64,
                Generated::Procedure(_) => expected_procedures += 1,
                Generated::Poison { .. } => {}
            }
            // Partitioned by key (the province code), as producers do.
            let key = m.key();
            let partition = key
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % PARTITIONS as u32;
            let _ = i;
            (m.kind(), partition as i32, m.encode())
        })
        .collect();
    if resends > 0.0 {
        let mut with = Vec::with_capacity(messages.len() * 11 / 10);
        for m in messages {
            with.push(m);
            if rng.f64() < resends {
                with.push(with[rng.usize(..with.len())].clone());
            }
        }
        messages = with;
    }
    let bytes: usize = messages.iter().map(|m| m.2.len()).sum();
    let messages_sent = messages.len();
    let topics = ["records", "procedures"];
    let before = redis.used_memory().unwrap();

    let (redis_cpu_before, own_cpu_before) = (redis.used_cpu().unwrap(), own_cpu());
    let started = Instant::now();
    // As in the pipeline, decoding (and sealing) the next batch overlaps storing this one: a
    // decoder task hands finished batches over a channel of one.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Batch, i64)>(1);
    let decoder = tokio::task::spawn_blocking({
        let validator = validator.clone();
        let sealer = store.clone();
        move || {
            let mut offsets = [[0i64; PARTITIONS as usize]; 2];
            let mut decode_time = 0.0;
            for chunk in messages.chunks(batch_size) {
                let t0 = Instant::now();
                let now = Utc::now().timestamp();
                let mut batch = Batch::default();
                for (kind, partition, payload) in chunk {
                    let t = *kind as usize;
                    let offset = offsets[t][*partition as usize];
                    offsets[t][*partition as usize] += 1;
                    let from = Origin {
                        t,
                        kind: *kind,
                        topic: topics[t],
                        partition: *partition,
                        offset,
                        sent: None,
                    };
                    batch.push(from, None, payload, &validator, now);
                }
                batch.seal(&sealer, now);
                decode_time += t0.elapsed().as_secs_f64();
                if tx.blocking_send((batch, now)).is_err() {
                    break;
                }
            }
            decode_time
        }
    });
    let mut stored: [[Option<i64>; PARTITIONS as usize]; 2] = [[None; PARTITIONS as usize]; 2];
    // Counters held between batches, as the storer does; HOLD=0 reads them all every batch.
    let hold = env_or("HOLD", 1u8) != 0;
    let mut held = HeldCounters::new();
    let (mut store_time, mut most_held) = (0.0, 0);
    while let Some((mut batch, now)) = rx.recv().await {
        let t1 = Instant::now();
        batch.retain_parts(|p| {
            p.expected = stored[p.t][p.partition as usize];
            true
        });
        for (part, outcome) in batch.store(&store, &held, now).await.unwrap() {
            assert_eq!(outcome.applied, Applied::Stored);
            stored[part.t][part.partition as usize] = Some(part.next);
            held.keep(part, outcome.held.filter(|_| hold));
        }
        store_time += t1.elapsed().as_secs_f64();
        most_held = most_held.max(held.len());
    }
    let decode_time = decoder.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let redis_cpu = redis.used_cpu().unwrap() - redis_cpu_before;
    let own_cpu = own_cpu() - own_cpu_before;
    let after = redis.used_memory().unwrap();

    if std::env::var("COMMANDSTATS").is_ok() {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        println!("{stats}");
    }
    // What one read of every counter costs (the status page's and the evaluator's read).
    let (snapshot_started, snapshot_cpu_before) = (Instant::now(), redis.used_cpu().unwrap());
    let snap = store.snapshot(Utc::now()).await.unwrap();
    let snapshot_secs = snapshot_started.elapsed().as_secs_f64();
    let snapshot_redis = redis.used_cpu().unwrap() - snapshot_cpu_before;
    let status = Status::build(&snap, &Targets::default(), &datasets, View::Current34);
    let got_records: i64 = status.national.datasets.values().map(|d| d.total).sum();
    let got_procedures = status.national.procedures.completed;
    expected_records += env_or("WRONG_BY", 0i64);
    let exact = (got_records, got_procedures) == (expected_records, expected_procedures);
    let rate = events as f64 / elapsed;
    println!("tiendo core benchmark (decode + aggregate + Redis, dedup on, batch {batch_size}, appendonly {aof}, appendfsync {fsync}, event times over {spread_days} days, re-sends {resends})");
    println!(
        "  events            {events} in {} messages ({:.1} MiB encoded, {PARTITIONS} partitions x 2 topics)",
        messages_sent,
        bytes as f64 / 1048576.0
    );
    println!("  elapsed           {elapsed:.2} s (decode and seal {decode_time:.2} s overlapping claims+aggregate+store {store_time:.2} s)");
    println!("  throughput        {rate:.0} events/s");
    println!("  counters held     {most_held} at most between batches (HOLD=0: none)");
    println!(
        "  target            {TARGET:.0} events/s  ratio {:.2}",
        rate / TARGET
    );
    println!(
        "  cpu               tiendo {own_cpu:.2} s ({:.2} us/event), redis-server {redis_cpu:.2} s ({:.2} us/event)",
        own_cpu * 1e6 / events as f64,
        redis_cpu * 1e6 / events as f64
    );
    println!(
        "  redis memory      {:.1} MiB for {events} events: {:.0} bytes per event (dedup claims)",
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / events as f64
    );
    println!(
        "  one snapshot      {:.0} ms, of which Redis CPU {:.0} ms (every counter, all windows)",
        snapshot_secs * 1e3,
        snapshot_redis * 1e3
    );
    println!(
        "  exact             {} (records {got_records} of {expected_records}, procedures {got_procedures} of {expected_procedures})",
        if exact { "yes" } else { "NO" }
    );
    if !exact {
        eprintln!("core benchmark: the counts are wrong; its figures mean nothing");
        std::process::exit(1);
    }
}
