//! Stage 2: bytes from Kafka become validated events, or a dead-letter reason.
//!
//! A bad event is data, not an error: `decode` never fails the batch, it returns
//! [`Rejected`] and the pipeline routes the message to the dead-letter topic.

use std::cell::RefCell;
use std::thread::LocalKey;

use chrono::{DateTime, TimeZone, Utc};
use prost::Message;

use crate::clock::vn_offset;
use crate::config::ValidationSettings;
use crate::events::{Channel, CodeScheme, Kind, ProcedureCompleted, RecordDigitized};
use crate::provinces::{provinces, Scheme, Unit};
use crate::sources::{Labels, Source};
use crate::store::IdKey;
use crate::wire::{self, Body, Encoding};

/// Why a message was dead-lettered. The string forms are metric labels and header values:
/// a closed set, so bad input can never grow the number of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Undecodable,
    MissingEventId,
    MalformedEventId,
    UnknownProvince,
    UnknownCodeScheme,
    UnknownDataset,
    UnknownChannel,
    ZeroRecordCount,
    RecordCountTooLarge,
    MissingTime,
    FutureTime,
    BeforeProgramme,
    /// A Schema Registry frame too short or with a malformed message-index array.
    BadFrame,
    /// A frame naming a message that is neither of tiendo's.
    WrongMessageIndex,
    /// A frame or JSON object of the other topic's message.
    WrongTopic,
    /// Not the proto3 JSON mapping of the topic's message.
    InvalidJson,
    /// A frame whose schema id the Schema Registry does not know, or knows as a schema of
    /// another type or message (only with `kafka.schema_registry.url`).
    UnknownSchemaId,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::Undecodable,
        Reason::MissingEventId,
        Reason::MalformedEventId,
        Reason::UnknownProvince,
        Reason::UnknownCodeScheme,
        Reason::UnknownDataset,
        Reason::UnknownChannel,
        Reason::ZeroRecordCount,
        Reason::RecordCountTooLarge,
        Reason::MissingTime,
        Reason::FutureTime,
        Reason::BeforeProgramme,
        Reason::BadFrame,
        Reason::WrongMessageIndex,
        Reason::WrongTopic,
        Reason::InvalidJson,
        Reason::UnknownSchemaId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::MissingEventId => "missing_event_id",
            Reason::MalformedEventId => "malformed_event_id",
            Reason::UnknownProvince => "unknown_province",
            Reason::UnknownCodeScheme => "unknown_code_scheme",
            Reason::UnknownDataset => "unknown_dataset",
            Reason::UnknownChannel => "unknown_channel",
            Reason::ZeroRecordCount => "zero_record_count",
            Reason::RecordCountTooLarge => "record_count_too_large",
            Reason::MissingTime => "missing_time",
            Reason::FutureTime => "future_time",
            Reason::BeforeProgramme => "before_programme",
            Reason::BadFrame => "bad_frame",
            Reason::WrongMessageIndex => "wrong_message_index",
            Reason::WrongTopic => "wrong_topic",
            Reason::InvalidJson => "invalid_json",
            Reason::UnknownSchemaId => "unknown_schema_id",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A message that failed validation: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reason,
    pub detail: String,
    /// The sender's label, when the message could be read far enough to name it.
    pub source: Option<Source>,
}

fn reject<T>(reason: Reason, detail: impl Into<String>) -> Result<T, Rejected> {
    Err(Rejected {
        reason,
        detail: detail.into(),
        source: None,
    })
}

/// What a valid event adds to the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// `count` records of the dataset with this index in the configured list.
    Records {
        dataset: u8,
        count: u64,
    },
    Procedure {
        channel: Channel,
        on_time: bool,
    },
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What claims need of the event id (the id itself is not kept).
    pub id: IdKey,
    pub unit: Unit,
    /// The code table was inferred: a code only the 63-unit table has, sent without
    /// `code_scheme` after the switch-over (counted as `legacy_code_inferred`).
    pub inferred: bool,
    /// Event time, unix seconds.
    pub at: i64,
    pub payload: Payload,
    /// Who sent it (`source_system`, as a bounded label).
    pub source: Source,
    /// When it was sent, unix seconds: the time it was decoded at, which the batch replaces
    /// with its message's Kafka timestamp (see [`crate::aggregate::SourceDelta`]).
    pub sent: i64,
}

/// Validation rules, built once from settings.
#[derive(Debug, Clone)]
pub struct Validator {
    datasets: Vec<String>,
    max_record_count: u64,
    max_future_skew: i64,
    programme_start: i64,
    /// Per topic kind: records, procedures.
    encodings: [Encoding; 2],
    sources: Labels,
    /// Schema ids checked against the Schema Registry, when one is configured.
    schemas: Option<std::sync::Arc<crate::registry::Registry>>,
}

impl Validator {
    pub fn new(settings: &ValidationSettings) -> Validator {
        let start = settings
            .programme_start
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists");
        let programme_start = vn_offset()
            .from_local_datetime(&start)
            .single()
            .expect("fixed offset is unambiguous")
            .timestamp();
        Validator {
            datasets: settings.datasets.clone(),
            max_record_count: settings.max_record_count,
            max_future_skew: settings.max_future_skew.as_secs() as i64,
            programme_start,
            encodings: [Encoding::Auto; 2],
            sources: Labels::default(),
            schemas: None,
        }
    }

    /// Checks frames' schema ids against what `registry` says (see [`crate::registry`]).
    pub fn with_registry(
        mut self,
        registry: std::sync::Arc<crate::registry::Registry>,
    ) -> Validator {
        self.schemas = Some(registry);
        self
    }

    pub fn registry(&self) -> Option<&crate::registry::Registry> {
        self.schemas.as_deref()
    }

    /// How each topic's messages are encoded (default: detected per message).
    pub fn with_encodings(mut self, records: Encoding, procedures: Encoding) -> Validator {
        self.encodings = [records, procedures];
        self
    }

    pub fn datasets(&self) -> &[String] {
        &self.datasets
    }

    /// The upstream systems counted under their own name (`sources.known`).
    pub fn with_sources(mut self, known: &[String]) -> Validator {
        self.sources = Labels::new(known);
        self
    }

    /// Decodes and validates one message of `kind` at wall time `now`.
    pub fn decode(&self, kind: Kind, bytes: &[u8], now: i64) -> Result<Event, Rejected> {
        let encoding = match kind {
            Kind::Records => self.encodings[0],
            Kind::Procedures => self.encodings[1],
        };
        let body = wire::unwrap(kind, encoding, bytes, self.registry())?;
        match kind {
            Kind::Records => self.read(body, |m, source| self.record(m, now, source)),
            Kind::Procedures => self.read(body, |m, source| self.procedure(m, now, source)),
        }
    }

    /// Reads `body` into this thread's reused message of type `M` and validates it with
    /// `check`, naming the sender in a rejection.
    fn read<M: Reused>(
        &self,
        body: Body<'_>,
        check: impl FnOnce(&M, &Source) -> Result<Event, Rejected>,
    ) -> Result<Event, Rejected> {
        M::slot().with_borrow_mut(|m| {
            let event = match message(body, m) {
                Ok(()) => {
                    let source = self.sources.of(m.source_system());
                    check(m, source).map_err(named(source))
                }
                Err(rejected) => Err(named(self.sources.of(&sender(body, m)))(rejected)),
            };
            m.keep_small();
            event
        })
    }

    /// The label of messages that name no known source.
    pub fn other_source(&self) -> Source {
        self.sources.other()
    }

    fn record(&self, m: &RecordDigitized, now: i64, source: &Source) -> Result<Event, Rejected> {
        check_id(&m.event_id)?;
        let at = self.time(m.occurred_at.as_ref(), now)?;
        let (unit, inferred) = unit(&m.province_code, m.code_scheme, at)?;
        let Some(dataset) = self.datasets.iter().position(|d| *d == m.dataset) else {
            return reject(Reason::UnknownDataset, truncate(&m.dataset));
        };
        if m.record_count == 0 {
            return reject(Reason::ZeroRecordCount, "record_count is 0");
        }
        if m.record_count > self.max_record_count {
            return reject(
                Reason::RecordCountTooLarge,
                format!("{} > {}", m.record_count, self.max_record_count),
            );
        }
        Ok(Event {
            id: IdKey::of(&m.event_id),
            unit,
            inferred,
            at,
            payload: Payload::Records {
                dataset: dataset as u8,
                count: m.record_count,
            },
            source: source.clone(),
            sent: now,
        })
    }

    fn procedure(
        &self,
        m: &ProcedureCompleted,
        now: i64,
        source: &Source,
    ) -> Result<Event, Rejected> {
        check_id(&m.event_id)?;
        let at = self.time(m.completed_at.as_ref(), now)?;
        let (unit, inferred) = unit(&m.province_code, m.code_scheme, at)?;
        let channel = match Channel::try_from(m.channel) {
            Ok(Channel::Unspecified) | Err(_) => {
                return reject(Reason::UnknownChannel, format!("channel {}", m.channel))
            }
            Ok(c) => c,
        };
        Ok(Event {
            id: IdKey::of(&m.event_id),
            unit,
            inferred,
            at,
            payload: Payload::Procedure {
                channel,
                on_time: m.on_time,
            },
            source: source.clone(),
            sent: now,
        })
    }

    fn time(&self, ts: Option<&prost_types::Timestamp>, now: i64) -> Result<i64, Rejected> {
        let Some(ts) = ts else {
            return reject(Reason::MissingTime, "no event time");
        };
        let at = ts.seconds;
        if at > now + self.max_future_skew {
            return reject(Reason::FutureTime, format!("{} is ahead of now", show(at)));
        }
        if at < self.programme_start {
            return reject(
                Reason::BeforeProgramme,
                format!("{} is before the programme began", show(at)),
            );
        }
        Ok(at)
    }
}

/// Who sent a message that could not be read whole, as far as it tells: the `source_system`
/// protobuf decoding read before the fault, or a JSON object's `sourceSystem` (or
/// `source_system`) where the text is JSON at all. Empty, and counted as `other`, where
/// neither is there: a source that floods broken messages still shows in its own figures.
fn sender<'m>(body: Body<'_>, m: &'m impl Reused) -> std::borrow::Cow<'m, str> {
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(rename = "sourceSystem")]
        json_name: Option<String>,
        source_system: Option<String>,
    }
    match body {
        Body::Protobuf(_) => m.source_system().into(),
        Body::Json(bytes) => serde_json::from_slice::<Named>(bytes)
            .ok()
            .and_then(|n| n.json_name.or(n.source_system))
            .unwrap_or_default()
            .into(),
    }
}

/// Names the sender in a rejection.
fn named(source: &Source) -> impl FnOnce(Rejected) -> Rejected + '_ {
    |mut r: Rejected| {
        r.source = Some(source.clone());
        r
    }
}

thread_local! {
    // Each thread decodes into the same two messages, event after event: prost clears a
    // string without freeing its buffer, so a valid protobuf event allocates nothing to be read
    // (JSON is parsed into values first, and replaces the message).
    static RECORD: RefCell<RecordDigitized> = RefCell::default();
    static PROCEDURE: RefCell<ProcedureCompleted> = RefCell::default();
}

/// The longest string buffer a reused message keeps: a poison message with a megabyte field
/// must not hold a megabyte per thread from then on.
const KEPT_STRING: usize = 1024;

/// A topic's message, decoded into a per-thread instance reused from event to event.
trait Reused: Message + Default + 'static {
    /// The topic kind whose message this is.
    const KIND: Kind;
    /// This thread's instance.
    fn slot() -> &'static LocalKey<RefCell<Self>>;
    fn source_system(&self) -> &str;
    /// Drops every string buffer longer than [`KEPT_STRING`].
    fn keep_small(&mut self);
}

/// Implements [`Reused`] for a message, given its kind, slot and string fields.
macro_rules! reused {
    ($message:ty, $kind:expr, $slot:ident, [$($string:ident),+]) => {
        impl Reused for $message {
            const KIND: Kind = $kind;
            fn slot() -> &'static LocalKey<RefCell<Self>> {
                &$slot
            }
            fn source_system(&self) -> &str {
                &self.source_system
            }
            fn keep_small(&mut self) {
                keep_small([$(&mut self.$string),+]);
            }
        }
    };
}

reused!(
    RecordDigitized,
    Kind::Records,
    RECORD,
    [event_id, province_code, unit_code, dataset, source_system]
);
reused!(
    ProcedureCompleted,
    Kind::Procedures,
    PROCEDURE,
    [event_id, province_code, procedure_code, source_system]
);

fn keep_small<const N: usize>(strings: [&mut String; N]) {
    for s in strings {
        if s.capacity() > KEPT_STRING {
            *s = String::new();
        }
    }
}

/// Reads the message in `body` into `m`, whichever its encoding.
fn message<M: Reused>(body: Body<'_>, m: &mut M) -> Result<(), Rejected> {
    match body {
        Body::Protobuf(bytes) => {
            m.clear();
            m.merge(bytes)
                .or_else(|e| reject(Reason::Undecodable, e.to_string()))
        }
        Body::Json(bytes) => {
            *m = wire::from_json(M::KIND, bytes)?;
            Ok(())
        }
    }
}

fn check_id(id: &str) -> Result<(), Rejected> {
    if id.is_empty() {
        return reject(Reason::MissingEventId, "event_id is empty");
    }
    if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return reject(
            Reason::MalformedEventId,
            "event_id must be 1-128 printable ASCII characters",
        );
    }
    Ok(())
}

/// The unit a code names, and whether its table had to be inferred.
///
/// Without `code_scheme`, a code is read in the table in force at the event's time. After the
/// switch-over, a code that only the 63-unit table has is unambiguous (many upstream systems
/// still send the old codes): it counts toward its legacy unit, and the inference is noted.
fn unit(code: &str, scheme: i32, at: i64) -> Result<(Unit, bool), Rejected> {
    let table = provinces();
    let scheme = match CodeScheme::try_from(scheme) {
        Ok(CodeScheme::Provinces63) => Scheme::Legacy63,
        Ok(CodeScheme::Provinces34) => Scheme::Current34,
        Ok(CodeScheme::Unspecified) => {
            let in_force = Scheme::in_force_at(DateTime::from_timestamp(at, 0).unwrap_or_default());
            if in_force == Scheme::Current34 && table.resolve(Scheme::Current34, code).is_none() {
                if let Some(legacy) = table.resolve(Scheme::Legacy63, code) {
                    return Ok((legacy, true));
                }
            }
            in_force
        }
        Err(_) => return reject(Reason::UnknownCodeScheme, format!("code_scheme {scheme}")),
    };
    let unit = table.resolve(scheme, code).ok_or_else(|| Rejected {
        source: None,
        reason: Reason::UnknownProvince,
        detail: format!("{:?} is not a code of the {scheme:?} table", truncate(code)),
    })?;
    Ok((unit, false))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn show(t: i64) -> String {
    Utc.timestamp_opt(t, 0)
        .single()
        .map(|d| d.to_rfc3339())
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::OTHER;

    fn v() -> Validator {
        Validator::new(&ValidationSettings::default())
    }

    fn now() -> i64 {
        "2024-10-01T00:00:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp()
    }

    fn record(f: impl FnOnce(&mut RecordDigitized)) -> Vec<u8> {
        let mut m = RecordDigitized {
            event_id: "e-1".into(),
            province_code: "94".into(),
            dataset: "civil_status".into(),
            record_count: 10,
            occurred_at: Some(prost_types::Timestamp {
                seconds: now() - 60,
                nanos: 0,
            }),
            ..Default::default()
        };
        f(&mut m);
        m.encode_to_vec()
    }

    fn procedure(f: impl FnOnce(&mut ProcedureCompleted)) -> Vec<u8> {
        let mut m = ProcedureCompleted {
            event_id: "p-1".into(),
            province_code: "01".into(),
            channel: Channel::InPerson as i32,
            completed_at: Some(prost_types::Timestamp {
                seconds: now() - 60,
                nanos: 0,
            }),
            ..Default::default()
        };
        f(&mut m);
        m.encode_to_vec()
    }

    fn reason(bytes: &[u8]) -> Reason {
        v().decode(Kind::Records, bytes, now()).unwrap_err().reason
    }

    #[test]
    fn a_good_record_decodes_with_the_scheme_in_force() {
        let e = v().decode(Kind::Records, &record(|_| {}), now()).unwrap();
        // Sóc Trăng (94) in 2024 is a legacy code; it counts toward Cần Thơ (92).
        assert_eq!(
            e.unit,
            Unit {
                scheme: Scheme::Legacy63,
                code: 94
            }
        );
        assert_eq!(e.unit.current_code(), 92);
        assert_eq!(
            e.payload,
            Payload::Records {
                dataset: 0,
                count: 10
            }
        );
        assert_eq!(e.id, IdKey::of("e-1"));
    }

    /// A source that sends broken messages sees them in its own figures, wherever its name
    /// can be read: not `other`, which would leave it looking quiet.
    #[test]
    fn a_message_that_cannot_be_read_whole_is_charged_to_its_sender() {
        let v = v().with_sources(&["hotich".into()]);
        let sender = |bytes: &[u8]| {
            let r = v.decode(Kind::Records, bytes, now()).unwrap_err();
            (r.reason, r.source.unwrap().as_str().to_string())
        };
        // Every field read, then a field whose bytes never come.
        let mut cut = record(|m| m.source_system = "hotich".into());
        cut.extend([0x0A, 100]);
        assert_eq!(sender(&cut), (Reason::Undecodable, "hotich".into()));
        let json = br#"{"sourceSystem": "hotich", "codeScheme": "CODE_SCHEME_NONE"}"#;
        assert_eq!(sender(json), (Reason::InvalidJson, "hotich".into()));
        let proto_name = br#"{"source_system": "hotich", "recordCount": "many"}"#;
        assert_eq!(sender(proto_name), (Reason::InvalidJson, "hotich".into()));
        // Not JSON at all, or a name nobody configured: `other`.
        let broken = br#"{"sourceSystem": "hotich", "#;
        assert_eq!(sender(broken), (Reason::InvalidJson, OTHER.into()));
        let stranger = br#"{"sourceSystem": "evil", "codeScheme": "X"}"#;
        assert_eq!(sender(stranger), (Reason::InvalidJson, OTHER.into()));
    }

    /// Each thread decodes into the same message (see `RECORD`): what one message set must
    /// never show through in the next, whatever the next leaves out.
    #[test]
    fn a_reused_message_keeps_nothing_of_the_one_before() {
        let v = || v().with_sources(&["hotich".into()]);
        // What a thread that decoded nothing before makes of `bytes`.
        let fresh = |kind: Kind, bytes: &[u8]| {
            let bytes = bytes.to_vec();
            std::thread::spawn(move || v().decode(kind, &bytes, now()))
                .join()
                .unwrap()
        };
        let again = |kind: Kind, bytes: &[u8]| {
            let got = v().decode(kind, bytes, now());
            assert_eq!(got, fresh(kind, bytes));
            got
        };
        // Every field set, some of them long...
        let full = record(|m| {
            m.source_system = "hotich".into();
            m.code_scheme = CodeScheme::Provinces63 as i32;
            m.unit_code = "u".repeat(4 * KEPT_STRING);
        });
        let e = again(Kind::Records, &full).unwrap();
        assert_eq!(e.source.as_str(), "hotich");
        RECORD.with_borrow(|m| assert!(m.unit_code.capacity() <= KEPT_STRING));
        // ...then left out: no time, no source, no scheme.
        let bare = record(|m| m.occurred_at = None);
        let r = again(Kind::Records, &bare).unwrap_err();
        assert_eq!(r.reason, Reason::MissingTime);
        assert_eq!(r.source.unwrap().as_str(), OTHER);
        let e = again(Kind::Records, &record(|_| {})).unwrap();
        assert_eq!((e.source.as_str(), e.id), (OTHER, IdKey::of("e-1")));
        // Bytes that fail half-way, a poison with a long field, and JSON, each then protobuf.
        let cut = &full[..full.len() / 2];
        assert_eq!(
            again(Kind::Records, cut).unwrap_err().reason,
            Reason::Undecodable
        );
        let long = record(|m| m.dataset = "x".repeat(4 * KEPT_STRING));
        assert_eq!(
            again(Kind::Records, &long).unwrap_err().reason,
            Reason::UnknownDataset
        );
        RECORD.with_borrow(|m| assert!(m.dataset.capacity() <= KEPT_STRING));
        let json = br#"{"eventId": "j-1", "provinceCode": "01", "dataset": "civil_status",
            "recordCount": "3", "occurredAt": "2024-09-30T23:00:00Z", "sourceSystem": "hotich"}"#;
        assert_eq!(
            again(Kind::Records, json).unwrap().source.as_str(),
            "hotich"
        );
        again(Kind::Records, &bare).unwrap_err();
        again(Kind::Records, &record(|_| {})).unwrap();

        // The same for procedures: on time, with both times, then none of that.
        let on_time = procedure(|m| {
            m.on_time = true;
            m.source_system = "hotich".into();
            m.code_scheme = CodeScheme::Provinces63 as i32;
            m.submitted_at = m.completed_at;
        });
        again(Kind::Procedures, &on_time).unwrap();
        let e = again(Kind::Procedures, &procedure(|_| {})).unwrap();
        assert_eq!(
            e.payload,
            Payload::Procedure {
                channel: Channel::InPerson,
                on_time: false
            }
        );
        assert_eq!(e.source.as_str(), OTHER);
    }

    #[test]
    fn every_kind_of_bad_input_has_its_reason() {
        assert_eq!(reason(b"\xff\xff\xff"), Reason::Undecodable);
        assert_eq!(
            reason(&record(|m| m.event_id.clear())),
            Reason::MissingEventId
        );
        assert_eq!(
            reason(&record(|m| m.event_id = "a b".into())),
            Reason::MalformedEventId
        );
        assert_eq!(
            reason(&record(|m| m.province_code = "03".into())),
            Reason::UnknownProvince
        );
        assert_eq!(
            reason(&record(|m| m.code_scheme = 9)),
            Reason::UnknownCodeScheme
        );
        assert_eq!(
            reason(&record(|m| m.dataset = "cats".into())),
            Reason::UnknownDataset
        );
        assert_eq!(
            reason(&record(|m| m.record_count = 0)),
            Reason::ZeroRecordCount
        );
        assert_eq!(
            reason(&record(|m| m.record_count = 2_000_000)),
            Reason::RecordCountTooLarge
        );
        assert_eq!(
            reason(&record(|m| m.occurred_at = None)),
            Reason::MissingTime
        );
        assert_eq!(
            reason(&record(
                |m| m.occurred_at.as_mut().unwrap().seconds = now() + 7200
            )),
            Reason::FutureTime
        );
        assert_eq!(
            reason(&record(|m| m.occurred_at.as_mut().unwrap().seconds = 0)),
            Reason::BeforeProgramme
        );
    }

    #[test]
    fn a_legacy_only_code_after_the_switch_over_is_inferred_not_rejected() {
        let august_2025 = "2025-08-01T03:00:00Z"
            .parse::<DateTime<Utc>>()
            .unwrap()
            .timestamp();
        let at = |code: &str| {
            record(|m| {
                m.province_code = code.into();
                m.occurred_at.as_mut().unwrap().seconds = august_2025;
            })
        };
        // Sóc Trăng (94) exists only in the 63-unit table: counted toward it, noted.
        let e = v().decode(Kind::Records, &at("94"), august_2025).unwrap();
        assert_eq!(
            (e.unit, e.inferred),
            (
                Unit {
                    scheme: Scheme::Legacy63,
                    code: 94
                },
                true
            )
        );
        assert_eq!(e.unit.current_code(), 92);
        // "15" is in both tables: the table in force says Lào Cai (34), as before.
        let e = v().decode(Kind::Records, &at("15"), august_2025).unwrap();
        assert_eq!((e.unit.scheme, e.inferred), (Scheme::Current34, false));
        // A code in neither table is still unknown.
        let bad = v()
            .decode(Kind::Records, &at("03"), august_2025)
            .unwrap_err();
        assert_eq!(bad.reason, Reason::UnknownProvince);
    }

    #[test]
    fn explicit_current_code_is_read_in_the_34_table() {
        let bytes = record(|m| {
            m.province_code = "15".into();
            m.code_scheme = CodeScheme::Provinces34 as i32;
        });
        let e = v().decode(Kind::Records, &bytes, now()).unwrap();
        assert_eq!(
            e.unit,
            Unit {
                scheme: Scheme::Current34,
                code: 15
            }
        );
    }

    #[test]
    fn procedures_need_a_known_channel() {
        let with = |channel: i32| {
            procedure(|m| {
                m.channel = channel;
                m.on_time = true;
            })
        };
        let r = v().decode(Kind::Procedures, &with(7), now());
        assert_eq!(r.unwrap_err().reason, Reason::UnknownChannel);
        let e = v()
            .decode(
                Kind::Procedures,
                &with(Channel::OnlineEndToEnd as i32),
                now(),
            )
            .unwrap();
        assert_eq!(
            e.payload,
            Payload::Procedure {
                channel: Channel::OnlineEndToEnd,
                on_time: true
            }
        );
    }
}
