//! `tiendo publish`: a feed for registries that cannot run a Kafka producer. Reads CSV or JSON
//! Lines of record-digitized or procedure-completed events, validates every row exactly as the
//! pipeline would (nothing is sent from a file with a bad row), and publishes protobuf events.
//!
//! Event ids may be given; when a row has none, one is derived from the row's content and how
//! many identical rows came before it in the file, so publishing the same file twice (or the
//! file with rows appended) counts each event once.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::clock::vn_offset;
use crate::csv_line::{line_at, Lines};
use crate::decode::Validator;
use crate::events::{Channel, CodeScheme, Kind, ProcedureCompleted, RecordDigitized};
use crate::generator::Generated;

/// Which events a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileKind {
    Records,
    Procedures,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    Csv,
    Jsonl,
}

impl FileFormat {
    /// From the extension: `.jsonl`/`.ndjson`/`.json` are JSON Lines, anything else CSV.
    pub fn guess(path: &Path) -> FileFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson" | "json") => FileFormat::Jsonl,
            _ => FileFormat::Csv,
        }
    }
}

/// A bad row: its line in the file and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    pub problem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{} bad row(s) in {path}; nothing was published:\n{}", rows.len(), list(rows))]
    BadRows { path: String, rows: Vec<BadRow> },
    #[error("event_id {id} is given in {first} and in {second} for different events; only one would count; nothing was published")]
    GivenTwice {
        id: String,
        first: String,
        second: String,
    },
    #[error("kafka: {0} (rows published before the failure are safe to publish again: their ids are derived)")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

fn list(rows: &[BadRow]) -> String {
    let mut out: Vec<String> = rows
        .iter()
        .take(50)
        .map(|r| format!("  line {}: {}", r.line, r.problem))
        .collect();
    if rows.len() > 50 {
        out.push(format!("  … and {} more", rows.len() - 50));
    }
    out.join("\n")
}

/// One input row, either kind; every field optional so a missing one is reported, not fatal.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Row {
    event_id: Option<String>,
    province_code: Option<String>,
    /// `34` or `63`; empty: the table in force at the event's time.
    code_scheme: Option<String>,
    unit_code: Option<String>,
    dataset: Option<String>,
    record_count: Option<u64>,
    occurred_at: Option<String>,
    procedure_code: Option<String>,
    /// `online`, `partly_online` or `in_person`.
    channel: Option<String>,
    submitted_at: Option<String>,
    completed_at: Option<String>,
    on_time: Option<String>,
    source_system: Option<String>,
}

/// `2024-11-20T10:00:00+07:00`, or a Vietnam-time `2024-11-20 10:00[:00]`, or a day.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_hms_opt(12, 0, 0).expect("noon"))
        })
        .ok_or_else(|| format!("time {s:?} is not RFC 3339, `YYYY-MM-DD HH:MM[:SS]` or a date"))?;
    Ok(vn_offset()
        .from_local_datetime(&local)
        .single()
        .expect("fixed offset")
        .with_timezone(&Utc))
}

fn timestamp(at: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, String> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(format!("{name} is missing")),
    }
}

fn scheme(v: &Option<String>) -> Result<CodeScheme, String> {
    match v.as_deref().map(str::trim).unwrap_or("") {
        "" => Ok(CodeScheme::Unspecified),
        "63" => Ok(CodeScheme::Provinces63),
        "34" => Ok(CodeScheme::Provinces34),
        other => Err(format!("code_scheme must be 34 or 63, not {other:?}")),
    }
}

impl Row {
    fn event(&self, kind: FileKind) -> Result<Generated, String> {
        let id = self.event_id.clone().unwrap_or_default().trim().to_string();
        let source = self
            .source_system
            .clone()
            .unwrap_or_else(|| "tiendo-publish".into());
        let province = required(&self.province_code, "province_code")?.to_string();
        let code_scheme = scheme(&self.code_scheme)? as i32;
        Ok(match kind {
            FileKind::Records => Generated::Record(RecordDigitized {
                event_id: id,
                province_code: province,
                code_scheme,
                unit_code: self.unit_code.clone().unwrap_or_default(),
                dataset: required(&self.dataset, "dataset")?.to_string(),
                record_count: self.record_count.ok_or("record_count is missing")?,
                occurred_at: timestamp(parse_time(required(&self.occurred_at, "occurred_at")?)?),
                source_system: source,
            }),
            FileKind::Procedures => {
                let channel = match required(&self.channel, "channel")? {
                    "online" | "online_end_to_end" => Channel::OnlineEndToEnd,
                    "partly_online" => Channel::PartlyOnline,
                    "in_person" => Channel::InPerson,
                    other => {
                        return Err(format!(
                            "channel must be online, partly_online or in_person, not {other:?}"
                        ))
                    }
                };
                let on_time = match required(&self.on_time, "on_time")? {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    other => return Err(format!("on_time must be true or false, not {other:?}")),
                };
                let submitted = match self.submitted_at.as_deref().map(str::trim) {
                    Some(s) if !s.is_empty() => timestamp(parse_time(s)?),
                    _ => None,
                };
                Generated::Procedure(ProcedureCompleted {
                    event_id: id,
                    province_code: province,
                    code_scheme,
                    procedure_code: self.procedure_code.clone().unwrap_or_default(),
                    channel: channel as i32,
                    submitted_at: submitted,
                    completed_at: timestamp(parse_time(required(
                        &self.completed_at,
                        "completed_at",
                    )?)?),
                    on_time,
                    source_system: source,
                })
            }
        })
    }
}

/// An id from the event's content (id left empty) and its occurrence among identical rows.
fn derive_id(m: &Generated, occurrence: u32) -> String {
    let mut h = Sha256::new();
    h.update([m.kind().letter() as u8]);
    h.update(m.encode());
    h.update(occurrence.to_be_bytes());
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("f-{hex}")
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn set_id(m: &mut Generated, id: String) {
    match m {
        Generated::Record(r) => r.event_id = id,
        Generated::Procedure(p) => p.event_id = id,
        Generated::Poison { .. } => {}
    }
}

fn id_of(m: &Generated) -> &str {
    match m {
        Generated::Record(r) => &r.event_id,
        Generated::Procedure(p) => &p.event_id,
        Generated::Poison { .. } => "",
    }
}

/// Reads and validates every row of `path`: all the events, or every bad row.
pub fn read(
    path: &Path,
    kind: FileKind,
    format: FileFormat,
    validator: &Validator,
    now: DateTime<Utc>,
) -> Result<Vec<Generated>, PublishError> {
    let text = std::fs::read_to_string(path).map_err(|source| PublishError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, kind, format, validator, now).map_err(|rows| PublishError::BadRows {
        path: path.display().to_string(),
        rows,
    })
}

/// Reads and validates every row of a file's text: all the events, or every bad row.
pub fn parse(
    text: &str,
    kind: FileKind,
    format: FileFormat,
    validator: &Validator,
    now: DateTime<Utc>,
) -> Result<Vec<Generated>, Vec<BadRow>> {
    let rows: Vec<(u64, Result<Row, String>)> = match format {
        FileFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .comment(Some(b'#'))
                .from_reader(text.as_bytes());
            let headers = reader.headers().cloned().unwrap_or_default();
            // A file without its header row would have its first row taken for one, and
            // then read as nothing, or as rows under the wrong names.
            if !headers.is_empty() && !headers.iter().any(|h| h == "province_code") {
                let line = headers.position().map(|p| line_at(text, p)).unwrap_or(1);
                return Err(vec![BadRow {
                    line,
                    problem: "the first row names no province_code column; a CSV file starts \
                              with a header row naming its columns"
                        .into(),
                }]);
            }
            let mut lines = Lines::new(text);
            reader
                .records()
                .map(|r| match r {
                    Ok(record) => {
                        let line = record.position().map(|p| lines.of(p)).unwrap_or(0);
                        let row = record
                            .deserialize::<Row>(Some(&headers))
                            .map_err(|e| e.to_string());
                        (line, row)
                    }
                    Err(e) => (
                        e.position().map(|p| lines.of(p)).unwrap_or(0),
                        Err(e.to_string()),
                    ),
                })
                .collect()
        }
        FileFormat::Jsonl => text
            .trim_start_matches('\u{feff}')
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                (
                    i as u64 + 1,
                    serde_json::from_str::<Row>(l).map_err(|e| e.to_string()),
                )
            })
            .collect(),
    };
    let event_kind = match kind {
        FileKind::Records => Kind::Records,
        FileKind::Procedures => Kind::Procedures,
    };
    let mut events = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut given = Given::default();
    for (line, row) in rows {
        let event = row.and_then(|r| r.event(kind)).and_then(|mut m| {
            if id_of(&m).is_empty() {
                let n = seen.entry(m.encode()).or_default();
                *n += 1;
                let id = derive_id(&m, *n);
                set_id(&mut m, id);
            } else {
                if let Some(first) = given.conflict(id_of(&m).to_string(), line, &m) {
                    return Err(format!(
                        "event_id {} is on line {first} for another event; only one would count",
                        id_of(&m)
                    ));
                }
            }
            validator
                .decode(event_kind, &m.encode(), now.timestamp())
                .map(|_| m)
                .map_err(|r| format!("{}: {}", r.reason.as_str(), r.detail))
        });
        match event {
            Ok(m) => events.push(m),
            Err(problem) => bad.push(BadRow { line, problem }),
        }
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    Ok(events)
}

/// Across the files of one publish (each already checked within itself by [`parse`]), an id
/// given for two different events: only one of them would count.
pub fn given_twice(files: &[(String, Vec<Generated>)]) -> Result<(), PublishError> {
    let mut given = Given::default();
    for (file, events) in files {
        for m in events {
            if let Some(first) = given.conflict(id_of(m), file.as_str(), m) {
                return Err(PublishError::GivenTwice {
                    id: id_of(m).to_string(),
                    first: first.to_string(),
                    second: file.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Ids given so far, each with where (a line, a file) and for which event (a hash of it) it
/// was first given. The same id again for the same event is one event sent twice, counted
/// once; for another event, one of the two would be lost.
struct Given<K, W> {
    first: HashMap<K, (W, u64)>,
}

impl<K, W> Default for Given<K, W> {
    fn default() -> Self {
        Given {
            first: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq, W: Copy> Given<K, W> {
    /// Where `id` was first given, if that was for an event other than `m`.
    fn conflict(&mut self, id: K, at: W, m: &Generated) -> Option<W> {
        let event = hash(&m.encode());
        let (first, first_event) = *self.first.entry(id).or_insert((at, event));
        (first_event != event).then_some(first)
    }
}

/// Publishes `events` in chunks, waiting for Kafka to acknowledge each, with a progress bar
/// on a terminal.
pub async fn send(
    producer: &crate::source::Producer,
    topics: &crate::config::TopicSettings,
    events: &[Generated],
    show_progress: bool,
) -> Result<(), PublishError> {
    let bar = if show_progress {
        indicatif::ProgressBar::new(events.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {pos}/{len} events {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    for chunk in events.chunks(1000) {
        crate::generator::publish(producer, topics, chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValidationSettings;

    fn validator() -> Validator {
        Validator::new(&ValidationSettings::default())
    }

    fn now() -> DateTime<Utc> {
        "2024-11-20T03:00:00Z".parse().unwrap()
    }

    fn file(text: &str, ext: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn derived_ids_are_stable_and_tell_identical_rows_apart() {
        let text = "province_code,code_scheme,dataset,record_count,occurred_at\n\
                    58,63,civil_status,1200,2024-11-19 09:00\n\
                    58,63,civil_status,1200,2024-11-19 09:00\n\
                    49,63,land,30,2024-11-19T08:00:00+07:00\n";
        let f = file(text, ".csv");
        let a = read(
            f.path(),
            FileKind::Records,
            FileFormat::Csv,
            &validator(),
            now(),
        )
        .unwrap();
        let b = read(
            f.path(),
            FileKind::Records,
            FileFormat::Csv,
            &validator(),
            now(),
        )
        .unwrap();
        let ids = |v: &[Generated]| v.iter().map(|m| id_of(m).to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.len(), 3);
        assert_ne!(
            id_of(&a[0]),
            id_of(&a[1]),
            "two identical rows are two events"
        );
        let Generated::Record(r) = &a[0] else {
            panic!()
        };
        assert_eq!(r.occurred_at.as_ref().unwrap().seconds, 1_731_981_600);
    }

    #[test]
    fn a_file_without_its_header_or_with_an_id_given_twice_is_refused() {
        // The only row would be taken for the header: zero events, silently.
        let headless = "58,63,civil_status,1200,2024-11-19 09:00\n";
        let rows = parse(
            headless,
            FileKind::Records,
            FileFormat::Csv,
            &validator(),
            now(),
        );
        let rows = rows.unwrap_err();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 1);
        assert!(rows[0].problem.contains("header"), "{rows:?}");
        // One id for two events: one would be lost. The same event twice is one event.
        let twice = "event_id,province_code,dataset,record_count,occurred_at\n\
                     a1,01,civil_status,10,2024-11-19\n\
                     a1,01,civil_status,10,2024-11-19\n\
                     a1,04,civil_status,30,2024-11-19\n";
        let rows = parse(
            twice,
            FileKind::Records,
            FileFormat::Csv,
            &validator(),
            now(),
        );
        let rows = rows.unwrap_err();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].line, 4);
        assert!(rows[0].problem.contains("on line 2"), "{rows:?}");
    }

    #[test]
    fn an_id_given_in_two_files_for_different_events_is_refused() {
        let parse = |text: &str| {
            parse(
                text,
                FileKind::Records,
                FileFormat::Csv,
                &validator(),
                now(),
            )
            .unwrap()
        };
        let head = "event_id,province_code,dataset,record_count,occurred_at\n";
        let a = parse(&format!("{head}a1,01,civil_status,10,2024-11-19\n"));
        let same = parse(&format!("{head}a1,01,civil_status,10,2024-11-19\n"));
        let other = parse(&format!("{head}a1,04,civil_status,30,2024-11-19\n"));
        // The same event in two files is one event sent twice, counted once.
        assert!(given_twice(&[("a.csv".into(), a.clone()), ("b.csv".into(), same)]).is_ok());
        let err = given_twice(&[("a.csv".into(), a), ("c.csv".into(), other)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event_id a1 is given in a.csv and in c.csv for different events; only one would \
             count; nothing was published"
        );
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let text = "# a comment\n\
                    province_code,dataset,record_count,occurred_at\n\
                    01,civil_status,10,2024-11-19\n\
                    99,civil_status,10,2024-11-19\n\
                    01,weather,10,2024-11-19\n\
                    # a comment between rows\n\
                    01,civil_status,0,2024-11-19\n\
                    01,civil_status,10,yesterday\n";
        let f = file(text, ".csv");
        let Err(PublishError::BadRows { rows, .. }) = read(
            f.path(),
            FileKind::Records,
            FileFormat::Csv,
            &validator(),
            now(),
        ) else {
            panic!("accepted a bad file")
        };
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![4, 5, 7, 8], "{rows:?}");
        assert!(rows[0].problem.starts_with("unknown_province"), "{rows:?}");
        assert!(rows[3].problem.contains("yesterday"), "{rows:?}");
    }

    #[test]
    fn procedures_from_json_lines() {
        let text = r#"{"province_code":"48","code_scheme":"34","procedure_code":"1.001","channel":"online","completed_at":"2025-08-01T10:00:00+07:00","on_time":"true"}
{"province_code":"48","channel":"by_pigeon","completed_at":"2025-08-01","on_time":"true"}
"#;
        let f = file(text, ".jsonl");
        let Err(PublishError::BadRows { rows, .. }) = read(
            f.path(),
            FileKind::Procedures,
            FileFormat::guess(f.path()),
            &validator(),
            "2025-08-02T00:00:00Z".parse().unwrap(),
        ) else {
            panic!("accepted a bad file")
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].line, 2);
        assert!(rows[0].problem.contains("by_pigeon"));
    }
}
