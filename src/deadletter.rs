//! Where bad input goes: the dead-letter topic, with the reason and the message's origin in
//! headers, payload untouched. Delivery is awaited before the batch's offsets are stored, so a
//! dead letter is never lost; after a crash it may be sent again, and the origin headers
//! (topic, partition, offset) identify such a repeat. Exact counts by reason live in Redis.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::decode::Reason;

/// A rejected message on its way to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub reason: Reason,
    pub detail: String,
}

pub const REASON_HEADER: &str = "tiendo.reason";
pub const DETAIL_HEADER: &str = "tiendo.detail";
pub const TOPIC_HEADER: &str = "tiendo.source.topic";
pub const PARTITION_HEADER: &str = "tiendo.source.partition";
pub const OFFSET_HEADER: &str = "tiendo.source.offset";

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: &str) -> DeadLetters {
        DeadLetters {
            producer,
            topic: topic.to_string(),
        }
    }

    /// Sends every letter and waits until Kafka has acknowledged all of them.
    pub async fn send(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        let sends = letters.iter().map(|l| {
            let partition = l.partition.to_string();
            let offset = l.offset.to_string();
            let headers = OwnedHeaders::new()
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
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .payload(&l.payload)
                .headers(headers);
            if let Some(key) = &l.key {
                record = record.key(key);
            }
            self.producer.send(record, Duration::from_secs(30))
        });
        for result in join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
        Ok(())
    }
}
