//! Publishing tiendo events from Rust with rdkafka and prost: an example for registry
//! developers (docs/publishing.md), run by the test suite against its test broker.
//!
//! ```text
//! cargo run --release --example publish -- --brokers 127.0.0.1:9092 \
//!     --topic tiendo.record-digitized.v1 --encoding confluent --count 10
//! ```
//!
//! In your own crate, generate the message types from `proto/tiendo/v1/events.proto` with
//! prost-build (tiendo's `build.rs` shows how); here they come from tiendo itself.

use std::time::{Duration, SystemTime};

use clap::{Parser, ValueEnum};
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use tiendo::events::{Channel, CodeScheme, ProcedureCompleted, RecordDigitized};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long, value_enum, default_value = "records")]
    kind: Kind,
    #[arg(long, value_enum, default_value = "protobuf")]
    encoding: Encoding,
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Province code in the 34-unit table (56: Khánh Hòa).
    #[arg(long, default_value = "56")]
    province: String,
    #[arg(long, default_value = "civil_status")]
    dataset: String,
    #[arg(long, default_value = "hotich-bo-tu-phap")]
    source: String,
    /// Event ids are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "example")]
    id_prefix: String,
    /// For `--encoding confluent`: the id the Schema Registry gave events.proto.
    #[arg(long, default_value_t = 1)]
    schema_id: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Records,
    Procedures,
}

#[derive(Clone, Copy, ValueEnum)]
enum Encoding {
    /// The message's bytes alone.
    Protobuf,
    /// Framed as Confluent's serializers do: byte 0, the schema id (4 bytes, big-endian), the
    /// message-index array, then the message's bytes.
    Confluent,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        // No duplicates or reordering from the producer's own retries.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let now = prost_types::Timestamp::from(SystemTime::now());
    for i in 0..args.count {
        // A re-send of an event must carry the same id: tiendo counts it once.
        let event_id = format!("{}-{i}", args.id_prefix);
        let (bytes, index) = match args.kind {
            Kind::Records => (
                RecordDigitized {
                    event_id,
                    province_code: args.province.clone(),
                    code_scheme: CodeScheme::Provinces34 as i32,
                    dataset: args.dataset.clone(),
                    record_count: 1,
                    occurred_at: Some(now),
                    source_system: args.source.clone(),
                    ..Default::default()
                }
                .encode_to_vec(),
                0, // RecordDigitized is the first message of events.proto
            ),
            Kind::Procedures => (
                ProcedureCompleted {
                    event_id,
                    province_code: args.province.clone(),
                    code_scheme: CodeScheme::Provinces34 as i32,
                    channel: Channel::OnlineEndToEnd as i32,
                    completed_at: Some(now),
                    on_time: true,
                    source_system: args.source.clone(),
                    ..Default::default()
                }
                .encode_to_vec(),
                1, // ProcedureCompleted is the second
            ),
        };
        let value = match args.encoding {
            Encoding::Protobuf => bytes,
            Encoding::Confluent => confluent_frame(args.schema_id, index, &bytes),
        };
        // Keyed by province, so one province's events stay in order on one partition.
        let record = FutureRecord::to(&args.topic)
            .key(&args.province)
            .payload(&value);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
    }
    println!("published {}", args.count);
    Ok(())
}

/// The Schema Registry wire format for protobuf. The message-index array is zig-zag varints:
/// its length, then the message's path in the .proto file; `[0]` is shortened to one 0 byte.
fn confluent_frame(schema_id: u32, index: u64, message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&schema_id.to_be_bytes());
    if index == 0 {
        out.push(0);
    } else {
        prost::encoding::encode_varint(1 << 1, &mut out); // length 1
        prost::encoding::encode_varint(index << 1, &mut out);
    }
    out.extend_from_slice(message);
    out
}
