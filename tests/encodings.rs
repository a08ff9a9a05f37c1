//! Upstream registries publish three ways (docs/publishing.md): plain protobuf, protobuf in
//! Confluent's Schema Registry frame, and the proto3 JSON mapping. Mixed on both topics, each
//! is counted exactly, a re-send in another encoding is counted once, and bad frames and bad
//! JSON land in the dead-letter topic with their reasons. The publishing guide's Python and
//! Rust examples are run against the test broker the same way.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Env, Expected};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tiendo::decode::Reason;
use tiendo::events::Kind;
use tiendo::generator::Generated;
use tiendo::wire;

/// A plain producer, built here rather than taken from tiendo.
fn producer(env: &Env) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", env.kafka.bootstrap_servers())
        .create()
        .expect("producer")
}

async fn send(p: &FutureProducer, env: &Env, kind: Kind, key: &str, value: &[u8]) {
    let topics = &env.settings.kafka.topics;
    let topic = match kind {
        Kind::Records => &topics.records,
        Kind::Procedures => &topics.procedures,
    };
    p.send(
        FutureRecord::to(topic).key(key).payload(value),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("delivered");
}

/// The three encodings of one message, by number.
fn encode(kind: Kind, plain: &[u8], encoding: usize) -> Vec<u8> {
    match encoding % 3 {
        0 => plain.to_vec(),
        1 => wire::frame(kind, 42, plain),
        _ => wire::to_json(kind, plain).expect("protobuf the generator wrote"),
    }
}

fn letters_by_reason(env: &Env) -> BTreeMap<String, i64> {
    let mut by_reason = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for l in env.letters() {
        // A letter sent twice (a batch retried) is one: the origin headers tell.
        if seen.insert((l.topic.clone(), l.partition.clone(), l.offset.clone())) {
            *by_reason.entry(l.reason.clone()).or_default() += 1;
        }
    }
    by_reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_encodings_mixed_on_both_topics_are_counted_exactly() {
    let env = Env::start();
    let mut g = env.generator(13);
    let now = chrono::Utc::now();
    let events = common::events(&mut g, 3000);
    let mut poison = Vec::new();
    for kind in [Kind::Records, Kind::Procedures] {
        for reason in Reason::ALL {
            for _ in 0..10 {
                poison.extend(g.poison_of(kind, reason, now));
            }
        }
    }
    let mut expected = Expected::default();
    expected.add_all(&events);
    expected.add_all(&poison);
    for reason in [
        "bad_frame",
        "wrong_message_index",
        "wrong_topic",
        "invalid_json",
    ] {
        assert_eq!(expected.dead[reason], 20, "{reason} on both topics");
    }

    let p = producer(&env);
    for (i, m) in events.iter().enumerate() {
        let plain = m.encode();
        send(&p, &env, m.kind(), &m.key(), &encode(m.kind(), &plain, i)).await;
        // Every tenth event is sent again in the next encoding: the same id, counted once.
        if i % 10 == 0 {
            send(
                &p,
                &env,
                m.kind(),
                &m.key(),
                &encode(m.kind(), &plain, i + 1),
            )
            .await;
        }
    }
    for (i, m) in poison.iter().enumerate() {
        let Generated::Poison { kind, bytes, .. } = m else {
            unreachable!()
        };
        // A message that fails validation fails it in every encoding; malformed bytes stay
        // as they are.
        let decodes = tiendo::decode::Validator::new(&env.settings.validation)
            .with_encodings(wire::Encoding::Protobuf, wire::Encoding::Protobuf)
            .decode(*kind, bytes, now.timestamp())
            .is_err_and(|r| {
                !matches!(
                    r.reason,
                    Reason::Undecodable
                        | Reason::BadFrame
                        | Reason::WrongMessageIndex
                        | Reason::WrongTopic
                        | Reason::InvalidJson
                )
            });
        let value = if decodes {
            encode(*kind, bytes, i)
        } else {
            bytes.clone()
        };
        send(&p, &env, *kind, "poison", &value).await;
    }
    // JSON as a registry writes it by hand: numbers as numbers, the time with its offset.
    let by_hand = format!(
        r#"{{"eventId":"by-hand-1","provinceCode":"56","codeScheme":"CODE_SCHEME_PROVINCES_34",
           "dataset":"land","recordCount":7,"occurredAt":"{}","sourceSystem":"dat-dai-kh"}}"#,
        (now - chrono::Duration::hours(1))
            .with_timezone(&tiendo::clock::vn_offset())
            .to_rfc3339()
    );
    send(&p, &env, Kind::Records, "56", by_hand.as_bytes()).await;
    *expected.totals.entry("n56|r.land".into()).or_default() += 7;

    let running = env.spawn().await;
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    running.shutdown().await;
    expected.assert_matches(&snap);
    assert_eq!(letters_by_reason(&env), expected.dead);
}

/// Where cargo put the examples of this build: beside the test binaries' directory.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("example starts");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishing_guides_python_and_rust_examples_are_counted_exactly() {
    let env = Env::start();
    let brokers = env.kafka.bootstrap_servers();
    let topics = env.settings.kafka.topics.clone();
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/python-examples");
    let n = 40;
    let publish = |program: &str, kind: &str, topic: &str, encoding: &str, prefix: &str| {
        let count = n.to_string();
        let args = [
            "--brokers",
            &brokers,
            "--topic",
            topic,
            "--kind",
            kind,
            "--encoding",
            encoding,
            "--count",
            &count,
            "--id-prefix",
            prefix,
        ];
        run(Command::new(program).args(args));
    };
    let rust = example("publish");
    let rust = rust.to_str().unwrap();
    for (kind, topic) in [
        ("records", &topics.records),
        ("procedures", &topics.procedures),
    ] {
        for encoding in ["protobuf", "confluent", "json"] {
            publish(python, kind, topic, encoding, &format!("py-{encoding}"));
        }
        // The same events again, as JSON this time: counted once.
        publish(python, kind, topic, "json", "py-protobuf");
        for encoding in ["protobuf", "confluent"] {
            publish(rust, kind, topic, encoding, &format!("rs-{encoding}"));
        }
    }

    let running = env.spawn().await;
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    running.shutdown().await;
    let got = common::totals(&snap);
    let each = 5 * n; // three Python encodings and two Rust ones
    let want: BTreeMap<String, i64> = [
        ("n56|r.civil_status", each),
        ("n56|p.online.n", each),
        ("n56|p.online.ot", each),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);
    assert!(snap.dead.is_empty(), "{:?}", snap.dead);
}

/// The JSON Schema files registries validate against are what the descriptors say today.
/// `TIENDO_WRITE_SCHEMAS=1 cargo test --release --test encodings json_schema` rewrites them.
#[test]
fn the_json_schema_files_are_generated_from_the_proto() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schema"));
    for kind in [Kind::Records, Kind::Procedures] {
        let path = dir.join(tiendo::jsonschema::file_name(kind));
        let generated =
            serde_json::to_string_pretty(&tiendo::jsonschema::schema(kind)).unwrap() + "\n";
        if std::env::var_os("TIENDO_WRITE_SCHEMAS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            generated,
            "{} is not what proto/ generates: run with TIENDO_WRITE_SCHEMAS=1",
            path.display()
        );
    }
}

/// A Schema Registry stand-in: schema ids 1 (events.proto), 2 (an Avro schema), 3 (protobuf
/// with another message first), 4 (a JSON schema), 5 (only ProcedureCompleted, so its index
/// `[0]` is that); any other id is not found. Counts the lookups per id.
async fn registry() -> (
    String,
    std::sync::Arc<std::sync::Mutex<BTreeMap<u32, usize>>>,
) {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    type Asked = std::sync::Arc<std::sync::Mutex<BTreeMap<u32, usize>>>;
    async fn schema(State(asked): State<Asked>, Path(id): Path<u32>) -> (StatusCode, String) {
        *asked.lock().unwrap().entry(id).or_default() += 1;
        let events = include_str!("../proto/tiendo/v1/events.proto");
        let body = match id {
            1 => serde_json::json!({"schemaType": "PROTOBUF", "schema": events}),
            2 => serde_json::json!({"schema": r#"{"type": "record", "name": "R", "fields": []}"#}),
            3 => serde_json::json!({"schemaType": "PROTOBUF",
                                     "schema": "syntax = \"proto3\"; message Weather { string s = 1; }"}),
            4 => serde_json::json!({"schemaType": "JSON", "schema": "{}"}),
            5 => serde_json::json!({"schemaType": "PROTOBUF",
                                     "schema": "syntax = \"proto3\"; package tiendo.v1; message ProcedureCompleted {}"}),
            _ => {
                let err = serde_json::json!({"error_code": 40403, "message": "Schema not found"});
                return (StatusCode::NOT_FOUND, err.to_string());
            }
        };
        (StatusCode::OK, body.to_string())
    }
    let asked = Asked::default();
    let app = axum::Router::new()
        .route("/schemas/ids/{id}", axum::routing::get(schema))
        .with_state(asked.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, asked)
}

/// What `tiendo run` counts of the topics with `kafka.schema_registry.url` set to `registry`.
async fn counted_by_the_binary(env: &Env, registry: &str) -> tiendo::store::Snapshot {
    let child = env
        .process_command()
        .env("TIENDO_KAFKA__SCHEMA_REGISTRY__URL", registry)
        .spawn()
        .unwrap();
    let mut child = common::Killed(child);
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    common::signal(&child.0, "TERM");
    child.0.wait().unwrap();
    snap
}

/// With `kafka.schema_registry.url`, the binary checks each frame's schema id against the
/// registry, once per id: frames of ids it does not know, of an Avro schema or of a schema
/// with another message at the frame's index are dead-lettered as `unknown_schema_id`; a
/// schema registered with ProcedureCompleted alone has it at index `[0]`, and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_are_checked_against_the_schema_registry_once_per_id() {
    let env = Env::start();
    let (url, asked) = registry().await;
    let mut g = env.generator(16);
    let p = producer(&env);
    let mut expected = Expected::default();
    // (schema id, kind, JSON in the frame, index array, counted or the reason)
    type Case<'a> = (u32, Kind, bool, &'a [u8], Option<&'a str>);
    let cases: [Case; 9] = [
        (1, Kind::Records, false, &[0], None),
        (1, Kind::Procedures, false, &[2, 2], None),
        (5, Kind::Procedures, false, &[0], None),
        (4, Kind::Records, true, &[], None),
        (2, Kind::Records, false, &[0], Some("unknown_schema_id")),
        (3, Kind::Records, false, &[0], Some("unknown_schema_id")),
        (99, Kind::Records, false, &[0], Some("unknown_schema_id")),
        (1, Kind::Records, true, &[], Some("unknown_schema_id")),
        (5, Kind::Records, false, &[0], Some("wrong_topic")),
    ];
    for (id, kind, json, indexes, outcome) in cases {
        for _ in 0..20 {
            let m = match kind {
                Kind::Records => g.record(chrono::Utc::now()),
                Kind::Procedures => g.procedure(chrono::Utc::now()),
            };
            let plain = m.encode();
            let mut value = vec![0];
            value.extend_from_slice(&id.to_be_bytes());
            if json {
                value.extend(wire::to_json(kind, &plain).unwrap());
            } else {
                value.extend_from_slice(indexes);
                value.extend_from_slice(&plain);
            }
            send(&p, &env, kind, &m.key(), &value).await;
            match outcome {
                None => expected.add_all(std::slice::from_ref(&m)),
                Some(reason) => *expected.dead.entry(reason.to_string()).or_default() += 1,
            }
        }
    }

    let snap = counted_by_the_binary(&env, &url).await;
    expected.assert_matches(&snap);
    assert_eq!(letters_by_reason(&env), expected.dead);
    let asked = asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (99, 1)]),
        "each id looked up once"
    );
}

/// A registry that cannot be reached refuses nothing: frames are judged by their bytes, as
/// without one, and every event is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_schema_registry_holds_and_refuses_nothing() {
    let env = Env::start();
    let closed = tiendo::embedded::free_port().unwrap();
    let mut g = env.generator(17);
    let events = common::events(&mut g, 200);
    let p = producer(&env);
    for m in &events {
        send(
            &p,
            &env,
            m.kind(),
            &m.key(),
            &wire::frame(m.kind(), 7, &m.encode()),
        )
        .await;
    }
    let mut expected = Expected::default();
    expected.add_all(&events);
    let snap = counted_by_the_binary(&env, &format!("http://127.0.0.1:{closed}")).await;
    expected.assert_matches(&snap);
    assert!(snap.dead.is_empty(), "{:?}", snap.dead);
}
