//! The text of chat replies: pure functions from figures, alerts and silences to the markup of
//! the chat asking (Telegram HTML, Slack mrkdwn), so that no reply can break its receiver's
//! markup (`examples/fuzz.rs`, target `reply`, checks it). Those that return marked-up text
//! escape what a person typed or a file named (`Markup::escape`, `Markup::bold`); `unit_name`
//! and `figures` return plain text, which their callers escape.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::config::{Language, Settings};
use crate::notify::message::{
    dataset_name, date, number, percent, rule_text, severity_text, time, Markup,
};
use crate::provinces::{provinces, Scheme, Unit};
use crate::rules::ledger::Silence;
use crate::rules::state::AlertState;
use crate::rules::{Facts, Route, Rule, Severity, Subject};
use crate::status::ProvinceStatus;

use super::command::Verb;

/// No province matches what was asked.
pub fn not_found(query: &str, lang: Language, m: Markup) -> String {
    if lang == Language::Vi {
        format!(
            "Không tìm thấy tỉnh “{}”. Gõ tên (có hoặc không dấu) hoặc mã, ví dụ /tinh ninh thuan hoặc /tinh 58.",
            m.escape(query)
        )
    } else {
        format!(
            "No province “{}”. Send a name (with or without diacritics) or a code, e.g. /province ninh thuan or /province 58.",
            m.escape(query)
        )
    }
}

/// Several provinces match what was asked.
pub fn several(query: &str, units: &[Unit], lang: Language, m: Markup) -> String {
    let list: Vec<String> = units.iter().map(|u| unit_name(*u)).collect();
    format!(
        "{} “{}”: {}",
        if lang == Language::Vi {
            "Nhiều tỉnh khớp"
        } else {
            "Several provinces match"
        },
        m.escape(query),
        m.escape(&list.join(", "))
    )
}

/// No silence has the id asked to lift.
pub fn no_silence(id: &str, lang: Language, m: Markup) -> String {
    if lang == Language::Vi {
        format!(
            "Không có im lặng mã {}. Xem các mã bằng /canhbao.",
            m.escape(id)
        )
    } else {
        format!("No silence with id {}. /alerts lists them.", m.escape(id))
    }
}

/// A silence lifted.
pub fn lifted(id: &str, lang: Language, m: Markup) -> String {
    if lang == Language::Vi {
        format!("🔔 Đã bỏ im lặng {}.", m.escape(id))
    } else {
        format!("🔔 Silence {} lifted.", m.escape(id))
    }
}

/// A silence made: what it holds back, of which province, until when, and how to lift it.
pub fn silenced(silence: &Silence, name: &str, lang: Language, m: Markup) -> String {
    let scope = scope(silence, lang);
    if lang == Language::Vi {
        format!(
            "🔕 Đã tạm im {} của {} đến {} (giờ VN). Mã: {}. Bỏ im: /boimlang {}",
            m.escape(&scope),
            m.bold(name),
            time(silence.until),
            m.escape(&silence.id),
            m.escape(&silence.id)
        )
    } else {
        format!(
            "🔕 Silenced {} of {} until {} (Vietnam time). Id: {}. To lift: /unsilence {}",
            m.escape(&scope),
            m.bold(name),
            time(silence.until),
            m.escape(&silence.id),
            m.escape(&silence.id)
        )
    }
}

/// `Ninh Thuận (63:58)`.
pub fn unit_name(u: Unit) -> String {
    let name = provinces()
        .get(u.scheme, u.code)
        .map(|p| p.name_vi.as_str())
        .unwrap_or("?");
    let tag = match u.scheme {
        Scheme::Current34 => "34",
        Scheme::Legacy63 => "63",
    };
    format!("{name} ({tag}:{:02})", u.code)
}

/// `61,7% (1.234/2.000) · 7 ngày: 120/ngày, cần 300/ngày · dự kiến xong 12/03/2027 · hạn …`
pub fn figures(f: &Facts, p: f64, lang: Language) -> String {
    let vi = lang == Language::Vi;
    let target = number(f.target.unwrap_or(0) as f64, lang);
    let mut parts = vec![format!(
        "{} ({}/{target})",
        percent(p, lang),
        number(f.total as f64, lang)
    )];
    let needed = f
        .pace_needed
        .map(|n| number(n, lang))
        .unwrap_or_else(|| "–".into());
    if p < 100.0 {
        parts.push(if vi {
            format!(
                "7 ngày: {}/ngày, cần {needed}/ngày",
                number(f.pace_7d, lang)
            )
        } else {
            format!(
                "7 days: {}/day, needs {needed}/day",
                number(f.pace_7d, lang)
            )
        });
        parts.push(match (f.projected, vi) {
            (Some(d), true) => format!("dự kiến xong {}", date(d)),
            (Some(d), false) => format!("projected {}", date(d)),
            (None, true) => "chưa có tiến độ để dự báo".into(),
            (None, false) => "no progress to project from".into(),
        });
    }
    if let Some(d) = f.deadline {
        parts.push(format!(
            "{} {}",
            if vi { "hạn" } else { "deadline" },
            date(d)
        ));
    }
    parts.join(" · ")
}

/// What `/tinh` shows of one province, as the chat gathered it.
pub struct Province<'a> {
    pub unit: Unit,
    pub row: &'a ProvinceStatus,
    /// The facts the rules saw, by subject (`34:01:civil_status`).
    pub facts: &'a BTreeMap<String, (Subject, Facts)>,
    /// The configured datasets, in the order shown.
    pub datasets: &'a [String],
    /// Its active alerts (key and state), in the order shown.
    pub alerts: &'a [(&'a String, &'a AlertState)],
    /// Its silences in force.
    pub silences: &'a [&'a Silence],
    pub now: DateTime<Utc>,
}

/// `/tinh`: the province's name and codes, each dataset's figures against its target,
/// procedures, then its alerts and silences. Names and figures are escaped here.
pub fn province(v: &Province<'_>, lang: Language, m: Markup) -> String {
    let vi = lang == Language::Vi;
    let (unit, row) = (v.unit, v.row);
    let code = &row.code;
    let mut lines = vec![m.bold(&row.name)];
    let mut about = format!(
        "{} {code} ({})",
        if vi { "mã" } else { "code" },
        if unit.scheme == Scheme::Current34 {
            if vi {
                "bảng 34 tỉnh"
            } else {
                "34-unit table"
            }
        } else if vi {
            "bảng 63 tỉnh"
        } else {
            "63-unit table"
        }
    );
    if unit.scheme == Scheme::Legacy63 {
        let into = provinces()
            .get(Scheme::Legacy63, unit.code)
            .map(|p| p.current_code)
            .and_then(|c| provinces().get(Scheme::Current34, c).map(|p| (c, p)));
        if let Some((c, p)) = into {
            about.push_str(&if vi {
                format!(", nay thuộc {} ({c:02})", p.name_vi)
            } else {
                format!(", now part of {} ({c:02})", p.name_vi)
            });
        }
    }
    lines.push(m.escape(&format!(
        "{about} · {} {} ({})",
        if vi { "số liệu lúc" } else { "figures at" },
        time(v.now),
        if vi { "giờ VN" } else { "Vietnam time" }
    )));
    for name in v.datasets {
        let Some(d) = row.datasets.get(name) else {
            continue;
        };
        if d.total == 0 && d.target.is_none() {
            continue;
        }
        let key = format!("{}:{}:{}", row.scheme, row.code, name);
        let label = m.bold(&dataset_name(name, lang));
        let text = match (v.facts.get(&key), d.percent) {
            (Some((_, f)), Some(p)) => figures(f, p, lang),
            _ => {
                let week = d.rate("7d", v.now);
                if vi {
                    format!(
                        "{} bản ghi · 7 ngày: {}/ngày · chưa có chỉ tiêu",
                        number(d.total as f64, lang),
                        number(week, lang)
                    )
                } else {
                    format!(
                        "{} records · 7 days: {}/day · no target",
                        number(d.total as f64, lang),
                        number(week, lang)
                    )
                }
            }
        };
        lines.push(format!("{label}: {}", m.escape(&text)));
    }
    let p = &row.procedures;
    if p.completed > 0 {
        let share = p
            .online_share
            .map(|s| percent(s * 100.0, lang))
            .unwrap_or_else(|| "–".into());
        lines.push(format!(
            "{}: {}",
            m.bold(&dataset_name("", lang)),
            m.escape(&if vi {
                format!(
                    "{} hồ sơ, trực tuyến toàn trình {share}",
                    number(p.completed as f64, lang)
                )
            } else {
                format!(
                    "{} dossiers, online end to end {share}",
                    number(p.completed as f64, lang)
                )
            })
        ));
    }
    if v.alerts.is_empty() {
        lines.push(
            if vi {
                "Không có cảnh báo."
            } else {
                "No alerts."
            }
            .to_string(),
        );
    } else {
        lines.push(m.bold(if vi { "Cảnh báo" } else { "Alerts" }));
        for (key, state) in v.alerts {
            // Alerts are kept in one table: asked of a unit of the other, they belong to the
            // unit it is now part of, or to its parts, and say which.
            let of = unit_of(key).filter(|u| *u != v.unit).map(unit_name);
            lines.push(alert_line(key, state, of.as_deref(), lang, m));
        }
    }
    for silence in v.silences {
        lines.push(silence_line(silence, lang, m));
    }
    lines.join("\n")
}

/// The unit an alert key (`34:48:civil_status:silent`) is about.
fn unit_of(key: &str) -> Option<Unit> {
    let (scheme, rest) = key.split_once(':')?;
    let scheme = match scheme {
        "34" => Scheme::Current34,
        "63" => Scheme::Legacy63,
        _ => return None,
    };
    let code = rest.split(':').next()?.parse().ok()?;
    Some(Unit { scheme, code })
}

/// `🔴 Hộ tịch: chậm tiến độ (nghiêm trọng) từ 20/11/2026 08:00`, with `of` (a unit's name)
/// after the icon when the alert is another unit's.
pub fn alert_line(
    key: &str,
    state: &AlertState,
    of: Option<&str>,
    lang: Language,
    m: Markup,
) -> String {
    let mut parts = key.rsplitn(3, ':');
    let rule = parts.next().and_then(Rule::parse);
    let what = parts.next().unwrap_or_default();
    let icon = match state.severity {
        Severity::Critical => "🔴",
        Severity::Warning => "🟠",
        Severity::Info => "🔵",
    };
    let dataset = dataset_name(if what == "procedures" { "" } else { what }, lang);
    let rule = rule.map_or("?", |r| rule_text(r, lang));
    let since = if lang == Language::Vi {
        "từ"
    } else {
        "since"
    };
    let of = of.map(|u| format!("{u} · ")).unwrap_or_default();
    m.escape(&format!(
        "{icon} {of}{dataset}: {rule} ({}) {since} {}",
        severity_text(state.severity, lang),
        time(state.since)
    ))
}

/// What a silence covers, in words.
fn scope(s: &Silence, lang: Language) -> String {
    let vi = lang == Language::Vi;
    let rule = s.rule.map(|r| rule_text(r, lang).to_string());
    let dataset = (!s.dataset.is_empty()).then(|| dataset_name(&s.dataset, lang));
    match (rule, dataset, vi) {
        (None, None, true) => "mọi cảnh báo".into(),
        (None, None, false) => "every alert".into(),
        (Some(r), None, true) => format!("cảnh báo “{r}”"),
        (Some(r), None, false) => format!("“{r}” alerts"),
        (None, Some(d), true) => format!("cảnh báo về {d}"),
        (None, Some(d), false) => format!("alerts on {d}"),
        (Some(r), Some(d), true) => format!("cảnh báo “{r}” về {d}"),
        (Some(r), Some(d), false) => format!("“{r}” alerts on {d}"),
    }
}

pub fn silence_line(s: &Silence, lang: Language, m: Markup) -> String {
    let name = provinces()
        .get(
            if s.scheme == "34" {
                Scheme::Current34
            } else {
                Scheme::Legacy63
            },
            s.province.parse().unwrap_or(0),
        )
        .map(|p| p.name_vi.as_str())
        .unwrap_or("?");
    let until = if lang == Language::Vi {
        "đến"
    } else {
        "until"
    };
    m.escape(&format!(
        "🔕 {} · {name}: {} {until} {} · {}",
        s.id,
        scope(s, lang),
        time(s.until),
        s.reason
    ))
}

/// The commands, with an example each.
pub fn help(lang: Language, m: Markup, settings: &Settings) -> String {
    let mut lines = vec![m.bold(if lang == Language::Vi {
        "tiendo · các lệnh"
    } else {
        "tiendo · commands"
    })];
    for (verb, _, _) in Verb::ALL {
        lines.push(usage(verb, lang, m, settings));
    }
    lines.join("\n")
}

pub fn usage(verb: Verb, lang: Language, m: Markup, settings: &Settings) -> String {
    let vi = lang == Language::Vi;
    let (_, name_vi, name_en) = Verb::ALL
        .iter()
        .find(|(v, _, _)| *v == verb)
        .expect("listed");
    let (name, alias) = if vi {
        (name_vi, name_en)
    } else {
        (name_en, name_vi)
    };
    let (args, what) = match (verb, vi) {
        (Verb::Province, true) => (" <tên hoặc mã>", "số liệu một tỉnh, ví dụ /tinh ninh thuan"),
        (Verb::Province, false) => (" <name or code>", "one province, e.g. /province ninh thuan"),
        (Verb::Alerts, true) => ("", "các cảnh báo đang bật"),
        (Verb::Alerts, false) => ("", "the alerts firing now"),
        (Verb::Report, true) => ("", "phân loại tiến độ các tỉnh"),
        (Verb::Report, false) => ("", "the provinces by progress"),
        (Verb::Silence, true) => (
            " <tỉnh> [dữ liệu] [quy tắc] <thời hạn> <lý do>",
            "tạm im cảnh báo, ví dụ /imlang quang nam land 3d đang nhập lại",
        ),
        (Verb::Silence, false) => (
            " <province> [dataset] [rule] <duration> <reason>",
            "hold alerts back, e.g. /silence quang nam land 3d re-import",
        ),
        (Verb::Unsilence, true) => (" <mã>", "bỏ một im lặng"),
        (Verb::Unsilence, false) => (" <id>", "lift a silence"),
        (Verb::Help, true) => ("", "trợ giúp"),
        (Verb::Help, false) => ("", "this help"),
    };
    let mut line = m.escape(&format!("/{name}{args} (/{alias}): {what}"));
    if verb == Verb::Silence {
        let rules: Vec<&str> = Rule::ALL
            .iter()
            .filter(|r| r.route() == Route::Taskforce)
            .map(|r| r.as_str())
            .collect();
        line.push_str(&m.escape(&format!(
            "\n  {}: {} · {}: {} · {}: 2h, 3d (≤ 30d)",
            if vi { "dữ liệu" } else { "datasets" },
            settings.validation.datasets.join(", "),
            if vi { "quy tắc" } else { "rules" },
            rules.join(", "),
            if vi { "thời hạn" } else { "durations" },
        )));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/tinh quang nam` in the 34-unit view lists Đà Nẵng's alerts: they say whose they are.
    #[test]
    fn another_units_alert_says_whose_it_is() {
        assert_eq!(
            unit_of("34:48:civil_status:silent"),
            Some(Unit {
                scheme: Scheme::Current34,
                code: 48
            })
        );
        assert_eq!(unit_of("x:48:civil_status:silent"), None);
        let state = AlertState::new(
            crate::rules::state::Phase::Firing,
            Severity::Warning,
            Utc::now(),
        );
        let key = "34:48:civil_status:silent";
        let of = unit_of(key).map(unit_name);
        let line = alert_line(
            key,
            &state,
            of.as_deref(),
            Language::Vi,
            Markup::TelegramHtml,
        );
        assert!(line.starts_with("🟠 Đà Nẵng (34:48) · "), "{line}");
        let own = alert_line(key, &state, None, Language::Vi, Markup::TelegramHtml);
        assert!(!own.contains("Đà Nẵng"), "{own}");
    }
}
