//! `tiendo publish` as a registry without a Kafka producer uses it: a file published twice is
//! counted once (derived event ids), and a file with a bad row publishes nothing and says which
//! lines are wrong.

mod common;

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use common::Env;

fn publish(env: &Env, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .arg("publish")
        .args(args)
        .env("TIENDO_KAFKA__BROKERS", &env.settings.kafka.brokers)
        .output()
        .expect("tiendo runs")
}

fn file(text: &str, suffix: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(suffix).tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_published_twice_counts_once_and_a_bad_file_publishes_nothing() {
    let env = Env::start();
    let day = (chrono::Utc::now() - chrono::Duration::days(1))
        .with_timezone(&tiendo::clock::vn_offset())
        .format("%Y-%m-%d");
    // Ninh Thuận and Quảng Nam in the 63-unit table; the same batch twice in one file is
    // two events.
    let records = file(
        &format!(
            "# hộ tịch, from the provincial registry\n\
             event_id,province_code,code_scheme,dataset,record_count,occurred_at\n\
             ,58,63,civil_status,1200,{day} 09:00\n\
             ,58,63,civil_status,1200,{day} 09:00\n\
             ,49,63,civil_status,800,{day} 10:30\n\
             nt-2024-0001,58,63,land,30,{day} 11:00\n"
        ),
        ".csv",
    );
    let procedures = file(
        &format!(
            "{{\"province_code\":\"48\",\"code_scheme\":\"34\",\"procedure_code\":\"1.001\",\"channel\":\"online\",\"completed_at\":\"{day} 15:00\",\"on_time\":\"true\"}}\n\
             {{\"province_code\":\"48\",\"code_scheme\":\"34\",\"procedure_code\":\"1.002\",\"channel\":\"in_person\",\"completed_at\":\"{day} 16:00\",\"on_time\":\"false\"}}\n"
        ),
        ".jsonl",
    );
    for _ in 0..2 {
        let out = publish(
            &env,
            &["--kind", "records", records.path().to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = publish(
            &env,
            &["--kind", "procedures", procedures.path().to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A file with bad rows: each reported with its line, and nothing of it published.
    let before: i64 = env.watermarks().values().sum();
    let bad = file(
        &format!(
            "province_code,dataset,record_count,occurred_at\n\
             01,civil_status,10,{day}\n\
             99,civil_status,10,{day}\n\
             01,civil_status,0,{day}\n"
        ),
        ".csv",
    );
    let out = publish(&env, &["--kind", "records", bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 bad row(s)"), "{err}");
    assert!(err.contains("line 3: unknown_province"), "{err}");
    assert!(err.contains("line 4: zero_record_count"), "{err}");
    assert_eq!(
        env.watermarks().values().sum::<i64>(),
        before,
        "something was published"
    );

    let running = env.spawn().await;
    let snap = env.wait_consumed(Duration::from_secs(60)).await;
    running.shutdown().await;
    let total = |f: &str| snap.counts.get(f).map(|c| c.total).unwrap_or(0);
    assert_eq!(total("o58|r.civil_status"), 2400);
    assert_eq!(total("o49|r.civil_status"), 800);
    assert_eq!(total("o58|r.land"), 30);
    assert_eq!(total("n48|p.online.n"), 1);
    assert_eq!(total("n48|p.in_person.n"), 1);
    assert_eq!(total("n48|p.online.ot"), 1);
}
