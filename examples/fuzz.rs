//! The fuzzer behind `scripts/fuzz`: a mutation fuzzer on the stable toolchain (no coverage
//! feedback), seeded from the project's own valid inputs. Each target must never panic, and
//! the chat text builders must always produce what their receiver accepts.
//!
//! Targets:
//! - `decode`: protobuf decoding and validation of both topics' messages;
//! - `publish`: `tiendo publish`'s CSV and JSON Lines readers;
//! - `config`: the TOML configuration loader;
//! - `env`: the `TIENDO_*` environment loader (each input line a variable, `NAME=VALUE`);
//! - `text`: Telegram HTML and Slack mrkdwn digests, from notices with any names and figures,
//!   and the same text split into messages of any size (as reports and replies are);
//! - `report`: the weekly report with any names and figures, as Telegram and Slack messages
//!   (whole and split as they are posted) and as the HTML page sent with it;
//! - `reply`: chat replies to any message (a province's figures, alerts and silences, a
//!   silence made, usage and help), and alert and silence lines with any keys, ids, reasons
//!   and dataset names.
//!
//! `cargo run --release --example fuzz -- [TARGET|all] [INPUTS] [SEED]`. A crash writes the
//! input to `target/fuzz-crashes/` and exits 1; make it a regression test.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use tiendo::chat::command::{self, Command, Unparsed};
use tiendo::chat::lookup::{self, Found};
use tiendo::chat::reply;
use tiendo::config::{Language, Settings};
use tiendo::decode::Validator;
use tiendo::events::Kind;
use tiendo::generator::Generator;
use tiendo::notify::message::{length, render, split, Markup, Style};
use tiendo::provinces::{Scheme, Unit};
use tiendo::publish::{FileFormat, FileKind};
use tiendo::report::weekly::{DatasetWeek, ProvinceWeek, Week};
use tiendo::report::{Class, DatasetReport, Entry, Report};
use tiendo::rules::ledger::{Digest, Notice, Silence};
use tiendo::rules::state::{AlertState, Change, Phase};
use tiendo::rules::{Facts, Rule, Severity, Subject};
use tiendo::status::{DatasetStatus, ProcedureStatus, ProvinceStatus, View};
use tiendo::wire;

/// xorshift64*: fast, and the same run from the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that tend to matter to parsers and markup.
const TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"&",
    b"&amp;",
    b"*",
    b"_",
    b"`",
    b"\"",
    b"'",
    b",",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff",
    b"\xc3",
    "Đ".as_bytes(),
    "ệ".as_bytes(),
    "🟢".as_bytes(),
    b"<b>",
    b"</b>",
    b"-1",
    b"99999999999999999999",
    b"1e308",
    b"NaN",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b"#",
    b"\\u0000",
    b"2024-13-45 25:61",
    b"\x08\x96\x01",
    b"\x12\xff\xff\xff\xff\x0f",
];

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 if !v.is_empty() => {
                let start = rng.below(v.len());
                let end = (start + 1 + rng.below(32)).min(v.len());
                let chunk: Vec<u8> = v[start..end].to_vec();
                for _ in 0..1 + rng.below(3) {
                    v.splice(at..at, chunk.iter().copied());
                }
            }
            5 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            6 => v.truncate(at),
            _ => {
                let n = rng.below(8);
                v.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
        }
    }
    v
}

/// What a target does with one input; an error is an invalid output.
type Check = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// One target: its seeds and its check.
struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Check,
}

fn targets() -> Vec<Target> {
    let settings = Settings::default();
    let datasets = settings.validation.datasets.clone();
    let validator = Validator::new(&settings.validation);
    let now = Utc::now();
    let mut g = Generator::new(1, "fuzz", &datasets);
    let mut events: Vec<Vec<u8>> = Vec::new();
    for _ in 0..20 {
        for m in [g.record(now), g.procedure(now), g.poison(now)] {
            let kind = m.kind() as u8;
            let plain = m.encode();
            // Each message also framed for the Schema Registry and as JSON, where it decodes.
            let mut encodings = vec![plain.clone(), wire::frame(m.kind(), 1, &plain)];
            encodings.extend(wire::to_json(m.kind(), &plain).ok());
            for encoded in encodings {
                let mut bytes = vec![kind];
                bytes.extend(encoded);
                events.push(bytes);
            }
        }
    }
    let decode = {
        let validator = validator.clone();
        Box::new(move |input: &[u8]| {
            let (kind, bytes) = input.split_first().unwrap_or((&0, &[]));
            let kind = if kind % 2 == 0 {
                Kind::Records
            } else {
                Kind::Procedures
            };
            let _ = validator.decode(kind, bytes, now.timestamp());
            Ok(())
        })
    };
    let day = now.format("%Y-%m-%d");
    let publish_seeds = vec![
        format!("c# a comment\nevent_id,province_code,code_scheme,dataset,record_count,occurred_at\n,58,63,civil_status,1200,{day} 09:00\nnt-1,49,63,land,30,{day}T11:00:00+07:00\n"),
        format!("j{{\"event_id\":\"a\",\"province_code\":\"01\",\"code_scheme\":\"34\",\"dataset\":\"land\",\"record_count\":\"5\",\"occurred_at\":\"{day} 10:00\"}}\n"),
        format!("J{{\"province_code\":\"48\",\"code_scheme\":\"34\",\"procedure_code\":\"1.001\",\"channel\":\"online\",\"completed_at\":\"{day} 15:00\",\"on_time\":\"true\"}}\n"),
        format!("Cprovince_code,code_scheme,procedure_code,channel,submitted_at,completed_at,on_time\n79,34,2.1,in_person,{day} 08:00,{day} 15:00,false\n"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let publish = {
        let validator = validator.clone();
        Box::new(move |input: &[u8]| {
            let (how, text) = input.split_first().unwrap_or((&b'c', &[]));
            let text = String::from_utf8_lossy(text);
            let kind = if how.is_ascii_lowercase() {
                FileKind::Records
            } else {
                FileKind::Procedures
            };
            let format = if how.eq_ignore_ascii_case(&b'j') {
                FileFormat::Jsonl
            } else {
                FileFormat::Csv
            };
            let _ = tiendo::publish::parse(&text, kind, format, &validator, now);
            Ok(())
        })
    };
    let config_seeds = vec![
        include_bytes!("../deploy/tiendo.example.toml").to_vec(),
        b"[alerts.receivers.tg]\nkind = \"telegram\"\ntoken = \"1:x\"\nchat_id = -100123\n[commands]\ntelegram = \"tg\"\nchats = [-100123]\n[report]\nschedule = [\"Mon 08:00\"]\n".to_vec(),
        b"[kafka.properties]\n\"sasl.password\" = 5\n[redis]\ncluster_urls = [\"redis://a:1\"]\n".to_vec(),
    ];
    let config = Box::new(|input: &[u8]| {
        let _ = Settings::from_toml(&String::from_utf8_lossy(input));
        Ok(())
    });
    // The variables the Compose service and the Kubernetes Deployment set, and others of each
    // kind of value (lists, durations, numbers, chat ids, maps of properties), less the
    // `TIENDO_` every line gets back.
    let env_seeds = vec![
        b"CONFIG=/etc/tiendo/tiendo.toml\nKAFKA__BROKERS=kafka:9092\nREDIS__URL=redis://redis:6379\nTARGETS__FILE=/etc/tiendo/targets.csv\n".to_vec(),
        b"LOG__FORMAT=json\nKAFKA__GROUP_INSTANCE_ID=tiendo-0\nKAFKA__PROPERTIES__SASL_PASSWORD=s3cret\nALERTS__RECEIVERS__TASKFORCE__TOKEN=1:x\nSERVICE_HOST=10.0.0.1\n".to_vec(),
        b"ALERTS__RECEIVERS__TASKFORCE__KIND=telegram\nALERTS__RECEIVERS__TASKFORCE__CHAT_ID=-1001234567890\nVALIDATION__DATASETS=civil_status,land\nPIPELINE__BATCH_LINGER=50ms\nPIPELINE__BATCH_MAX_MESSAGES=500\nREDIS__CLUSTER_URLS=[\"redis://a:1\",\"redis://b:2\"]\n".to_vec(),
    ];
    let env = Box::new(|input: &[u8]| {
        let text = String::from_utf8_lossy(input);
        let vars = text.lines().map(|line| {
            let (name, value) = line.split_once('=').unwrap_or((line, ""));
            (format!("TIENDO_{name}").into(), value.into())
        });
        if let Ok(env) = tiendo::config::env::EnvOverrides::read(vars) {
            let _ = Settings::load_with(None, env);
        }
        Ok(())
    });
    let names: Vec<Vec<u8>> = [
        "Hà Nội",
        "Bà Rịa - Vũng Tàu",
        "<b>Ninh Thuận</b> & *Quảng Nam*",
        "a&amp;b <i>x</i> `code` _u_",
        "🟢🔴 Đắk Lắk",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let text = Box::new(|input: &[u8]| {
        let digest = digest(input);
        for (markup, max) in [(Markup::TelegramHtml, 4096), (Markup::Slack, 3500)] {
            let style = Style {
                language: if input.len() % 2 == 0 {
                    Language::Vi
                } else {
                    Language::En
                },
                markup,
                max_chars: max,
                group_at: 2 + input.len() % 5,
                link: Some("https://tiendo.example/?a=1&b=<2>".into()),
            };
            let messages = render(&digest, &style);
            for message in &messages {
                if length(message) > max {
                    return Err(format!("{markup:?} message of {} > {max}", length(message)));
                }
                valid(message, markup)?;
            }
            // Text rendered ahead, split to any size: each part fits and stays valid.
            split_valid(&messages.join("\n"), markup, 1 + input.len() * 7 % 300)?;
        }
        Ok(())
    });
    vec![
        Target {
            name: "decode",
            seeds: events,
            run: decode,
        },
        Target {
            name: "publish",
            seeds: publish_seeds,
            run: publish,
        },
        Target {
            name: "config",
            seeds: config_seeds,
            run: config,
        },
        Target {
            name: "env",
            seeds: env_seeds,
            run: env,
        },
        Target {
            name: "text",
            seeds: names.clone(),
            run: text,
        },
        Target {
            name: "report",
            seeds: names,
            run: Box::new(report_text),
        },
        Target {
            name: "reply",
            seeds: [
                "/tinh ninh thuan",
                "/province hai",
                "/tinh@tiendo_bot 58",
                "/imlang quang nam land 3d <b>nhập lại</b> & *kiểm tra*",
                "/silence 58 civil_status stalled 2h a_b `c` <i>",
                "/boimlang s1764000000-ab&c",
                "/imlang hà nội 40d quá dài",
                "/trogiup",
                "/lenhla",
                "34:58:land:stalled|s1-<x>|civil_status|re&import <b>|63|01",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
            run: Box::new(reply_text),
        },
    ]
}

/// The replies to the message `input` makes, as the chat code builds them (less what it reads
/// from Redis), and lines about alerts and silences named by pieces of it; each valid for its
/// receiver, whole and split.
fn reply_text(input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    let pieces: Vec<&str> = text.split('|').collect();
    let byte = bytes(input);
    let piece = |i: usize| pieces[i % pieces.len()].to_string();
    let lang = [Language::Vi, Language::En][input.len() % 2];
    let now: DateTime<Utc> = "2026-11-20T03:00:00Z".parse().expect("valid time");
    let mut settings = Settings::default();
    // By the length, not the first byte: a command's first byte is nearly always `/`.
    if input.len() / 2 % 2 == 1 {
        // Dataset names as a configuration file could give them.
        settings.validation.datasets = pieces.iter().take(4).map(|p| p.to_string()).collect();
    }
    let datasets = &settings.validation.datasets;
    let severity = [Severity::Info, Severity::Warning, Severity::Critical][byte(1) % 3];
    let alert = AlertState {
        phase: Phase::Firing,
        since: now,
        severity,
        fired_at: Some(now),
        notified_at: None,
        next_severity: None,
        absent_since: None,
        resolutions: Vec::new(),
        flapping: false,
        unheard: None,
    };
    let silence = Silence {
        id: piece(1),
        scheme: piece(4),
        province: piece(5),
        dataset: piece(2),
        rule: Rule::parse(&piece(0)),
        until: now,
        reason: piece(3),
        created_at: now,
    };
    for (m, max) in [(Markup::TelegramHtml, 4096), (Markup::Slack, 3500)] {
        let mut texts = vec![
            reply::alert_line(&piece(0), &alert, Some(&piece(1)), lang, m),
            reply::silence_line(&silence, lang, m),
            reply::silenced(&silence, &piece(5), lang, m),
            reply::help(lang, m, &settings),
        ];
        match command::parse(&text, Some("tiendo_bot"), datasets) {
            Ok(Command::Province(q)) => texts.push(match lookup::find(&q, Scheme::Current34) {
                // As `/tinh` shows it, with names and figures from the input.
                Found::One(unit) => {
                    let row = province_row(input, unit, &piece(7), datasets);
                    let facts = province_facts(input, &row);
                    let key = piece(0);
                    let alerts = [(&key, &alert)];
                    let silences = [&silence];
                    let shown = reply::Province {
                        unit,
                        row: &row,
                        facts: &facts,
                        datasets,
                        alerts: &alerts[..byte(7) % 2],
                        silences: &silences[..byte(8) % 2],
                        now,
                    };
                    reply::province(&shown, lang, m)
                }
                Found::None => reply::not_found(&q, lang, m),
                Found::Several(units) => reply::several(&q, &units, lang, m),
            }),
            // As the chat makes it: the province looked up in the table alerts are kept in
            // (here the 34-unit one), then the silence built with its code.
            Ok(Command::Silence {
                province,
                dataset,
                rule,
                duration,
                reason,
            }) => match lookup::find(&province, Scheme::Current34) {
                Found::One(unit) => {
                    let until = now + chrono::Duration::from_std(duration).unwrap_or_default();
                    match Silence::build(
                        View::Current34,
                        &format!("{:02}", unit.code),
                        dataset.as_deref(),
                        rule.map(Rule::as_str),
                        until,
                        &format!("{reason} — {}", piece(6)),
                        now,
                        datasets,
                    ) {
                        Ok(made) => {
                            texts.push(reply::silenced(&made, &reply::unit_name(unit), lang, m));
                            texts.push(reply::silence_line(&made, lang, m));
                        }
                        Err(e) => texts.push(m.escape(&e.to_string())),
                    }
                }
                _ => texts.push(reply::not_found(&province, lang, m)),
            },
            Ok(Command::Unsilence(id)) => {
                texts.push(reply::no_silence(&id, lang, m));
                texts.push(reply::lifted(&id, lang, m));
            }
            Err(Unparsed::Usage(verb, _)) => texts.push(reply::usage(verb, lang, m, &settings)),
            _ => {}
        }
        let small = 1 + input.len() * 7 % 300;
        for text in &texts {
            valid(text, m)?;
            split_valid(text, m, max)?;
            split_valid(text, m, small)?;
        }
    }
    Ok(())
}

/// `unit`'s row of the status as its table's view has it, called `name`, with figures from
/// `input`'s bytes for most of `datasets` (some with a target, some without, some empty, some
/// missing).
fn province_row(input: &[u8], unit: Unit, name: &str, datasets: &[String]) -> ProvinceStatus {
    let byte = bytes(input);
    let rows = datasets.iter().enumerate().filter_map(|(d, name)| {
        let b = byte(9 + d);
        if b % 11 == 10 {
            return None;
        }
        let status = DatasetStatus {
            total: if b % 7 == 0 {
                0
            } else {
                (b as i64 - 20) * 1_000_003
            },
            windows: [("7d", b as i64 * 977)].into_iter().collect(),
            rate_sums: [("7d", b as i64 * 911)].into_iter().collect(),
            rate_from: BTreeMap::new(),
            target: (b % 3 != 0).then_some(b as u64 * 10_007),
            deadline: (b % 4 != 0).then(|| NaiveDate::from_ymd_opt(2026, 12, 31).unwrap()),
            percent: (b % 3 != 0).then(|| figure(b)),
            last_event: None,
        };
        Some((name.clone(), status))
    });
    let b = byte(13);
    ProvinceStatus {
        code: format!("{:02}", unit.code),
        name: name.to_string(),
        scheme: View::from(unit.scheme).tag(),
        datasets: rows.collect(),
        procedures: ProcedureStatus {
            completed: b as i64 * 31,
            online_share: (b % 5 != 0).then(|| figure(b) / 100.0),
            ..ProcedureStatus::default()
        },
    }
}

/// The facts the rules would have seen for `row`'s datasets that have a target.
fn province_facts(input: &[u8], row: &ProvinceStatus) -> BTreeMap<String, (Subject, Facts)> {
    let byte = bytes(input);
    let projected = NaiveDate::from_ymd_opt(2027, 3, 12);
    row.datasets
        .iter()
        .filter(|(_, d)| d.target.is_some())
        .enumerate()
        .map(|(i, (name, d))| {
            let b = byte(14 + i);
            let subject = Subject {
                scheme: row.scheme.to_string(),
                code: row.code.clone(),
                name: row.name.clone(),
                dataset: name.clone(),
            };
            let facts = Facts {
                total: d.total,
                target: d.target,
                deadline: d.deadline,
                percent: d.percent,
                pace_7d: figure(b),
                pace_needed: (b % 2 == 0).then(|| figure(b / 2)),
                projected: projected.filter(|_| b % 3 != 0),
                ..Facts::default()
            };
            (
                format!("{}:{}:{name}", row.scheme, row.code),
                (subject, facts),
            )
        })
        .collect()
}

/// The input's byte at an index, as a number; 0 past its end.
fn bytes(input: &[u8]) -> impl Fn(usize) -> usize + '_ {
    |i| input.get(i).copied().unwrap_or(0) as usize
}

/// A number from the input's bytes, now and then one no figure should be but a bug could make.
fn figure(byte: usize) -> f64 {
    match byte % 17 {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -0.0,
        3 => 1e300,
        _ => byte as f64 * 0.77 - 20.0,
    }
}

/// A report of datasets and provinces named by pieces of `input`, with figures from its bytes.
fn report(input: &[u8]) -> Report {
    let text = String::from_utf8_lossy(input);
    let pieces: Vec<&str> = text.split('|').collect();
    let byte = bytes(input);
    let name = |i: usize| pieces[i % pieces.len()].to_string();
    let day = |i: usize| NaiveDate::from_ymd_opt(2025, 1 + (byte(i) % 12) as u32, 1).unwrap();
    let datasets: Vec<String> = (0..1 + byte(0) % 3).map(|d| name(d + 1)).collect();
    let mut n = 0;
    let mut week = Vec::new();
    let mut reports = Vec::new();
    for (d, dataset) in datasets.iter().enumerate() {
        let mut classes = std::collections::BTreeMap::new();
        let mut provinces = Vec::new();
        for (c, class) in Class::ALL.iter().enumerate() {
            let list: Vec<Entry> = (0..byte(d * 5 + c) % 8)
                .map(|_| {
                    n += 1;
                    provinces.push(ProvinceWeek {
                        code: name(n + 2),
                        name: name(n),
                        percent_then: figure(byte(n + 3)),
                        percent_now: figure(byte(n + 4)),
                        points: figure(byte(n + 5)),
                        class_then: Class::ALL[byte(n + 6) % Class::ALL.len()],
                        class_now: *class,
                        trend: (0..byte(n + 7) % 9).map(|t| figure(byte(n + t))).collect(),
                    });
                    Entry {
                        scheme: if byte(n) % 2 == 0 { "34" } else { "63" },
                        code: name(n + 2),
                        name: name(n),
                        total: byte(n + 1) as i64 * 1_000_003 - 7,
                        target: byte(n + 2) as u64 * 10_000,
                        percent: figure(byte(n + 4)),
                        deadline: day(n),
                        projected: (byte(n) % 3 != 0).then(|| day(n + 1)),
                    }
                })
                .collect();
            classes.insert(*class, list);
        }
        week.push(DatasetWeek {
            dataset: dataset.clone(),
            percent_then: figure(byte(d + 7)),
            percent_now: figure(byte(d + 8)),
            provinces,
        });
        reports.push(DatasetReport {
            dataset: dataset.clone(),
            name: name(d + 4),
            total: byte(d + 9) as i64 * 99_991,
            target: byte(d + 10) as u64 * 100_000,
            percent: figure(byte(d + 11)),
            classes,
        });
    }
    Report {
        as_of: "2026-11-20T03:00:00Z".parse().expect("valid time"),
        view: [View::Current34, View::Legacy63][byte(1) % 2],
        language: [Language::Vi, Language::En][byte(2) % 2],
        basically_done: 0.8,
        datasets: reports,
        week: (byte(3) % 4 != 0).then(|| Week {
            since: day(5),
            datasets: week,
        }),
    }
}

/// The report as each receiver gets it: its chat text whole and split as it is posted, and
/// split to any small size; and its page.
fn report_text(input: &[u8]) -> Result<(), String> {
    let report = report(input);
    let late = (input.len() % 3 == 0).then_some(report.as_of);
    for (markup, max) in [(Markup::TelegramHtml, 4096), (Markup::Slack, 3500)] {
        let text = report.chat(markup, late);
        valid(&text, markup)?;
        split_valid(&text, markup, max)?;
        split_valid(&text, markup, 1 + input.len() * 7 % 300)?;
    }
    page(&report.html())
}

/// `text` split into messages of at most `size` characters: each fits and stays valid.
fn split_valid(text: &str, markup: Markup, size: usize) -> Result<(), String> {
    for part in split(text, size) {
        if length(&part) > size {
            return Err(format!("{markup:?} part of {} > {size}", length(&part)));
        }
        valid(&part, markup)?;
    }
    Ok(())
}

/// Whether every `&` in `text` begins an entity the report writes.
fn entities_only(text: &str) -> bool {
    text.match_indices('&').all(|(at, _)| {
        ["&amp;", "&lt;", "&gt;", "&quot;"]
            .iter()
            .any(|e| text[at..].starts_with(e))
    })
}

/// A tag's attributes (`name="value"`, space-separated, maybe a closing `/`): names the
/// report writes, values quoted whole with no markup but entities.
fn attributes(mut rest: &str) -> Result<(), String> {
    const ATTRIBUTES: &[&str] = &[
        "aria-label",
        "charset",
        "class",
        "content",
        "data-code",
        "fill",
        "font-size",
        "height",
        "lang",
        "name",
        "points",
        "role",
        "stroke-width",
        "stroke",
        "style",
        "text-anchor",
        "viewBox",
        "width",
        "x",
        "y",
    ];
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() || rest == "/" {
            return Ok(());
        }
        let (name, value) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("not an attribute: {rest:.60?}"))?;
        if !ATTRIBUTES.contains(&name) {
            return Err(format!("unknown attribute {name:?}"));
        }
        let (value, after) = value
            .split_once('"')
            .ok_or_else(|| format!("an unclosed value: {value:.60?}"))?;
        if value.contains('<') || !entities_only(value) {
            return Err(format!("markup in a value: {value:.60?}"));
        }
        if !(after.is_empty() || after.starts_with([' ', '/'])) {
            return Err(format!("no space after a value: {after:.60?}"));
        }
        rest = after;
    }
}

/// HTML whose tags and attributes are all the report's own, tags balanced, and whose `&` are
/// all entities: no name or figure became markup.
fn page(html: &str) -> Result<(), String> {
    const TAGS: &[&str] = &[
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "section", "dl", "dt",
        "dd", "span", "ul", "li", "b", "table", "tr", "td", "svg", "rect", "polyline", "text",
    ];
    const EMPTY: &[&str] = &["meta"];
    let Some(rest) = html.strip_prefix("<!doctype html>") else {
        return Err("no doctype".into());
    };
    let mut open: Vec<&str> = Vec::new();
    let mut rest = rest;
    while let Some(i) = rest.find(['<', '>', '&']) {
        let tail = &rest[i..];
        if tail.starts_with('&') {
            let entity = ["&amp;", "&lt;", "&gt;", "&quot;"]
                .iter()
                .find(|e| tail.starts_with(*e))
                .ok_or_else(|| format!("a bare & at {tail:.40?}"))?;
            rest = &tail[entity.len()..];
            continue;
        }
        if tail.starts_with('>') {
            return Err(format!("a bare > at {tail:.40?}"));
        }
        let end = tail.find('>').ok_or("an unclosed tag")?;
        let tag = &tail[1..end];
        let (closing, inner) = match tag.strip_prefix('/') {
            Some(inner) => (true, inner),
            None => (false, tag),
        };
        let name_end = inner.find([' ', '/']).unwrap_or(inner.len());
        let name = &inner[..name_end];
        if !TAGS.contains(&name) {
            return Err(format!("unknown tag {name:?}"));
        }
        if closing && name_end < inner.len() {
            return Err(format!("a closing tag with more: {tag:.60?}"));
        }
        attributes(&inner[name_end..])?;
        if closing {
            if open.pop() != Some(name) {
                return Err(format!("</{name}> closes nothing open"));
            }
        } else if !EMPTY.contains(&name) && !tag.ends_with('/') {
            open.push(name);
        }
        rest = &tail[end + 1..];
        if name == "style" && !closing {
            // The stylesheet is the report's own text.
            let close = rest.find("</style>").ok_or("an unclosed style")?;
            rest = &rest[close..];
        }
    }
    if !open.is_empty() {
        return Err(format!("unclosed {open:?}"));
    }
    Ok(())
}

/// Notices about subjects named by pieces of `input`, with figures from its bytes.
fn digest(input: &[u8]) -> Digest {
    let text = String::from_utf8_lossy(input);
    let pieces: Vec<&str> = text.split('|').collect();
    let at: DateTime<Utc> = "2026-11-20T03:00:00Z".parse().expect("valid time");
    let byte = bytes(input);
    let notices = (0..1 + byte(0) % 24)
        .map(|i| {
            let name = pieces[i % pieces.len()].to_string();
            let rule = Rule::ALL[(byte(i) + i) % Rule::ALL.len()];
            let severity = [Severity::Info, Severity::Warning, Severity::Critical][byte(i + 1) % 3];
            let change = match byte(i + 2) % 6 {
                0 => Change::Firing { previous: None },
                1 => Change::Firing {
                    previous: Some(Severity::Warning),
                },
                2 => Change::Repeated,
                3 => Change::Resolved,
                4 => Change::Completed,
                _ => Change::Flapping,
            };
            let subject = if rule.route() == tiendo::rules::Route::Ops {
                Subject::source(&name)
            } else {
                Subject {
                    scheme: "34".into(),
                    code: format!("{:02}", i % 100),
                    name,
                    dataset: ["civil_status", "", "land", "weird<data>"][byte(i + 3) % 4].into(),
                }
            };
            // A source's day, its reasons named by the input.
            let feed = subject.is_source().then(|| tiendo::rules::Feed {
                messages: byte(i + 12) as i64 * 1000,
                rejected: byte(i + 13) as i64 * 10,
                reject_ratio: byte(i + 13) as f64 / 255.0,
                reasons: vec![(
                    pieces[(i + 1) % pieces.len()].to_string(),
                    byte(i + 14) as i64,
                )],
            });
            let facts = Facts {
                total: byte(i + 4) as i64 * 1_000_003 - 7,
                target: (byte(i + 5) % 2 == 0).then_some(byte(i + 5) as u64 * 10_000),
                deadline: NaiveDate::from_ymd_opt(2025, 1 + (byte(i) % 12) as u32, 1),
                percent: Some(byte(i + 6) as f64 * 0.7),
                pace_7d: byte(i + 7) as f64 * 3.3,
                pace_needed: Some(byte(i + 8) as f64 * 1e9),
                days_left: Some(byte(i + 9) as f64 - 100.5),
                projected: NaiveDate::from_ymd_opt(2030, 6, 1),
                last_event: (byte(i) % 3 == 0).then_some(at),
                online_share: Some(byte(i + 10) as f64 / 255.0),
                dossiers: byte(i + 11) as i64,
                feed,
            };
            Notice {
                id: format!("n{i}"),
                alert_key: subject.alert_key(rule),
                rule,
                severity,
                change,
                subject,
                facts,
                at,
                silenced_by: (byte(i) % 7 == 0).then(|| "s1".into()),
            }
        })
        .collect();
    Digest {
        id: "d".into(),
        at,
        notices,
        ..Digest::default()
    }
}

/// What Telegram's HTML parser and Slack's mrkdwn accept: only `<b>`…`</b>` as tags
/// (Telegram), no other `<` or `>`, and `&` only as one of the entities both know.
fn valid(message: &str, markup: Markup) -> Result<(), String> {
    let mut rest = message;
    let mut open = false;
    while let Some(i) = rest.find(['<', '>', '&']) {
        let tail = &rest[i..];
        let step = if tail.starts_with('&') {
            ["&amp;", "&lt;", "&gt;"]
                .iter()
                .find(|e| tail.starts_with(*e))
                .map(|e| e.len())
                .ok_or_else(|| format!("{markup:?}: a bare & in {message:?}"))?
        } else if markup == Markup::TelegramHtml && tail.starts_with("<b>") && !open {
            open = true;
            3
        } else if markup == Markup::TelegramHtml && tail.starts_with("</b>") && open {
            open = false;
            4
        } else {
            return Err(format!(
                "{markup:?}: unexpected markup at {tail:.40?} in {message:?}"
            ));
        };
        rest = &tail[step..];
    }
    if open {
        return Err(format!("{markup:?}: unclosed <b> in {message:?}"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map_or("all", String::as_str).to_string();
    let inputs: u64 = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000);
    let seed: u64 = args
        .get(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x7de0_5eed);
    // Panics are caught and reported with their input; the default hook would only repeat them.
    std::panic::set_hook(Box::new(|_| {}));
    // Targets run side by side, one thread each.
    let chosen: Vec<Target> = targets()
        .into_iter()
        .filter(|t| which == "all" || which == t.name)
        .collect();
    if chosen.is_empty() {
        eprintln!(
            "no target {which}; targets: decode, publish, config, env, text, report, reply, all"
        );
        std::process::exit(2);
    }
    let failed = std::thread::scope(|scope| {
        let runs: Vec<_> = chosen
            .iter()
            .map(|target| scope.spawn(move || fuzz(target, inputs, seed)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap_or(true))
            .collect::<Vec<bool>>()
            .contains(&true)
    });
    if failed {
        std::process::exit(1);
    }
}

/// Runs `inputs` mutated inputs through `target`; `true` if one failed (saved and reported).
fn fuzz(target: &Target, inputs: u64, seed: u64) -> bool {
    // Each target its own stream: the seed mixed with the name (FNV-1a).
    let name = target.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = Rng((seed ^ name) | 1);
    let started = Instant::now();
    for n in 0..inputs {
        let input = mutate(&mut rng, &target.seeds);
        let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
        let problem = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(invalid)) => invalid,
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        };
        let dir = std::path::Path::new("target/fuzz-crashes");
        let _ = std::fs::create_dir_all(dir);
        let file = dir.join(format!("{}-{n}.bin", target.name));
        let _ = std::fs::write(&file, &input);
        println!(
            "{}: input {n} failed ({problem}); saved to {}",
            target.name,
            file.display()
        );
        return true;
    }
    println!(
        "{:8} {inputs} inputs, no failure, {:.1} s",
        target.name,
        started.elapsed().as_secs_f64()
    );
    false
}
