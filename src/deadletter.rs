//! Where bad input goes: the dead-letter topic, with the reason and the message's origin in
//! headers, payload untouched. Delivery is awaited before the batch's offsets are stored, so a
//! dead letter is never lost; after a crash it may be sent again, and the origin headers
//! (topic, partition, offset) identify such a repeat. Exact counts by reason live in Redis.
//!
//! A letter too large for the dead-letter topic (its payload or key near the source topic's
//! limit, plus the headers; or a dead-letter topic with a lower limit) would be refused for
//! good and hold its partition forever: it is sent again with the payload cut to
//! [`TRUNCATED_TO`] bytes and the key to [`KEY_TRUNCATED_TO`], each cut one with a header
//! (`tiendo.payload.truncated`, `tiendo.key.truncated`) giving its original size.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::decode::Reason;
use crate::sources::Source;

/// A rejected message on its way to the dead-letter topic.
#[derive(Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub reason: Reason,
    pub detail: String,
    /// Who sent it, as far as it could be read.
    pub source: Source,
    /// When it was sent, as [`crate::decode::Event::sent`].
    pub sent: i64,
}

impl DeadLetter {
    /// The bytes of the message it keeps: payload and key.
    pub fn size(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len)
    }

    /// What is sent of its payload and key when they are cut to fit the topic.
    fn cut(&self) -> (&[u8], Option<&[u8]>) {
        let key = self.key.as_deref();
        (
            &self.payload[..self.payload.len().min(TRUNCATED_TO)],
            key.map(|k| &k[..k.len().min(KEY_TRUNCATED_TO)]),
        )
    }

    /// Whether cutting would make it smaller.
    fn can_be_cut(&self) -> bool {
        let (payload, key) = self.cut();
        payload.len() + key.map_or(0, <[u8]>::len) < self.size()
    }
}

pub const REASON_HEADER: &str = "tiendo.reason";
pub const DETAIL_HEADER: &str = "tiendo.detail";
pub const TOPIC_HEADER: &str = "tiendo.source.topic";
pub const PARTITION_HEADER: &str = "tiendo.source.partition";
pub const OFFSET_HEADER: &str = "tiendo.source.offset";
pub const TRUNCATED_HEADER: &str = "tiendo.payload.truncated";
pub const KEY_TRUNCATED_HEADER: &str = "tiendo.key.truncated";
/// What is kept of a payload too large for the dead-letter topic.
pub const TRUNCATED_TO: usize = 64 * 1024;
/// What is kept of a key then: a key names an event or a province, so a longer one is junk.
pub const KEY_TRUNCATED_TO: usize = 1024;

pub struct DeadLetters {
    producer: crate::source::Producer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: crate::source::Producer, topic: &str) -> DeadLetters {
        DeadLetters {
            producer,
            topic: topic.to_string(),
        }
    }

    /// Sends every letter and waits until Kafka has acknowledged all of them; a letter too
    /// large for the topic goes with its payload and key cut.
    pub async fn send(&self, letters: &[&DeadLetter]) -> Result<(), KafkaError> {
        let sends = letters.iter().map(|l| self.send_one(l, false));
        let mut too_large = Vec::new();
        for (l, result) in letters.iter().zip(join_all(sends).await) {
            match result {
                Ok(()) => {}
                Err(e) if is_too_large(&e) && l.can_be_cut() => too_large.push(l),
                Err(e) => return Err(e),
            }
        }
        for l in too_large {
            tracing::warn!(
                topic = l.topic,
                partition = l.partition,
                offset = l.offset,
                bytes = l.payload.len(),
                key_bytes = l.key.as_ref().map_or(0, Vec::len),
                "dead letter too large for its topic: payload cut to {TRUNCATED_TO} bytes, \
                 key to {KEY_TRUNCATED_TO}"
            );
            self.send_one(l, true).await?;
        }
        Ok(())
    }

    async fn send_one(&self, l: &DeadLetter, cut: bool) -> Result<(), KafkaError> {
        let partition = l.partition.to_string();
        let offset = l.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: REASON_HEADER,
                value: Some(l.reason.as_str()),
            })
            .insert(Header {
                key: DETAIL_HEADER,
                value: Some(l.detail.as_str()),
            })
            .insert(Header {
                key: TOPIC_HEADER,
                value: Some(l.topic.as_str()),
            })
            .insert(Header {
                key: PARTITION_HEADER,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: OFFSET_HEADER,
                value: Some(offset.as_str()),
            });
        let (payload, key) = if cut {
            l.cut()
        } else {
            (&l.payload[..], l.key.as_deref())
        };
        // The headers' values are copied in, so the sizes need only live this long.
        if payload.len() < l.payload.len() {
            let size = l.payload.len().to_string();
            headers = headers.insert(Header {
                key: TRUNCATED_HEADER,
                value: Some(size.as_str()),
            });
        }
        if key.map(<[u8]>::len) < l.key.as_ref().map(Vec::len) {
            let key_size = l.key.as_ref().map_or(0, Vec::len).to_string();
            headers = headers.insert(Header {
                key: KEY_TRUNCATED_HEADER,
                value: Some(key_size.as_str()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// Refused for its size, by the producer or the broker: no retry will help.
fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}
