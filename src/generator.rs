//! A source of plausible events for the demo, the tests and the benchmarks: record batches and
//! completed procedures for every province, in the code table upstream systems would use, plus
//! the kinds of bad input the pipeline must dead-letter.

use chrono::{DateTime, Utc};
use futures::future::try_join_all;
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientContext;

use crate::config::TopicSettings;
use crate::decode::Reason;
use crate::events::{Channel, CodeScheme, Kind, ProcedureCompleted, RecordDigitized};
use crate::provinces::{provinces, Scheme};
use crate::wire;

/// One generated message.
#[derive(Debug, Clone, PartialEq)]
pub enum Generated {
    Record(RecordDigitized),
    Procedure(ProcedureCompleted),
    /// Bad bytes on a topic, and the reason tiendo must give.
    Poison {
        kind: Kind,
        bytes: Vec<u8>,
        reason: Reason,
    },
}

impl Generated {
    pub fn kind(&self) -> Kind {
        match self {
            Generated::Record(_) => Kind::Records,
            Generated::Procedure(_) => Kind::Procedures,
            Generated::Poison { kind, .. } => *kind,
        }
    }

    /// Messages are keyed by province so a province's events stay in order.
    pub fn key(&self) -> String {
        match self {
            Generated::Record(r) => r.province_code.clone(),
            Generated::Procedure(p) => p.province_code.clone(),
            Generated::Poison { .. } => "poison".into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Generated::Record(r) => r.encode_to_vec(),
            Generated::Procedure(p) => p.encode_to_vec(),
            Generated::Poison { bytes, .. } => bytes.clone(),
        }
    }
}

pub struct Generator {
    rng: fastrand::Rng,
    run: String,
    seq: u64,
    datasets: Vec<String>,
    legacy: Vec<u8>,
    current: Vec<u8>,
}

fn timestamp(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

impl Generator {
    /// `run` makes event ids unique across generator instances.
    pub fn new(seed: u64, run: &str, datasets: &[String]) -> Generator {
        let p = provinces();
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            run: run.to_string(),
            seq: 0,
            datasets: datasets.to_vec(),
            legacy: p.units(Scheme::Legacy63).map(|(u, _)| u.code).collect(),
            current: p.units(Scheme::Current34).map(|(u, _)| u.code).collect(),
        }
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{}-{:08}", self.run, self.seq)
    }

    /// A province code: after the merger, one event in five still carries a legacy code
    /// (systems not yet migrated), which the sender marks as such.
    fn province(&mut self, at: DateTime<Utc>) -> (String, CodeScheme) {
        let legacy = Scheme::in_force_at(at) == Scheme::Legacy63 || self.rng.u8(0..5) == 0;
        if legacy {
            let code = self.legacy[self.rng.usize(0..self.legacy.len())];
            (format!("{code:02}"), CodeScheme::Provinces63)
        } else {
            let code = self.current[self.rng.usize(0..self.current.len())];
            (format!("{code:02}"), CodeScheme::Provinces34)
        }
    }

    pub fn record(&mut self, at: DateTime<Utc>) -> Generated {
        let (province_code, scheme) = self.province(at);
        let dataset = self.datasets[self.rng.usize(0..self.datasets.len())].clone();
        let record_count = 1 + self.rng.u64(0..200);
        self.record_for(&province_code, scheme, &dataset, record_count, at)
    }

    pub fn record_for(
        &mut self,
        province_code: &str,
        scheme: CodeScheme,
        dataset: &str,
        record_count: u64,
        at: DateTime<Utc>,
    ) -> Generated {
        Generated::Record(RecordDigitized {
            event_id: self.next_id(),
            province_code: province_code.to_string(),
            code_scheme: scheme as i32,
            unit_code: String::new(),
            dataset: dataset.to_string(),
            record_count,
            occurred_at: timestamp(at),
            source_system: "tiendo-generator".into(),
        })
    }

    pub fn procedure(&mut self, at: DateTime<Utc>) -> Generated {
        let (province_code, scheme) = self.province(at);
        let channel = match self.rng.u8(0..10) {
            0..=6 => Channel::OnlineEndToEnd,
            7..=8 => Channel::PartlyOnline,
            _ => Channel::InPerson,
        };
        let submitted = at - chrono::Duration::hours(self.rng.i64(1..120));
        Generated::Procedure(ProcedureCompleted {
            event_id: self.next_id(),
            province_code,
            code_scheme: scheme as i32,
            procedure_code: format!("1.{:06}", self.rng.u32(0..1_000_000)),
            channel: channel as i32,
            submitted_at: timestamp(submitted),
            completed_at: timestamp(at),
            on_time: self.rng.u8(0..100) < 93,
            source_system: "tiendo-generator".into(),
        })
    }

    /// One of the kinds of bad input, on either topic.
    pub fn poison(&mut self, at: DateTime<Utc>) -> Generated {
        let good = self.record(at);
        let Generated::Record(mut r) = good else {
            unreachable!()
        };
        let (bytes, reason) = match self.rng.u8(0..6) {
            0 => (vec![0xff, 0xff, 0xff, 0x01], Reason::Undecodable),
            1 => {
                r.event_id.clear();
                (r.encode_to_vec(), Reason::MissingEventId)
            }
            2 => {
                r.province_code = "99".into();
                (r.encode_to_vec(), Reason::UnknownProvince)
            }
            3 => {
                r.dataset = "weather".into();
                (r.encode_to_vec(), Reason::UnknownDataset)
            }
            4 => {
                r.record_count = 0;
                (r.encode_to_vec(), Reason::ZeroRecordCount)
            }
            _ => {
                r.occurred_at = timestamp(at + chrono::Duration::days(30));
                (r.encode_to_vec(), Reason::FutureTime)
            }
        };
        Generated::Poison {
            kind: Kind::Records,
            bytes,
            reason,
        }
    }
}

impl Generator {
    /// Bad input of `reason` on the topic of `kind`, or `None` where that topic cannot have
    /// it (datasets and record counts are records' alone, channels procedures').
    pub fn poison_of(
        &mut self,
        kind: Kind,
        reason: Reason,
        at: DateTime<Utc>,
    ) -> Option<Generated> {
        let good = match kind {
            Kind::Records => self.record(at),
            Kind::Procedures => self.procedure(at),
        };
        let poison = |bytes: Vec<u8>| {
            Some(Generated::Poison {
                kind,
                bytes,
                reason,
            })
        };
        match reason {
            Reason::Undecodable => return poison(vec![0xff, 0xff, 0xff, 0x01]),
            Reason::BadFrame => return poison(vec![0, 0, 0]),
            // A Schema Registry frame naming message [2], which events.proto does not have.
            Reason::WrongMessageIndex => return poison(vec![0, 0, 0, 0, 1, 2, 4, 0x0a, 0]),
            Reason::WrongTopic => return poison(wire::frame(kind.other(), 1, &[0x0a, 1, b'x'])),
            Reason::InvalidJson => return poison(br#"{"eventId": "cut off"#.to_vec()),
            // Poison only where a Schema Registry is configured and does not know the id.
            Reason::UnknownSchemaId => return None,
            _ => {}
        }
        let later = timestamp(at + chrono::Duration::days(30));
        let ancient = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        });
        match good {
            Generated::Record(mut r) => {
                match reason {
                    Reason::MissingEventId => r.event_id.clear(),
                    Reason::MalformedEventId => r.event_id = "id with spaces".into(),
                    Reason::UnknownProvince => r.province_code = "99".into(),
                    Reason::UnknownCodeScheme => r.code_scheme = 9,
                    Reason::UnknownDataset => r.dataset = "weather".into(),
                    Reason::ZeroRecordCount => r.record_count = 0,
                    Reason::RecordCountTooLarge => r.record_count = u64::MAX,
                    Reason::MissingTime => r.occurred_at = None,
                    Reason::FutureTime => r.occurred_at = later,
                    Reason::BeforeProgramme => r.occurred_at = ancient,
                    _ => return None,
                }
                poison(r.encode_to_vec())
            }
            Generated::Procedure(mut p) => {
                match reason {
                    Reason::MissingEventId => p.event_id.clear(),
                    Reason::MalformedEventId => p.event_id = "id with spaces".into(),
                    Reason::UnknownProvince => p.province_code = "99".into(),
                    Reason::UnknownCodeScheme => p.code_scheme = 9,
                    Reason::UnknownChannel => p.channel = 42,
                    Reason::MissingTime => p.completed_at = None,
                    Reason::FutureTime => p.completed_at = later,
                    Reason::BeforeProgramme => p.completed_at = ancient,
                    _ => return None,
                }
                poison(p.encode_to_vec())
            }
            Generated::Poison { .. } => None,
        }
    }
}

/// Publishes messages and waits until Kafka has all of them; returns where they ended in each
/// partition.
pub async fn publish<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    topics: &TopicSettings,
    messages: &[Generated],
) -> Result<LogEnds, KafkaError> {
    let sends = messages.iter().map(|m| {
        let topic = match m.kind() {
            Kind::Records => &topics.records,
            Kind::Procedures => &topics.procedures,
        };
        let key = m.key();
        let payload = m.encode();
        async move {
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            let delivered = producer
                .send(record, std::time::Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)?;
            Ok::<_, KafkaError>(((topic.clone(), delivered.partition), delivered.offset + 1))
        }
    });
    let mut ends = LogEnds::new();
    for (partition, end) in try_join_all(sends).await? {
        let at = ends.entry(partition).or_default();
        *at = (*at).max(end);
    }
    Ok(ends)
}

/// Per topic and partition, the offset after the last message published: where a consumer
/// that has counted them all stands.
pub type LogEnds = std::collections::BTreeMap<(String, i32), i64>;
