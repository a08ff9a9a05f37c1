//! Security in a run: `tiendo run` against a Redis that wants a password and TLS with client
//! certificates from a private CA (generated here with openssl), and against a Kafka broker
//! (Tansu) that wants a SASL/SCRAM login over TLS (SASL_SSL), each configured through the
//! environment as a deployment would. Counts are exact, and no secret appears in any log line,
//! at `debug` level, librdkafka's own debug lines (its configuration dump) included.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tansu::Login;
use common::tls::Certificates;
use common::{events, Env, Expected};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use tiendo::config::{RedisSettings, Secret};
use tiendo::store::{self, Store};

const PASSWORD: &str = "r3dis-pa55word-never-logged";
/// A Kafka client secret: the mock broker has no SASL, but librdkafka holds the property and
/// prints its configuration at debug level.
const KAFKA_SECRET: &str = "k4fka-pa55word-never-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password_and_tls_counts_exactly_and_never_logs_a_secret() {
    let env = Env::start();
    let certs = Certificates::new();
    let d = certs.dir();
    let port = tiendo::embedded::free_port().unwrap();
    let redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "yes"])
        .args([
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .arg("--dir")
        .arg(d)
        .current_dir(d)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    let _redis = common::Killed(redis);
    let url = format!("rediss://:{PASSWORD}@localhost:{port}");
    let path = |f: &str| d.join(f).to_string_lossy().to_string();
    let settings = RedisSettings {
        url: Secret::new(url.clone()),
        tls_ca_file: Some(d.join("ca.pem")),
        tls_cert_file: Some(d.join("client.pem")),
        tls_key_file: Some(d.join("client.key")),
        ..RedisSettings::default()
    };
    // Plain TCP, or TLS without the client certificate, gets nowhere.
    let no_client_cert = RedisSettings {
        tls_cert_file: None,
        tls_key_file: None,
        ..settings.clone()
    };
    let reader = Store::new(
        store::connect(&settings).await.unwrap(),
        "tiendo",
        env.settings.validation.datasets.clone(),
        1,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = reader.snapshot(chrono::Utc::now()).await {
        assert!(Instant::now() < deadline, "TLS Redis never answered: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = Store::new(
        store::connect(&no_client_cert).await.unwrap(),
        "tiendo",
        vec!["land".into()],
        1,
    );
    assert!(refused.snapshot(chrono::Utc::now()).await.is_err());
    // Plain TCP to the TLS port, with the right password.
    let plain = RedisSettings {
        url: Secret::new(format!("redis://:{PASSWORD}@localhost:{port}")),
        ..RedisSettings::default()
    };
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let conn = store::connect(&plain).await.ok()?;
        let store = Store::new(conn, "tiendo", vec!["land".into()], 1);
        store.snapshot(chrono::Utc::now()).await.ok()
    })
    .await;
    assert!(
        !matches!(answered, Ok(Some(_))),
        "plain TCP read from the TLS port"
    );

    let mut g = env.generator(31);
    let stream = events(&mut g, 2000);
    let mut expected = Expected::default();
    expected.add_all(&stream);
    env.publish(&stream).await;

    let log = d.join("tiendo.log");
    let mut tiendo = env
        .process_command()
        .env("TIENDO_REDIS__URL", &url)
        .env("TIENDO_REDIS__TLS_CA_FILE", path("ca.pem"))
        .env("TIENDO_REDIS__TLS_CERT_FILE", path("client.pem"))
        .env("TIENDO_REDIS__TLS_KEY_FILE", path("client.key"))
        .env("TIENDO_LOG__FILTER", "debug")
        .env("TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD", KAFKA_SECRET)
        .env("TIENDO_KAFKA__PROPERTIES__DEBUG", "conf,cgrp")
        .stdout(log_file(&log))
        .stderr(log_file(&log))
        .spawn()
        .map(common::Killed)
        .unwrap();

    let marks = env.watermarks();
    let deadline = Instant::now() + Duration::from_secs(120);
    let snap = loop {
        if let Ok(snap) = reader.snapshot(chrono::Utc::now()).await {
            if marks
                .iter()
                .all(|(tag, high)| snap.offsets.get(tag).is_some_and(|o| o >= high))
            {
                break snap;
            }
        }
        assert!(Instant::now() < deadline, "not counted through TLS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    send_signal(tiendo.id(), "TERM");
    let _ = tiendo.wait();
    expected.assert_matches(&snap);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG"), "debug logging was on:\n{text}");
    assert!(text.contains("tiendo starting"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "a log written to a file carries no colour codes:\n{text}"
    );
    assert!(
        text.contains("rediss://***@localhost"),
        "the URL shows redacted:\n{text}"
    );
    assert!(!text.contains(PASSWORD), "the Redis password was logged");
    assert!(
        text.contains("sasl.password = [redacted]"),
        "librdkafka's debug lines (its configuration) reach the log:\n{text}"
    );
    assert!(
        !text.contains(KAFKA_SECRET),
        "the Kafka password was logged"
    );
}

const SASL_PASSWORD: &str = "sc4am-pa55word-never-logged";
const WRONG_PASSWORD: &str = "wr0ng-pa55word-never-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_with_a_sasl_login_over_tls_counts_exactly_and_never_logs_a_secret() {
    let login = Login {
        user: "tiendo",
        password: SASL_PASSWORD,
    };
    let env = Env::start_tansu_with_login(&login);
    let topics = env.settings.kafka.topics.clone();
    let dir = tempfile::tempdir().unwrap();

    // The broker is shut to a client without TLS, to one that does not trust its CA, and to
    // one without the login.
    let other_ca = Certificates::new();
    let refused = |name: &str, client: &mut rdkafka::ClientConfig| {
        let client: BaseConsumer = client.create().unwrap();
        assert!(
            client
                .fetch_watermarks(&topics.records, 0, Duration::from_secs(3))
                .is_err(),
            "the broker answered a client {name}"
        );
    };
    refused(
        "without TLS",
        env.client().set("security.protocol", "SASL_PLAINTEXT"),
    );
    refused(
        "trusting another CA",
        env.client()
            .set("ssl.ca.location", other_ca.path("ca.pem").to_string_lossy()),
    );
    refused(
        "that did not log in",
        env.client().set("security.protocol", "SSL"),
    );

    // Valid events and one undecodable message, from a plain producer that logs in.
    let mut g = env.generator(41);
    let stream = events(&mut g, 2000);
    let mut expected = Expected::default();
    expected.add_all(&stream);
    let producer = env.independent_producer();
    common::send_all(&producer, &topics, &stream).await;
    producer
        .send(
            FutureRecord::to(&topics.records)
                .key("x")
                .payload(&b"\xff not protobuf"[..]),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("poison delivered");
    expected.dead.insert("undecodable".into(), 1);

    // A wrong password: the log says so, and nothing is counted.
    let wrong_log = dir.path().join("wrong.log");
    let mut wrong = env
        .process_command()
        .env("TIENDO_KAFKA__PROPERTIES__SASL_PASSWORD", WRONG_PASSWORD)
        .env("TIENDO_LOG__FILTER", "debug")
        .stdout(log_file(&wrong_log))
        .stderr(log_file(&wrong_log))
        .spawn()
        .map(common::Killed)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&wrong_log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("SASL authentication"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a refused login was never logged as an error:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send_signal(wrong.id(), "TERM");
    let _ = wrong.wait();
    // The whole log, its lines up to the exit included.
    let refused = std::fs::read_to_string(&wrong_log).unwrap();
    assert!(
        env.snapshot().await.counts.is_empty(),
        "counted without a login"
    );

    // The right password, at debug level with librdkafka's own security and configuration
    // lines: everything counted, the poison dead-lettered through the same login.
    let log = dir.path().join("tiendo.log");
    let mut tiendo = env
        .process_command()
        .env("TIENDO_LOG__FILTER", "debug,librdkafka=debug")
        .env("TIENDO_KAFKA__PROPERTIES__DEBUG", "security,conf")
        .stdout(log_file(&log))
        .stderr(log_file(&log))
        .spawn()
        .map(common::Killed)
        .unwrap();
    let snap = env.wait_counted(Duration::from_secs(120)).await;
    expected.assert_matches(&snap);
    let letters = env.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0, "undecodable");
    send_signal(tiendo.id(), "TERM");
    let _ = tiendo.wait();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("SCRAM-SHA-512"),
        "librdkafka's security lines reach the log:\n{text}"
    );
    assert!(
        text.contains("sasl.password = [redacted]"),
        "librdkafka's configuration reaches the log:\n{text}"
    );
    for (name, log) in [("refused", &refused), ("logged-in", &text)] {
        assert!(
            !log.contains(SASL_PASSWORD),
            "the password in the {name} log"
        );
        assert!(
            !log.contains(WRONG_PASSWORD),
            "the wrong password in the {name} log"
        );
    }
}

/// `path` opened for appending (created if missing): stdout and stderr share one log.
fn log_file(path: &Path) -> std::fs::File {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Sends a signal by name with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}
