//! Stage 2a: how a message is encoded, before what it says is validated.
//!
//! Upstream registries publish the same two messages three ways (docs/publishing.md):
//! - plain protobuf, the bytes of `tiendo.v1.RecordDigitized` or `ProcedureCompleted`;
//! - protobuf framed for Confluent's Schema Registry: a magic byte 0, the schema id (4 bytes,
//!   big-endian), the message-index array (zig-zag varints: a count, then the path of the
//!   message in its .proto file; the single byte 0 stands for `[0]`), then the protobuf bytes.
//!   Confluent's JSON Schema serializer frames JSON the same way, without the index array;
//! - the proto3 JSON mapping (`{"eventId": …, "occurredAt": "2025-08-01T10:00:00+07:00"}`).
//!
//! Detection per message cannot guess wrong: a protobuf message never starts with 0x00 (field
//! number 0 does not exist), and never with `{` (0x7B is field 15 opening a group; field 15 is
//! reserved in both messages and groups are not used).

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde::{Deserialize, Serialize};

use crate::decode::{Reason, Rejected};
use crate::events::Kind;
use crate::registry::{Registry, Verdict};

/// How a topic's messages are encoded (`kafka.topics.records_encoding`, `procedures_encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Each message is recognised by its first byte: 0x00 a Confluent frame, `{` JSON, anything
    /// else plain protobuf.
    #[default]
    Auto,
    /// Plain or Confluent-framed protobuf only; JSON is dead-lettered.
    Protobuf,
    /// JSON only (leading whitespace allowed), plain or Confluent-framed.
    Json,
}

/// The bytes that carry the message, once any frame is taken off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    Protobuf(&'a [u8]),
    Json(&'a [u8]),
}

const MAGIC: u8 = 0;
/// Bytes before a frame's payload: the magic byte and the schema id.
const HEADER: usize = 5;
/// More nesting than this in a message index is not one of tiendo's messages.
const MAX_INDEXES: i64 = 8;

/// The message's position in `proto/tiendo/v1/events.proto`, the file registries register:
/// what a frame's message-index array must say.
fn message_index(kind: Kind) -> i64 {
    match kind {
        Kind::Records => 0,
        Kind::Procedures => 1,
    }
}

fn message_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Records => "tiendo.v1.RecordDigitized",
        Kind::Procedures => "tiendo.v1.ProcedureCompleted",
    }
}

fn reject<T>(reason: Reason, detail: impl Into<String>) -> Result<T, Rejected> {
    Err(Rejected {
        reason,
        detail: detail.into(),
        source: None,
    })
}

/// Takes any frame off `bytes`, checking it names the message `kind`'s topic carries.
pub fn unwrap<'a>(
    kind: Kind,
    encoding: Encoding,
    bytes: &'a [u8],
    registry: Option<&Registry>,
) -> Result<Body<'a>, Rejected> {
    let body = match bytes.first() {
        Some(&MAGIC) => unframe(kind, bytes, registry)?,
        Some(b'{') => Body::Json(bytes),
        _ if encoding == Encoding::Json => Body::Json(bytes),
        _ => Body::Protobuf(bytes),
    };
    match (encoding, body) {
        (Encoding::Protobuf, Body::Json(_)) => reject(
            Reason::Undecodable,
            "JSON on a topic configured for protobuf",
        ),
        (Encoding::Json, Body::Protobuf(_)) => reject(
            Reason::InvalidJson,
            "protobuf on a topic configured for JSON",
        ),
        _ => Ok(body),
    }
}

/// The schema id of a Schema Registry frame, if `bytes` is one.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [MAGIC, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn unframe<'a>(
    kind: Kind,
    bytes: &'a [u8],
    registry: Option<&Registry>,
) -> Result<Body<'a>, Rejected> {
    if bytes.len() < HEADER {
        return reject(
            Reason::BadFrame,
            format!(
                "{} bytes: a Schema Registry frame has a 5-byte header",
                bytes.len()
            ),
        );
    }
    let mut rest = &bytes[HEADER..];
    let verdict = registry.and_then(|r| r.verdict(schema_id(bytes).expect("a whole header")));
    if rest.first() == Some(&b'{') {
        return match verdict.as_deref() {
            Some(Verdict::Refused(why)) => reject(Reason::UnknownSchemaId, why.as_str()),
            Some(Verdict::Known { json: false, .. }) => reject(
                Reason::UnknownSchemaId,
                "JSON framed with the id of a protobuf schema",
            ),
            _ => Ok(Body::Json(rest)),
        };
    }
    let indexes = read_indexes(&mut rest)?;
    let path = |i: &[i64]| format!("{i:?}");
    // With the registry's word, the index means what the registered schema says; without
    // it, what events.proto says.
    match verdict.as_deref() {
        Some(Verdict::Refused(why)) => return reject(Reason::UnknownSchemaId, why.as_str()),
        Some(Verdict::Known { json: true, .. }) => {
            return reject(
                Reason::UnknownSchemaId,
                "protobuf framed with the id of a JSON schema",
            )
        }
        Some(Verdict::Known { messages, .. }) => {
            let id = schema_id(bytes).unwrap_or_default();
            let named = match indexes[..] {
                [i] => usize::try_from(i)
                    .ok()
                    .and_then(|i| messages.get(i))
                    .map(|m| m.rsplit('.').next().unwrap_or(m)),
                _ => None,
            };
            let other = kind.other();
            // By its simple name: a registry may hold the schema under another package.
            let simple = |k: Kind| message_name(k).rsplit('.').next().unwrap_or_default();
            return match named {
                Some(n) if n == simple(kind) => Ok(Body::Protobuf(rest)),
                Some(n) if n == simple(other) => reject(
                    Reason::WrongTopic,
                    format!(
                        "schema id {id} message {} is {n}, which belongs on the {} topic",
                        path(&indexes),
                        other.as_str()
                    ),
                ),
                Some(n) => reject(
                    Reason::UnknownSchemaId,
                    format!(
                        "schema id {id} message {} is {n}, not {}",
                        path(&indexes),
                        message_name(kind)
                    ),
                ),
                None => reject(
                    Reason::WrongMessageIndex,
                    format!("schema id {id} has no top-level message {}", path(&indexes)),
                ),
            };
        }
        None => {}
    }
    if indexes == [message_index(kind)] {
        return Ok(Body::Protobuf(rest));
    }
    let other = kind.other();
    if indexes == [message_index(other)] {
        return reject(
            Reason::WrongTopic,
            format!(
                "message index {} is {}, which belongs on the {} topic",
                path(&indexes),
                message_name(other),
                other.as_str()
            ),
        );
    }
    reject(
        Reason::WrongMessageIndex,
        format!(
            "message index {}; expected {} ({})",
            path(&indexes),
            path(&[message_index(kind)]),
            message_name(kind)
        ),
    )
}

/// Reads the message-index array; `[0]` may be written as the single count 0.
fn read_indexes(rest: &mut &[u8]) -> Result<Vec<i64>, Rejected> {
    let bad = |what: &str| Rejected {
        source: None,
        reason: Reason::BadFrame,
        detail: format!("message-index array: {what}"),
    };
    let count = zigzag(rest).ok_or_else(|| bad("truncated count"))?;
    if count == 0 {
        return Ok(vec![0]);
    }
    if !(1..=MAX_INDEXES).contains(&count) {
        return Err(bad(&format!("count {count}")));
    }
    (0..count)
        .map(|_| zigzag(rest).ok_or_else(|| bad("truncated index")))
        .collect()
}

fn zigzag(rest: &mut &[u8]) -> Option<i64> {
    let v = prost::encoding::decode_varint(rest).ok()?;
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

/// Writes a Confluent frame around `protobuf` for `kind` (tests, the fuzzer and `publish`).
pub fn frame(kind: Kind, schema_id: u32, protobuf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(protobuf.len() + HEADER + 2);
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    match message_index(kind) {
        0 => out.push(0),
        i => {
            prost::encoding::encode_varint(2, &mut out); // count 1, zig-zag
            prost::encoding::encode_varint((i as u64) << 1, &mut out);
        }
    }
    out.extend_from_slice(protobuf);
    out
}

/// The proto3 JSON mapping of `kind`'s message given as protobuf (tests, the fuzzer, docs).
pub fn to_json(kind: Kind, protobuf: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
    let message = DynamicMessage::decode(descriptor(kind), protobuf)?;
    Ok(serde_json::to_vec(&message).expect("a decoded message serializes"))
}

/// The descriptors of `proto/`, compiled in by build.rs.
pub fn descriptors() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..])
            .expect("build.rs wrote a valid descriptor set")
    })
}

pub fn descriptor(kind: Kind) -> MessageDescriptor {
    descriptors()
        .get_message_by_name(message_name(kind))
        .expect("the message is in proto/")
}

/// Reads the proto3 JSON mapping of `kind`'s message. Fields unknown to this build are
/// ignored, as protobuf ignores them, so a registry may send a newer schema's fields first;
/// but an unknown enum name is refused (ignoring it would read `codeScheme` as unset, and a
/// code in the wrong table), and a message whose fields are the other kind's is named for
/// what it is.
pub fn from_json<M: Message + Default>(kind: Kind, bytes: &[u8]) -> Result<M, Rejected> {
    let strict = |kind: Kind, value: &serde_json::Value| {
        DynamicMessage::deserialize(descriptor(kind), value)
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .or_else(|e| reject(Reason::InvalidJson, truncate(&e.to_string())))?;
    let message = match strict(kind, &value) {
        Ok(m) => m,
        Err(_) if strict(kind.other(), &value).is_ok() => {
            return reject(
                Reason::WrongTopic,
                format!(
                    "JSON fields of {}, which belongs on the {} topic",
                    message_name(kind.other()),
                    kind.other().as_str()
                ),
            )
        }
        Err(_) => strict(kind, &known_fields(kind, value))
            .or_else(|e| reject(Reason::InvalidJson, truncate(&e.to_string())))?,
    };
    message
        .transcode_to::<M>()
        .or_else(|e| reject(Reason::InvalidJson, e.to_string()))
}

/// The object without the keys `kind`'s message has no field for (by JSON or proto name).
fn known_fields(kind: Kind, value: serde_json::Value) -> serde_json::Value {
    let desc = descriptor(kind);
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(k, _)| {
                desc.get_field_by_json_name(k).is_some() || desc.get_field_by_name(k).is_some()
            })
            .collect(),
        other => other,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ProcedureCompleted, RecordDigitized};
    use crate::registry::top_level_messages;

    #[test]
    fn frames_are_read_from_the_documented_bytes() {
        // magic, schema id 7, index [0] as the single byte 0, then protobuf.
        let records = [0, 0, 0, 0, 7, 0, 0x0a, 0x01, b'x'];
        assert_eq!(
            unwrap(Kind::Records, Encoding::Auto, &records, None),
            Ok(Body::Protobuf(&[0x0a, 0x01, b'x'][..]))
        );
        // index [1]: count 1 (zig-zag 2), index 1 (zig-zag 2).
        let procedures = [0, 0, 0, 1, 0, 2, 2, 0x0a, 0x01, b'y'];
        assert_eq!(
            unwrap(Kind::Procedures, Encoding::Auto, &procedures, None),
            Ok(Body::Protobuf(&[0x0a, 0x01, b'y'][..]))
        );
        // The long form of [0] (count 1, index 0) is the same message.
        let long = [0, 0, 0, 0, 7, 2, 0, 0x0a, 0x01, b'x'];
        assert_eq!(
            unwrap(Kind::Records, Encoding::Auto, &long, None),
            Ok(Body::Protobuf(&[0x0a, 0x01, b'x'][..]))
        );
        assert_eq!(frame(Kind::Records, 7, &[0x0a, 0x01, b'x']), records);
        assert_eq!(
            frame(Kind::Procedures, 256, &[0x0a, 0x01, b'y']),
            procedures
        );
    }

    fn reason(kind: Kind, encoding: Encoding, bytes: &[u8]) -> Reason {
        unwrap(kind, encoding, bytes, None).unwrap_err().reason
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(
            reason(Kind::Records, Encoding::Auto, &[0, 0, 0]),
            Reason::BadFrame
        );
        assert_eq!(
            reason(Kind::Records, Encoding::Auto, &[0, 0, 0, 0, 1]),
            Reason::BadFrame
        );
        // count -1 (zig-zag 1)
        assert_eq!(
            reason(Kind::Records, Encoding::Auto, &[0, 0, 0, 0, 1, 1]),
            Reason::BadFrame
        );
        // count 1, then nothing
        assert_eq!(
            reason(Kind::Records, Encoding::Auto, &[0, 0, 0, 0, 1, 2]),
            Reason::BadFrame
        );
        assert_eq!(
            reason(Kind::Records, Encoding::Auto, &[0, 0, 0, 0, 1, 2, 2, 8]),
            Reason::WrongTopic
        );
        assert_eq!(
            reason(Kind::Procedures, Encoding::Auto, &[0, 0, 0, 0, 1, 0, 8]),
            Reason::WrongTopic
        );
        // [2] and the nested [0, 1]
        assert_eq!(
            reason(Kind::Records, Encoding::Auto, &[0, 0, 0, 0, 1, 2, 4, 8]),
            Reason::WrongMessageIndex
        );
        assert_eq!(
            reason(Kind::Records, Encoding::Auto, &[0, 0, 0, 0, 1, 4, 0, 2, 8]),
            Reason::WrongMessageIndex
        );
    }

    #[test]
    fn json_is_recognised_and_chosen_encodings_hold() {
        let json = br#"{"eventId":"a"}"#;
        assert_eq!(
            unwrap(Kind::Records, Encoding::Auto, json, None),
            Ok(Body::Json(json))
        );
        let framed = [&[0, 0, 0, 0, 3][..], json].concat();
        assert_eq!(
            unwrap(Kind::Records, Encoding::Auto, &framed, None),
            Ok(Body::Json(json))
        );
        let spaced = b"  {\"eventId\":\"a\"}";
        assert_eq!(
            unwrap(Kind::Records, Encoding::Json, spaced, None),
            Ok(Body::Json(spaced))
        );
        assert_eq!(
            reason(Kind::Records, Encoding::Protobuf, json),
            Reason::Undecodable
        );
        let protobuf = [0x0a, 0x01, b'x'];
        assert_eq!(
            unwrap(Kind::Records, Encoding::Json, &protobuf, None),
            Ok(Body::Json(&protobuf[..]))
        );
        let framed_protobuf = frame(Kind::Records, 1, &protobuf);
        assert_eq!(
            reason(Kind::Records, Encoding::Json, &framed_protobuf),
            Reason::InvalidJson
        );
    }

    #[test]
    fn json_reads_the_proto3_mapping() {
        let m: RecordDigitized = from_json(
            Kind::Records,
            br#"{"eventId":"e-1","provinceCode":"58","codeScheme":"CODE_SCHEME_PROVINCES_63",
                "dataset":"land","recordCount":"12","occurredAt":"2024-08-01T10:00:00+07:00",
                "sourceSystem":"dat-dai","futureField":1}"#,
        )
        .unwrap();
        assert_eq!(m.event_id, "e-1");
        assert_eq!(m.code_scheme, 1);
        assert_eq!(m.record_count, 12);
        assert_eq!(m.occurred_at.unwrap().seconds, 1_722_481_200);
        let p: ProcedureCompleted = from_json(
            Kind::Procedures,
            br#"{"event_id":"p-1","channel":1,"onTime":true}"#,
        )
        .unwrap();
        assert_eq!(
            (p.event_id.as_str(), p.channel, p.on_time),
            ("p-1", 1, true)
        );
    }

    #[test]
    fn bad_json_is_named() {
        let err = |kind, bytes: &[u8]| from_json::<RecordDigitized>(kind, bytes).unwrap_err();
        assert_eq!(err(Kind::Records, b"{").reason, Reason::InvalidJson);
        assert_eq!(
            err(Kind::Records, br#"{"recordCount":"x"}"#).reason,
            Reason::InvalidJson
        );
        assert_eq!(
            err(Kind::Records, br#"{"a":1} x"#).reason,
            Reason::InvalidJson
        );
        assert_eq!(
            err(
                Kind::Records,
                br#"{"eventId":"p","channel":"CHANNEL_IN_PERSON"}"#
            )
            .reason,
            Reason::WrongTopic
        );
    }

    #[test]
    fn the_registry_says_what_a_frames_index_means() {
        let registry = Registry::new(&crate::config::Secret::new("http://127.0.0.1:1"));
        let ours = top_level_messages(include_str!("../proto/tiendo/v1/events.proto"));
        registry.remember(
            1,
            Verdict::Known {
                json: false,
                messages: ours,
            },
        );
        registry.remember(2, Verdict::Refused("avro".into()));
        registry.remember(
            4,
            Verdict::Known {
                json: true,
                messages: Vec::new(),
            },
        );
        let alone = vec!["tiendo.v1.ProcedureCompleted".to_string()];
        registry.remember(
            5,
            Verdict::Known {
                json: false,
                messages: alone,
            },
        );
        let framed = |id: u32, indexes: &[u8], body: &[u8]| {
            let mut v = vec![MAGIC];
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(indexes);
            v.extend_from_slice(body);
            v
        };
        let judge =
            |kind: Kind, bytes: &[u8]| match unwrap(kind, Encoding::Auto, bytes, Some(&registry)) {
                Ok(Body::Protobuf(_)) => "protobuf".to_string(),
                Ok(Body::Json(_)) => "json".to_string(),
                Err(r) => r.reason.as_str().to_string(),
            };
        let body = [0x0a, 1, b'x'];
        assert_eq!(judge(Kind::Records, &framed(1, &[0], &body)), "protobuf");
        assert_eq!(
            judge(Kind::Procedures, &framed(1, &[2, 2], &body)),
            "protobuf"
        );
        assert_eq!(judge(Kind::Procedures, &framed(5, &[0], &body)), "protobuf");
        assert_eq!(judge(Kind::Records, &framed(5, &[0], &body)), "wrong_topic");
        assert_eq!(judge(Kind::Records, &framed(4, &[], b"{}")), "json");
        assert_eq!(
            judge(Kind::Records, &framed(1, &[], b"{}")),
            "unknown_schema_id"
        );
        assert_eq!(
            judge(Kind::Records, &framed(2, &[0], &body)),
            "unknown_schema_id"
        );
        assert_eq!(
            judge(Kind::Records, &framed(1, &[2, 4], &body)),
            "wrong_message_index"
        );
        // An id nothing was learnt of is judged by its bytes.
        assert_eq!(judge(Kind::Records, &framed(9, &[0], &body)), "protobuf");
    }
}
