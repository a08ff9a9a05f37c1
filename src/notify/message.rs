//! Chat text for a digest: Vietnamese by default, English on request; escaped for each
//! receiver's markup; split before the receiver's length limit at line boundaries, so no
//! markup is ever cut in half. Every line of a message is self-contained markup.

use chrono::{DateTime, NaiveDate, Utc};

use crate::clock::vn_offset;
use crate::config::Language;
use crate::rules::ledger::{Digest, Notice};
use crate::rules::state::Change;
use crate::rules::{Rule, Severity};

/// The markup a receiver reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// Telegram `parse_mode: HTML`: `<b>`, and `&`, `<`, `>` escaped.
    TelegramHtml,
    /// Slack `mrkdwn` (also Mattermost, Rocket.Chat): `*bold*`, and `&`, `<`, `>` escaped.
    Slack,
    /// No markup at all.
    Plain,
}

impl Markup {
    fn escape(self, text: &str) -> String {
        match self {
            Markup::Plain => text.to_string(),
            Markup::TelegramHtml | Markup::Slack => text
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
        }
    }

    fn bold(self, text: &str) -> String {
        let t = self.escape(text);
        match self {
            Markup::TelegramHtml => format!("<b>{t}</b>"),
            // Slack has no escape for `*`; a look-alike keeps a name from ending the bold.
            Markup::Slack => format!("*{}*", t.replace('*', "∗")),
            Markup::Plain => t,
        }
    }
}

/// Length as receivers count it, conservatively: UTF-16 code units of the raw text.
pub fn length(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Renders `digest` as messages of at most `max_chars` each.
pub fn render(digest: &Digest, lang: Language, markup: Markup, max_chars: usize) -> Vec<String> {
    let mut notices: Vec<&Notice> = digest.notices.iter().collect();
    notices.sort_by_key(|n| (order(n), n.subject.name.clone(), n.subject.dataset.clone()));
    let lines: Vec<String> = notices
        .iter()
        .map(|n| line(n, lang, markup))
        .map(|l| fit(l, max_chars.saturating_sub(120)))
        .collect();
    let mut parts: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0;
    // Room for the header, which is added once the number of parts is known.
    let budget = max_chars.saturating_sub(120).max(1);
    for l in lines {
        let n = length(&l) + 1;
        if size + n > budget && !parts.last().expect("one part").is_empty() {
            parts.push(Vec::new());
            size = 0;
        }
        size += n;
        parts.last_mut().expect("one part").push(l);
    }
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, lines)| {
            let mut text = header(digest, lang, markup, i + 1, count);
            for l in lines {
                text.push('\n');
                text.push_str(&l);
            }
            text
        })
        .collect()
}

/// Plain text of the whole digest, unsplit (the generic webhook's `text`).
pub fn plain(digest: &Digest, lang: Language) -> String {
    render(digest, lang, Markup::Plain, usize::MAX / 2).join("\n")
}

/// A line longer than a whole message is cut, without markup, at a character boundary.
fn fit(line: String, max: usize) -> String {
    if length(&line) <= max.max(1) {
        return line;
    }
    let mut out = String::new();
    for c in strip_markup(&line).chars() {
        if length(&out) + c.len_utf16() + 1 > max {
            break;
        }
        out.push(c);
    }
    // Never end inside an entity such as `&amp;`.
    if let Some(amp) = out.rfind('&') {
        if !out[amp..].contains(';') {
            out.truncate(amp);
        }
    }
    out.push('…');
    out
}

fn strip_markup(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_tag = false;
    for c in line.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            '*' => {}
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn order(n: &Notice) -> u8 {
    match (n.change, n.severity) {
        (Change::Firing { .. }, Severity::Critical) => 0,
        (Change::Firing { .. }, _) => 1,
        (Change::Repeated, Severity::Critical) => 2,
        (Change::Repeated, _) => 3,
        (Change::Resolved, _) => 4,
        (Change::Completed, _) => 5,
    }
}

fn header(d: &Digest, lang: Language, m: Markup, part: usize, parts: usize) -> String {
    let at = d.at.with_timezone(&vn_offset()).format("%d/%m/%Y %H:%M");
    let n = d.notices.len();
    let title = match lang {
        Language::Vi => format!("tiendo · {n} thay đổi · {at} (giờ VN)"),
        Language::En => format!(
            "tiendo · {n} change{} · {at} (Vietnam time)",
            if n == 1 { "" } else { "s" }
        ),
    };
    let title = if parts > 1 {
        format!("{title} · {part}/{parts}")
    } else {
        title
    };
    m.bold(&title)
}

fn icon(n: &Notice) -> &'static str {
    match (n.change, n.severity) {
        (Change::Resolved, _) => "🟢",
        (Change::Completed, _) => "✅",
        (_, Severity::Critical) => "🔴",
        (_, Severity::Warning) => "🟠",
        (_, Severity::Info) => "🔵",
    }
}

pub fn dataset_name(dataset: &str, lang: Language) -> String {
    let name = match (dataset, lang) {
        ("civil_status", Language::Vi) => "Hộ tịch",
        ("land", Language::Vi) => "Đất đai",
        ("health_book", Language::Vi) => "Sổ sức khỏe điện tử",
        ("labor", Language::Vi) => "Lao động",
        ("other", Language::Vi) => "Dữ liệu khác",
        ("", Language::Vi) => "Thủ tục hành chính",
        ("civil_status", Language::En) => "Civil status",
        ("land", Language::En) => "Land",
        ("health_book", Language::En) => "Health books",
        ("labor", Language::En) => "Labour",
        ("other", Language::En) => "Other data",
        ("", Language::En) => "Public services",
        (other, _) => other,
    };
    name.to_string()
}

fn rule_text(rule: Rule, lang: Language) -> &'static str {
    match (rule, lang) {
        (Rule::Silent, Language::Vi) => "không có dữ liệu mới",
        (Rule::BehindPace, Language::Vi) => "chậm tiến độ",
        (Rule::ProjectedMiss, Language::Vi) => "dự kiến không kịp hạn",
        (Rule::Completed, Language::Vi) => "hoàn thành chỉ tiêu",
        (Rule::OnlineShareLow, Language::Vi) => "tỷ lệ trực tuyến toàn trình thấp",
        (Rule::ProceduresSilent, Language::Vi) => "không có hồ sơ mới",
        (Rule::Silent, Language::En) => "no new data",
        (Rule::BehindPace, Language::En) => "behind pace",
        (Rule::ProjectedMiss, Language::En) => "projected to miss the deadline",
        (Rule::Completed, Language::En) => "target reached",
        (Rule::OnlineShareLow, Language::En) => "low online end-to-end share",
        (Rule::ProceduresSilent, Language::En) => "no new dossiers",
    }
}

fn severity_text(s: Severity, lang: Language) -> &'static str {
    match (s, lang) {
        (Severity::Info, Language::Vi) => "thông tin",
        (Severity::Warning, Language::Vi) => "cảnh báo",
        (Severity::Critical, Language::Vi) => "nghiêm trọng",
        (Severity::Info, Language::En) => "info",
        (Severity::Warning, Language::En) => "warning",
        (Severity::Critical, Language::En) => "critical",
    }
}

fn change_text(n: &Notice, lang: Language) -> String {
    match (n.change, lang) {
        (Change::Firing { previous: None }, Language::Vi) => "mới".into(),
        (Change::Firing { previous: None }, Language::En) => "new".into(),
        (Change::Firing { previous: Some(p) }, _) => format!(
            "{} → {}",
            severity_text(p, lang),
            severity_text(n.severity, lang)
        ),
        (Change::Repeated, Language::Vi) => "vẫn còn".into(),
        (Change::Repeated, Language::En) => "still firing".into(),
        (Change::Resolved, Language::Vi) => "đã hết".into(),
        (Change::Resolved, Language::En) => "resolved".into(),
        (Change::Completed, Language::Vi) => "hoàn thành".into(),
        (Change::Completed, Language::En) => "done".into(),
    }
}

/// 1234567.8 → "1.234.568" (vi) or "1,234,568" (en).
pub fn number(v: f64, lang: Language) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let sep = if lang == Language::Vi { '.' } else { ',' };
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(sep);
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

fn percent(v: f64, lang: Language) -> String {
    let s = format!("{v:.1}");
    if lang == Language::Vi {
        format!("{}%", s.replace('.', ","))
    } else {
        format!("{s}%")
    }
}

fn date(d: NaiveDate) -> String {
    d.format("%d/%m/%Y").to_string()
}

fn time(at: DateTime<Utc>) -> String {
    at.with_timezone(&vn_offset())
        .format("%d/%m/%Y %H:%M")
        .to_string()
}

/// One notice: who, what, what changed, and the figures that say how bad and what it takes.
fn line(n: &Notice, lang: Language, m: Markup) -> String {
    let vi = lang == Language::Vi;
    let f = &n.facts;
    let mut parts: Vec<String> = Vec::new();
    if n.subject.dataset.is_empty() {
        if let Some(share) = f.online_share {
            parts.push(if vi {
                format!(
                    "trực tuyến toàn trình {} trên {} hồ sơ",
                    percent(share * 100.0, lang),
                    number(f.dossiers as f64, lang)
                )
            } else {
                format!(
                    "online end to end {} of {} dossiers",
                    percent(share * 100.0, lang),
                    number(f.dossiers as f64, lang)
                )
            });
        }
    } else if let Some(p) = f.percent {
        let target = f.target.unwrap_or(0) as f64;
        parts.push(if vi {
            format!(
                "đạt {} ({}/{})",
                percent(p, lang),
                number(f.total as f64, lang),
                number(target, lang)
            )
        } else {
            format!(
                "{} done ({}/{})",
                percent(p, lang),
                number(f.total as f64, lang),
                number(target, lang)
            )
        });
        if n.change != Change::Completed {
            let needed = f
                .pace_needed
                .map(|p| number(p, lang))
                .unwrap_or_else(|| "–".into());
            parts.push(if vi {
                format!(
                    "tốc độ 7 ngày {}/ngày, cần {}/ngày",
                    number(f.pace_7d, lang),
                    needed
                )
            } else {
                format!(
                    "7-day pace {}/day, needs {}/day",
                    number(f.pace_7d, lang),
                    needed
                )
            });
            if let (Some(days), Some(deadline)) = (f.days_left, f.deadline) {
                let whole = days.floor() as i64;
                parts.push(match (vi, whole >= 0) {
                    (true, true) => format!("còn {whole} ngày (hạn {})", date(deadline)),
                    (true, false) => format!("quá hạn {} ngày (hạn {})", -whole, date(deadline)),
                    (false, true) => format!("{whole} days left (deadline {})", date(deadline)),
                    (false, false) => {
                        format!("{} days overdue (deadline {})", -whole, date(deadline))
                    }
                });
            }
            parts.push(match (f.projected, vi) {
                (Some(p), true) => format!("dự kiến xong {}", date(p)),
                (Some(p), false) => format!("projected completion {}", date(p)),
                (None, true) => "chưa có tiến độ để dự báo".into(),
                (None, false) => "no progress to project from".into(),
            });
        }
    }
    if matches!(n.rule, Rule::Silent | Rule::ProceduresSilent) {
        parts.push(match (f.last_event, vi) {
            (Some(at), true) => format!("dữ liệu mới nhất {}", time(at)),
            (Some(at), false) => format!("last data {}", time(at)),
            (None, true) => "chưa từng có dữ liệu".into(),
            (None, false) => "never reported".into(),
        });
    }
    let muted = if n.silenced_by.is_some() {
        if vi {
            " (đang tạm tắt)"
        } else {
            " (silenced)"
        }
    } else {
        ""
    };
    format!(
        "{} {} · {} — {} [{}]{}: {}",
        icon(n),
        m.bold(&n.subject.name),
        m.escape(&dataset_name(&n.subject.dataset, lang)),
        m.escape(rule_text(n.rule, lang)),
        m.escape(&change_text(n, lang)),
        muted,
        m.escape(&parts.join("; "))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Facts, Subject};

    fn notice(name: &str, rule: Rule, change: Change) -> Notice {
        let subject = Subject {
            scheme: "63".into(),
            code: "58".into(),
            name: name.into(),
            dataset: "civil_status".into(),
        };
        Notice {
            id: format!("{}@1", subject.alert_key(rule)),
            alert_key: subject.alert_key(rule),
            rule,
            severity: Severity::Critical,
            change,
            subject,
            facts: Facts {
                total: 160_000,
                target: Some(1_000_000),
                deadline: NaiveDate::from_ymd_opt(2024, 12, 31),
                percent: Some(16.0),
                pace_7d: 2_857.1,
                pace_needed: Some(20_160.0),
                days_left: Some(41.6),
                projected: NaiveDate::from_ymd_opt(2025, 6, 2),
                last_event: Some("2024-11-15T02:00:00Z".parse().unwrap()),
                ..Facts::default()
            },
            at: "2024-11-20T03:00:00Z".parse().unwrap(),
            silenced_by: None,
        }
    }

    fn digest(notices: Vec<Notice>) -> Digest {
        Digest {
            id: "d1".into(),
            at: "2024-11-20T03:00:00Z".parse().unwrap(),
            notices,
        }
    }

    #[test]
    fn vietnamese_by_default_with_the_figures_that_matter() {
        let d = digest(vec![notice(
            "Ninh Thuận",
            Rule::BehindPace,
            Change::Firing { previous: None },
        )]);
        let text = render(&d, Language::Vi, Markup::TelegramHtml, 4096).join("\n");
        assert_eq!(
            text,
            "<b>tiendo · 1 thay đổi · 20/11/2024 10:00 (giờ VN)</b>\n\
             🔴 <b>Ninh Thuận</b> · Hộ tịch — chậm tiến độ [mới]: đạt 16,0% (160.000/1.000.000); \
             tốc độ 7 ngày 2.857/ngày, cần 20.160/ngày; còn 41 ngày (hạn 31/12/2024); \
             dự kiến xong 02/06/2025"
        );
        let en = render(&d, Language::En, Markup::Plain, 4096).join("\n");
        assert!(
            en.contains("Civil status — behind pace [new]: 16.0% done (160,000/1,000,000)"),
            "{en}"
        );
    }

    #[test]
    fn names_with_markup_characters_are_escaped_for_each_receiver() {
        let d = digest(vec![notice("A<b>&*_x", Rule::Silent, Change::Resolved)]);
        let tg = render(&d, Language::Vi, Markup::TelegramHtml, 4096).join("\n");
        assert!(tg.contains("<b>A&lt;b&gt;&amp;*_x</b>"), "{tg}");
        assert!(!tg.contains("<b>A<b>"));
        let slack = render(&d, Language::Vi, Markup::Slack, 4096).join("\n");
        assert!(slack.contains("*A&lt;b&gt;&amp;∗_x*"), "{slack}");
        assert!(tg.contains("dữ liệu mới nhất 15/11/2024 09:00"), "{tg}");
    }

    /// Each message within the limit, every line whole, tags balanced, nothing lost.
    #[test]
    fn long_digests_split_at_line_boundaries_under_the_limit() {
        let notices: Vec<Notice> = (0..200)
            .map(|i| {
                let mut n = notice(&format!("Tỉnh <{i}>"), Rule::BehindPace, Change::Repeated);
                n.subject.code = format!("{i:03}");
                n
            })
            .collect();
        let d = digest(notices);
        let parts = render(&d, Language::Vi, Markup::TelegramHtml, 4096);
        assert!(parts.len() > 5, "{}", parts.len());
        let mut seen = 0;
        for (i, p) in parts.iter().enumerate() {
            assert!(length(p) <= 4096, "part {i} has {}", length(p));
            assert_eq!(p.matches("<b>").count(), p.matches("</b>").count());
            assert!(p.starts_with("<b>tiendo · 200 thay đổi"), "{p}");
            assert!(p
                .lines()
                .next()
                .unwrap()
                .ends_with(&format!("{}/{}</b>", i + 1, parts.len())));
            seen += p.lines().skip(1).count();
        }
        assert_eq!(seen, 200);
        for i in 0..200 {
            assert!(parts
                .iter()
                .any(|p| p.contains(&format!("Tỉnh &lt;{i}&gt;</b>"))));
        }
    }

    #[test]
    fn a_single_overlong_line_is_cut_without_breaking_markup() {
        let name = "&".repeat(300);
        let d = digest(vec![notice(&name, Rule::Silent, Change::Resolved)]);
        let parts = render(&d, Language::Vi, Markup::TelegramHtml, 400);
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert!(length(p) <= 400, "{}", length(p));
        let body = p.lines().nth(1).unwrap();
        assert!(!body.contains('<'), "{body}");
        assert!(body.ends_with("&amp;…"), "{body}");
    }

    #[test]
    fn numbers_group_thousands_in_each_language() {
        assert_eq!(number(1_234_567.4, Language::Vi), "1.234.567");
        assert_eq!(number(1_234_567.6, Language::En), "1,234,568");
        assert_eq!(number(-999.0, Language::En), "-999");
    }
}
