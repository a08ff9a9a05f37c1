//! Chat text for a digest: Vietnamese by default, English on request; escaped for each
//! receiver's markup; split before the receiver's length limit at line boundaries, so no
//! markup is ever cut in half. Every line of a message is self-contained markup.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use crate::clock::vn_offset;
use crate::config::Language;
use crate::rules::ledger::{Digest, Kind, Notice, Occasion, Summary, Tally};
use crate::rules::state::Change;
use crate::rules::{Route, Rule, Severity};

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
    pub fn escape(self, text: &str) -> String {
        match self {
            Markup::Plain => text.to_string(),
            Markup::TelegramHtml | Markup::Slack => text
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
        }
    }

    /// `text` in bold, on one line: a line break inside it would let a message split at line
    /// boundaries cut the tag apart (found by fuzzing the split), so breaks become spaces.
    pub fn bold(self, text: &str) -> String {
        let t = self.escape(text).replace(['\r', '\n'], " ");
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

/// How one receiver wants its messages.
#[derive(Debug, Clone)]
pub struct Style {
    pub language: Language,
    pub markup: Markup,
    /// Longest message; a digest is split only when grouping cannot make it fit.
    pub max_chars: usize,
    /// Notices of one rule, dataset and change that share one line from this many on.
    pub group_at: usize,
    /// The status page, linked at the end of every message.
    pub link: Option<String>,
}

impl Style {
    /// No markup, no limit: the generic webhook's `text`, the demo's console.
    pub fn plain(language: Language) -> Style {
        Style {
            language,
            markup: Markup::Plain,
            max_chars: usize::MAX / 2,
            group_at: 5,
            link: None,
        }
    }
}

/// Room kept in each message for the header and the link.
const FRAME: usize = 120;
/// Names shown on a grouped line, at most, tried in turn until the digest fits.
const NAMES: [usize; 4] = [5, 3, 1, 0];

/// Renders `digest` as messages of at most `style.max_chars` each: one whenever it can be.
/// Many notices of one rule, dataset and change share a line; if the digest is still too
/// long, smaller groups are joined too, then fewer names are shown; only then is it split.
pub fn render(digest: &Digest, style: &Style) -> Vec<String> {
    let budget = style.max_chars.saturating_sub(FRAME).max(1);
    if let Some(summary) = &digest.summary {
        // A summary stands for the task force's alerts; feeds' notices (for a receiver of
        // both routes) follow it, a line each.
        let mut lines = summary_lines(digest, summary, style);
        lines.extend(
            digest
                .notices
                .iter()
                .filter(|n| n.rule.route() == Route::Ops)
                .map(|n| fit(line(n, style.language, style.markup), budget)),
        );
        return frame(digest, style, lines);
    }
    let groups = groups(&digest.notices);
    let mut threshold = style.group_at.max(2);
    let mut names = 0;
    let lines = loop {
        let lines: Vec<String> = groups
            .iter()
            .flat_map(|g| {
                if g.len() >= threshold {
                    vec![group_line(g, style, NAMES[names])]
                } else {
                    g.iter()
                        .map(|n| line(n, style.language, style.markup))
                        .collect()
                }
            })
            .map(|l| fit(l, budget))
            .collect();
        let size: usize = lines.iter().map(|l| length(l) + 1).sum();
        if size <= budget {
            break lines;
        }
        // Join the largest group still listed line by line, else show fewer names.
        match groups
            .iter()
            .map(Vec::len)
            .filter(|n| *n < threshold && *n >= 2)
            .max()
        {
            Some(largest) => threshold = largest,
            None if names + 1 < NAMES.len() => names += 1,
            None => break lines,
        }
    };
    frame(digest, style, lines)
}

/// Plain text of the whole digest, unsplit (the generic webhook's `text`).
pub fn plain(digest: &Digest, lang: Language, link: Option<&str>) -> String {
    let style = Style {
        link: link.map(String::from),
        ..Style::plain(lang)
    };
    render(digest, &style).join("\n")
}

/// Text rendered ahead (a report, a reply) as messages of at most `max` characters, split at
/// line boundaries; a line longer than a whole message is cut.
pub fn split(text: &str, max: usize) -> Vec<String> {
    let mut parts = vec![String::new()];
    for line in text.lines() {
        let line = fit(line.to_string(), max);
        let last = parts.last_mut().expect("one part");
        if !last.is_empty() && length(last) + 1 + length(&line) > max {
            parts.push(line);
        } else {
            if !last.is_empty() {
                last.push('\n');
            }
            last.push_str(&line);
        }
    }
    parts
}

/// Header, lines and link, split into messages below the limit at line boundaries.
fn frame(digest: &Digest, style: &Style, lines: Vec<String>) -> Vec<String> {
    let budget = style.max_chars.saturating_sub(FRAME).max(1);
    let mut parts: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = 0;
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
    let link = style.link.as_deref().map(|url| {
        let m = style.markup;
        match style.language {
            Language::Vi => format!("Chi tiết: {}", m.escape(url)),
            Language::En => format!("Details: {}", m.escape(url)),
        }
    });
    parts
        .into_iter()
        .enumerate()
        .map(|(i, lines)| {
            let mut text = header(digest, style.language, style.markup, i + 1, count);
            for l in lines.iter().chain(link.iter().filter(|_| i + 1 == count)) {
                text.push('\n');
                text.push_str(l);
            }
            text
        })
        .collect()
}

/// Notices in message order, those of one rule, dataset and change together, worst first.
fn groups(notices: &[Notice]) -> Vec<Vec<&Notice>> {
    let mut by: BTreeMap<(u8, Rule, &str, Option<Severity>), Vec<&Notice>> = BTreeMap::new();
    for n in notices {
        let previous = match n.change {
            Change::Firing { previous } => previous,
            _ => None,
        };
        by.entry((order(n), n.rule, n.subject.dataset.as_str(), previous))
            .or_default()
            .push(n);
    }
    by.into_values()
        .map(|mut g| {
            g.sort_by(|a, b| {
                worst(a)
                    .total_cmp(&worst(b))
                    .then_with(|| a.subject.name.cmp(&b.subject.name))
            });
            g
        })
        .collect()
}

/// Lower is worse: what a grouped line ranks its provinces by.
fn worst(n: &Notice) -> f64 {
    let f = &n.facts;
    match (n.change, n.rule) {
        (Change::Resolved | Change::Completed, _) => 0.0,
        (_, Rule::Silent | Rule::ProceduresSilent) => {
            f.last_event.map_or(f64::MIN, |at| at.timestamp() as f64)
        }
        (_, Rule::OnlineShareLow) => f.online_share.unwrap_or(0.0),
        (_, Rule::SourceQuiet) => f.last_event.map_or(f64::MIN, |at| at.timestamp() as f64),
        (_, Rule::SourceRejecting) => -f.feed.as_ref().map_or(0.0, |x| x.reject_ratio),
        _ => f.percent.unwrap_or(0.0),
    }
}

/// One line for a whole group: the count and its worst provinces with the figure that
/// ranks them.
fn group_line(group: &[&Notice], style: &Style, names: usize) -> String {
    let (lang, m) = (style.language, style.markup);
    let vi = lang == Language::Vi;
    let n = group[0];
    let shown: Vec<String> = group
        .iter()
        .take(names)
        .map(|n| {
            let figure = match (n.change, n.rule) {
                (Change::Resolved | Change::Completed, _) => None,
                (_, Rule::Silent | Rule::ProceduresSilent | Rule::SourceQuiet) => {
                    Some(match n.facts.last_event {
                        Some(at) => day(at),
                        None if vi => "chưa có dữ liệu".into(),
                        None => "never reported".into(),
                    })
                }
                (_, Rule::SourceRejecting) => n
                    .facts
                    .feed
                    .as_ref()
                    .map(|x| percent(x.reject_ratio * 100.0, lang)),
                (_, Rule::OnlineShareLow) => n.facts.online_share.map(|s| percent(s * 100.0, lang)),
                _ => n.facts.percent.map(|p| percent(p, lang)),
            };
            let name = m.bold(&n.subject.name);
            match figure {
                Some(f) => format!("{name} {}", m.escape(&f)),
                None => name,
            }
        })
        .collect();
    let ranked = match (n.change, n.rule, vi) {
        (Change::Resolved | Change::Completed, ..) => "",
        (_, Rule::Silent | Rule::ProceduresSilent | Rule::SourceQuiet, true) => "lâu nhất ",
        (_, Rule::Silent | Rule::ProceduresSilent | Rule::SourceQuiet, false) => "longest ",
        (_, Rule::SourceRejecting, true) => "cao nhất ",
        (_, Rule::SourceRejecting, false) => "highest ",
        (.., true) => "thấp nhất ",
        (.., false) => "lowest ",
    };
    let count = match (n.subject.is_source(), vi) {
        (false, true) => format!("{} tỉnh", group.len()),
        (false, false) => format!("{} provinces", group.len()),
        (true, true) => format!("{} nguồn", group.len()),
        (true, false) => format!("{} sources", group.len()),
    };
    let mut text = format!(
        "{} {} — {} [{}]: {}",
        icon(n),
        m.escape(&dataset_name(&n.subject.dataset, lang)),
        m.escape(rule_text(n.rule, lang)),
        m.escape(&change_text(n, lang)),
        count
    );
    if !shown.is_empty() {
        text.push_str(" — ");
        text.push_str(ranked);
        text.push_str(&shown.join(", "));
        if shown.len() < group.len() {
            text.push_str(", …");
        }
    }
    text
}

/// What a summary says: how many provinces have alerts, and how many alerts of each rule
/// and dataset fire, by severity.
fn summary_lines(digest: &Digest, summary: &Summary, style: &Style) -> Vec<String> {
    let (lang, m) = (style.language, style.markup);
    let vi = lang == Language::Vi;
    let mut lines = vec![match (summary.provinces, vi) {
        (0, true) => "Không có cảnh báo nào.".to_string(),
        (0, false) => "No alerts.".to_string(),
        (n, true) => format!("{n} tỉnh/thành đang có cảnh báo:"),
        (n, false) => format!("{n} provinces with alerts:"),
    }];
    let mut by: Vec<((Rule, &str), Vec<&Tally>)> = Vec::new();
    for t in &summary.tallies {
        match by
            .iter_mut()
            .find(|(k, _)| *k == (t.rule, t.dataset.as_str()))
        {
            Some((_, v)) => v.push(t),
            None => by.push(((t.rule, t.dataset.as_str()), vec![t])),
        }
    }
    for ((rule, dataset), tallies) in by {
        let total: usize = tallies.iter().map(|t| t.count).sum();
        let worst = tallies
            .iter()
            .map(|t| t.severity)
            .max()
            .unwrap_or(Severity::Info);
        let icon = match (rule, worst) {
            (Rule::Completed, _) => "✅",
            (_, Severity::Critical) => "🔴",
            (_, Severity::Warning) => "🟠",
            (_, Severity::Info) => "🔵",
        };
        let count = if vi {
            format!("{total} tỉnh")
        } else {
            format!("{total} provinces")
        };
        let split = if tallies.len() > 1 {
            let parts: Vec<String> = tallies
                .iter()
                .map(|t| format!("{} {}", t.count, severity_text(t.severity, lang)))
                .collect();
            format!(" ({})", parts.join(", "))
        } else {
            String::new()
        };
        lines.push(format!(
            "{icon} {} — {}: {}{}",
            m.escape(&dataset_name(dataset, lang)),
            m.escape(rule_text(rule, lang)),
            count,
            split
        ));
    }
    if summary.occasion == Occasion::Resumed {
        // The task force's changes only: a receiver of both routes also has feeds' notices.
        let count = |f: fn(&Change) -> bool| {
            digest
                .notices
                .iter()
                .filter(|n| n.rule.route() == Route::Taskforce && f(&n.change))
                .count()
        };
        let new = count(|c| matches!(c, Change::Firing { previous: None }));
        let gone = count(|c| matches!(c, Change::Resolved));
        lines.push(if vi {
            format!("Thay đổi trong lúc chờ số liệu: {new} cảnh báo mới, {gone} đã hết.")
        } else {
            format!("While figures were catching up: {new} new alerts, {gone} resolved.")
        });
    }
    lines
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
        (Change::Flapping, _) => 4,
        (Change::Resolved, _) => 5,
        (Change::Completed, _) => 6,
    }
}

fn header(d: &Digest, lang: Language, m: Markup, part: usize, parts: usize) -> String {
    const FULL: &str = "%d/%m/%Y %H:%M";
    let at = d.at.with_timezone(&vn_offset());
    // A merged backlog spans its first digest's time to its last's (the day once if the same).
    let at = match d.since.map(|t| t.with_timezone(&vn_offset())) {
        Some(since) => {
            let end = if since.date_naive() == at.date_naive() {
                "%H:%M"
            } else {
                FULL
            };
            format!("{} – {}", since.format(FULL), at.format(end))
        }
        None => at.format(FULL).to_string(),
    };
    let n = d.notices.len();
    let feeds = n > 0 && d.notices.iter().all(|n| n.subject.is_source());
    let title = match (d.summary.as_ref().map(|s| s.occasion), lang) {
        _ if d.kind == Kind::Firing => match lang {
            Language::Vi => format!("tiendo · {n} cảnh báo đang bật · {at} (giờ VN)"),
            Language::En => format!(
                "tiendo · {n} alert{} firing · {at} (Vietnam time)",
                if n == 1 { "" } else { "s" }
            ),
        },
        (Some(Occasion::Started), Language::Vi) => {
            format!("tiendo · bắt đầu theo dõi · {at} (giờ VN)")
        }
        (Some(Occasion::Started), Language::En) => {
            format!("tiendo · now watching · {at} (Vietnam time)")
        }
        (Some(Occasion::Resumed), Language::Vi) => {
            format!("tiendo · số liệu đã cập nhật đầy đủ · {at} (giờ VN)")
        }
        (Some(Occasion::Resumed), Language::En) => {
            format!("tiendo · figures complete again · {at} (Vietnam time)")
        }
        // Feeds' notices go to ops; the header says so, in case ops share a chat.
        (None, Language::Vi) if feeds => {
            format!("tiendo · nguồn dữ liệu · {n} thay đổi · {at} (giờ VN)")
        }
        (None, Language::En) if feeds => format!(
            "tiendo · source feeds · {n} change{} · {at} (Vietnam time)",
            if n == 1 { "" } else { "s" }
        ),
        (None, Language::Vi) => format!("tiendo · {n} thay đổi · {at} (giờ VN)"),
        (None, Language::En) => format!(
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

pub(crate) fn icon(n: &Notice) -> &'static str {
    match (n.change, n.severity) {
        (Change::Resolved, _) => "🟢",
        (Change::Flapping, _) => "🟡",
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
        (crate::rules::FEED, Language::Vi) => "Nguồn dữ liệu",
        ("civil_status", Language::En) => "Civil status",
        ("land", Language::En) => "Land",
        ("health_book", Language::En) => "Health books",
        ("labor", Language::En) => "Labour",
        ("other", Language::En) => "Other data",
        ("", Language::En) => "Public services",
        (crate::rules::FEED, Language::En) => "Source feed",
        (other, _) => other,
    };
    name.to_string()
}

pub(crate) fn rule_text(rule: Rule, lang: Language) -> &'static str {
    match (rule, lang) {
        (Rule::Silent, Language::Vi) => "không có dữ liệu mới",
        (Rule::BehindPace, Language::Vi) => "chậm tiến độ",
        (Rule::ProjectedMiss, Language::Vi) => "dự kiến không kịp hạn",
        (Rule::Completed, Language::Vi) => "hoàn thành chỉ tiêu",
        (Rule::OnlineShareLow, Language::Vi) => "tỷ lệ trực tuyến toàn trình thấp",
        (Rule::ProceduresSilent, Language::Vi) => "không có hồ sơ mới",
        (Rule::SourceQuiet, Language::Vi) => "không gửi tin",
        (Rule::SourceRejecting, Language::Vi) => "nhiều tin bị từ chối",
        (Rule::Silent, Language::En) => "no new data",
        (Rule::BehindPace, Language::En) => "behind pace",
        (Rule::ProjectedMiss, Language::En) => "projected to miss the deadline",
        (Rule::Completed, Language::En) => "target reached",
        (Rule::OnlineShareLow, Language::En) => "low online end-to-end share",
        (Rule::ProceduresSilent, Language::En) => "no new dossiers",
        (Rule::SourceQuiet, Language::En) => "sending nothing",
        (Rule::SourceRejecting, Language::En) => "many messages rejected",
    }
}

pub(crate) fn severity_text(s: Severity, lang: Language) -> &'static str {
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
        (Change::Flapping, Language::Vi) => "dao động, giữ cảnh báo".into(),
        (Change::Flapping, Language::En) => "flapping, held firing".into(),
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

/// `v` percent to one decimal. Below 100 it never shows as 100,0: a province at 99.96% has
/// not finished, and the chat, the report and the page must not say it has.
pub(crate) fn percent(v: f64, lang: Language) -> String {
    let s = format!("{:.1}", below_done(v, 1));
    if lang == Language::Vi {
        format!("{}%", s.replace('.', ","))
    } else {
        format!("{s}%")
    }
}

/// `v` to be shown with `decimals` decimals: below 100, at most what rounds to just under it.
pub fn below_done(v: f64, decimals: i32) -> f64 {
    if v < 100.0 {
        v.min(100.0 - 0.6 * 10f64.powi(-decimals))
    } else {
        v
    }
}

pub(crate) fn date(d: NaiveDate) -> String {
    d.format("%d/%m/%Y").to_string()
}

fn day(at: DateTime<Utc>) -> String {
    at.with_timezone(&vn_offset()).format("%d/%m").to_string()
}

pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.with_timezone(&vn_offset())
        .format("%d/%m/%Y %H:%M")
        .to_string()
}

/// A source system's day: messages, rejects and why, and when it was last heard from.
fn feed_text(feed: &crate::rules::Feed, last: Option<DateTime<Utc>>, lang: Language) -> String {
    let vi = lang == Language::Vi;
    let mut out = if vi {
        format!(
            "24 giờ qua {} tin, {} bị từ chối ({})",
            number(feed.messages as f64, lang),
            number(feed.rejected as f64, lang),
            percent(feed.reject_ratio * 100.0, lang)
        )
    } else {
        format!(
            "last 24 hours {} messages, {} rejected ({})",
            number(feed.messages as f64, lang),
            number(feed.rejected as f64, lang),
            percent(feed.reject_ratio * 100.0, lang)
        )
    };
    if !feed.reasons.is_empty() {
        let reasons: Vec<String> = feed
            .reasons
            .iter()
            .map(|(r, n)| format!("{r} {}", number(*n as f64, lang)))
            .collect();
        out.push_str(if vi { "; lý do: " } else { "; reasons: " });
        out.push_str(&reasons.join(", "));
    }
    out.push_str(&match (last, vi) {
        (Some(at), true) => format!("; tin cuối {}", time(at)),
        (Some(at), false) => format!("; last message {}", time(at)),
        (None, true) => "; chưa từng gửi tin".into(),
        (None, false) => "; never sent".into(),
    });
    out
}

/// One notice: who, what, what changed, and the figures that say how bad and what it takes.
fn line(n: &Notice, lang: Language, m: Markup) -> String {
    let vi = lang == Language::Vi;
    let f = &n.facts;
    let mut parts: Vec<String> = Vec::new();
    if let Some(feed) = &f.feed {
        parts.push(feed_text(feed, f.last_event, lang));
    } else if n.subject.dataset.is_empty() {
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

    #[test]
    fn an_unfinished_percent_never_reads_100() {
        assert_eq!(percent(99.96, Language::Vi), "99,9%");
        assert_eq!(percent(61.66, Language::Vi), "61,7%");
        assert_eq!(percent(100.0, Language::Vi), "100,0%");
        assert_eq!(percent(112.5, Language::En), "112.5%");
        assert_eq!(format!("{:.0}", below_done(99.5, 0)), "99");
    }

    // Found by fuzzing (examples/fuzz.rs, target `text`): a name holding "\r\n" put a line
    // break inside <b>…</b>, and a split at line boundaries left parts with a tag unclosed.
    #[test]
    fn a_bold_name_with_a_line_break_stays_on_one_line() {
        let m = Markup::TelegramHtml;
        let text = format!("{}\n{}", m.bold("tiendo"), m.bold("🟢 Đắk\r\nLắk"));
        for part in split(&text, 20) {
            assert_eq!(
                part.matches("<b>").count(),
                part.matches("</b>").count(),
                "{part:?}"
            );
        }
        assert_eq!(m.bold("a\nb"), "<b>a b</b>");
        assert_eq!(Markup::Slack.bold("a\r\nb"), "*a  b*");
    }

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

    /// `n` provinces behind pace on `dataset`, the i-th at 10+i percent.
    fn behind(n: usize, dataset: &str, change: Change) -> Vec<Notice> {
        (0..n)
            .map(|i| {
                let mut x = notice(&format!("Tỉnh {i:02}"), Rule::BehindPace, change);
                x.subject.code = format!("{i:02}");
                x.subject.dataset = dataset.into();
                x.alert_key = x.subject.alert_key(Rule::BehindPace);
                x.facts.percent = Some(10.0 + i as f64);
                x
            })
            .collect()
    }

    fn digest(notices: Vec<Notice>) -> Digest {
        Digest {
            id: "d1".into(),
            at: "2024-11-20T03:00:00Z".parse().unwrap(),
            notices,
            summary: None,
            ..Digest::default()
        }
    }

    fn style(language: Language, markup: Markup, max_chars: usize) -> Style {
        Style {
            language,
            markup,
            max_chars,
            group_at: 5,
            link: None,
        }
    }

    fn telegram(max_chars: usize) -> Style {
        style(Language::Vi, Markup::TelegramHtml, max_chars)
    }

    #[test]
    fn vietnamese_by_default_with_the_figures_that_matter() {
        let d = digest(vec![notice(
            "Ninh Thuận",
            Rule::BehindPace,
            Change::Firing { previous: None },
        )]);
        let text = render(&d, &telegram(4096)).join("\n");
        assert_eq!(
            text,
            "<b>tiendo · 1 thay đổi · 20/11/2024 10:00 (giờ VN)</b>\n\
             🔴 <b>Ninh Thuận</b> · Hộ tịch — chậm tiến độ [mới]: đạt 16,0% (160.000/1.000.000); \
             tốc độ 7 ngày 2.857/ngày, cần 20.160/ngày; còn 41 ngày (hạn 31/12/2024); \
             dự kiến xong 02/06/2025"
        );
        let en = render(&d, &style(Language::En, Markup::Plain, 4096)).join("\n");
        assert!(
            en.contains("Civil status — behind pace [new]: 16.0% done (160,000/1,000,000)"),
            "{en}"
        );
    }

    #[test]
    fn a_merged_backlog_is_headed_with_its_span() {
        let mut d = digest(vec![notice(
            "Ninh Thuận",
            Rule::BehindPace,
            Change::Firing { previous: None },
        )]);
        let head = |d: &Digest| {
            render(d, &telegram(4096))[0]
                .lines()
                .next()
                .unwrap()
                .to_string()
        };
        d.since = Some("2024-11-20T01:15:00Z".parse().unwrap());
        assert_eq!(
            head(&d),
            "<b>tiendo · 1 thay đổi · 20/11/2024 08:15 – 10:00 (giờ VN)</b>"
        );
        d.since = Some("2024-11-19T01:15:00Z".parse().unwrap());
        assert_eq!(
            head(&d),
            "<b>tiendo · 1 thay đổi · 19/11/2024 08:15 – 20/11/2024 10:00 (giờ VN)</b>"
        );
    }

    #[test]
    fn names_with_markup_characters_are_escaped_for_each_receiver() {
        let d = digest(vec![notice("A<b>&*_x", Rule::Silent, Change::Resolved)]);
        let tg = render(&d, &telegram(4096)).join("\n");
        assert!(tg.contains("<b>A&lt;b&gt;&amp;*_x</b>"), "{tg}");
        assert!(!tg.contains("<b>A<b>"));
        let slack = render(&d, &style(Language::Vi, Markup::Slack, 4096)).join("\n");
        assert!(slack.contains("*A&lt;b&gt;&amp;∗_x*"), "{slack}");
        assert!(tg.contains("dữ liệu mới nhất 15/11/2024 09:00"), "{tg}");
    }

    #[test]
    fn many_notices_of_one_rule_and_dataset_become_one_line_with_the_worst() {
        let mut notices = behind(61, "health_book", Change::Firing { previous: None });
        notices.push(notice(
            "Ninh Thuận",
            Rule::Silent,
            Change::Firing { previous: None },
        ));
        let d = digest(notices);
        let parts = render(&d, &telegram(4096));
        assert_eq!(parts.len(), 1);
        let lines: Vec<&str> = parts[0].lines().collect();
        assert_eq!(lines.len(), 3, "{}", parts[0]);
        // Rules in their order (silent first), each group worst first.
        assert!(lines[1].starts_with("🔴 <b>Ninh Thuận</b> · Hộ tịch — không có dữ liệu mới"));
        assert_eq!(
            lines[2],
            "🔴 Sổ sức khỏe điện tử — chậm tiến độ [mới]: 61 tỉnh — thấp nhất \
             <b>Tỉnh 00</b> 10,0%, <b>Tỉnh 01</b> 11,0%, <b>Tỉnh 02</b> 12,0%, \
             <b>Tỉnh 03</b> 13,0%, <b>Tỉnh 04</b> 14,0%, …"
        );
        // Below the threshold, each province keeps its own line.
        let d = digest(behind(4, "land", Change::Resolved));
        assert_eq!(render(&d, &telegram(4096))[0].lines().count(), 5);
        let en = render(&d, &style(Language::En, Markup::Plain, 4096)).join("\n");
        assert!(en.contains("Land — behind pace [resolved]"), "{en}");
    }

    #[test]
    fn a_digest_is_grouped_further_rather_than_split() {
        // Three severity changes on each of five datasets and three rules: fifteen groups of
        // three, too long line by line for 2,000 characters.
        let mut notices = Vec::new();
        for dataset in ["civil_status", "land", "health_book", "labor", "other"] {
            for rule in [Rule::BehindPace, Rule::ProjectedMiss, Rule::Silent] {
                for mut n in behind(
                    3,
                    dataset,
                    Change::Firing {
                        previous: Some(Severity::Warning),
                    },
                ) {
                    n.rule = rule;
                    n.alert_key = n.subject.alert_key(rule);
                    notices.push(n);
                }
            }
        }
        let d = digest(notices);
        let loose = style(Language::Vi, Markup::TelegramHtml, 40_000);
        assert_eq!(render(&d, &loose)[0].lines().count(), 46);
        let parts = render(&d, &telegram(2_000));
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert!(length(&parts[0]) <= 2_000);
        assert!(parts[0].lines().count() < 46, "{}", parts[0]);
        assert!(
            parts[0].contains("[cảnh báo → nghiêm trọng]: 3 tỉnh"),
            "{}",
            parts[0]
        );
    }

    /// When even grouped lines do not fit, the digest is split: each message within the limit,
    /// every line whole, tags balanced, nothing lost.
    #[test]
    fn what_grouping_cannot_shorten_is_split_at_line_boundaries() {
        let mut notices = Vec::new();
        for dataset in ["civil_status", "land", "health_book", "labor", "other"] {
            for change in [
                Change::Firing { previous: None },
                Change::Repeated,
                Change::Resolved,
            ] {
                notices.extend(behind(6, dataset, change));
            }
        }
        let d = digest(notices);
        let parts = render(&d, &telegram(400));
        assert!(parts.len() > 1, "{}", parts.len());
        let mut lines = 0;
        for (i, p) in parts.iter().enumerate() {
            assert!(length(p) <= 400, "part {i} has {}", length(p));
            assert_eq!(p.matches("<b>").count(), p.matches("</b>").count());
            assert!(p.starts_with("<b>tiendo · 90 thay đổi"), "{p}");
            assert!(p
                .lines()
                .next()
                .unwrap()
                .ends_with(&format!("{}/{}</b>", i + 1, parts.len())));
            lines += p.lines().skip(1).count();
        }
        assert_eq!(lines, 15, "one line per dataset and change");
    }

    #[test]
    fn a_single_overlong_line_is_cut_without_breaking_markup() {
        let name = "&".repeat(300);
        let d = digest(vec![notice(&name, Rule::Silent, Change::Resolved)]);
        let parts = render(&d, &telegram(400));
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert!(length(p) <= 400, "{}", length(p));
        let body = p.lines().nth(1).unwrap();
        assert!(!body.contains('<'), "{body}");
        assert!(body.ends_with("&amp;…"), "{body}");
    }

    #[test]
    fn a_summary_counts_provinces_per_rule_and_severity_and_links_the_page() {
        let tally = |rule, dataset: &str, severity, count| Tally {
            rule,
            dataset: dataset.into(),
            severity,
            count,
        };
        let mut d = digest(behind(
            10,
            "civil_status",
            Change::Firing { previous: None },
        ));
        d.summary = Some(Summary {
            occasion: Occasion::Started,
            provinces: 12,
            tallies: vec![
                tally(Rule::BehindPace, "civil_status", Severity::Critical, 6),
                tally(Rule::BehindPace, "civil_status", Severity::Warning, 4),
                tally(Rule::OnlineShareLow, "", Severity::Warning, 3),
                tally(Rule::Completed, "civil_status", Severity::Info, 14),
            ],
        });
        let mut s = telegram(4096);
        s.link = Some("https://tiendo.example/?a=1&b=2".into());
        let parts = render(&d, &s);
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0],
            "<b>tiendo · bắt đầu theo dõi · 20/11/2024 10:00 (giờ VN)</b>\n\
             12 tỉnh/thành đang có cảnh báo:\n\
             🔴 Hộ tịch — chậm tiến độ: 10 tỉnh (6 nghiêm trọng, 4 cảnh báo)\n\
             🟠 Thủ tục hành chính — tỷ lệ trực tuyến toàn trình thấp: 3 tỉnh\n\
             ✅ Hộ tịch — hoàn thành chỉ tiêu: 14 tỉnh\n\
             Chi tiết: https://tiendo.example/?a=1&amp;b=2"
        );
        d.summary.as_mut().unwrap().occasion = Occasion::Resumed;
        let en = render(&d, &style(Language::En, Markup::Plain, 4096)).join("\n");
        assert!(en.starts_with("tiendo · figures complete again"), "{en}");
        assert!(
            en.ends_with("While figures were catching up: 10 new alerts, 0 resolved."),
            "{en}"
        );
    }

    /// A receiver of both routes gets the task force's start summary and feeds' notices in
    /// one message: the summary does not swallow the feeds.
    #[test]
    fn a_summary_keeps_the_feeds_notices_of_the_same_evaluation() {
        let mut feed = notice(
            "hotich",
            Rule::SourceQuiet,
            Change::Firing { previous: None },
        );
        feed.subject = Subject::source("hotich");
        feed.alert_key = feed.subject.alert_key(Rule::SourceQuiet);
        feed.facts.feed = Some(crate::rules::Feed::default());
        let mut d = digest(vec![
            notice(
                "Ninh Thuận",
                Rule::BehindPace,
                Change::Firing { previous: None },
            ),
            feed,
        ]);
        d.summary = Some(Summary {
            occasion: Occasion::Started,
            provinces: 1,
            tallies: vec![Tally {
                rule: Rule::BehindPace,
                dataset: "civil_status".into(),
                severity: Severity::Critical,
                count: 1,
            }],
        });
        let parts = render(&d, &telegram(4096));
        assert_eq!(parts.len(), 1, "{parts:#?}");
        let lines: Vec<&str> = parts[0].lines().collect();
        assert_eq!(lines[1], "1 tỉnh/thành đang có cảnh báo:");
        assert!(
            lines[2].contains("Hộ tịch — chậm tiến độ: 1 tỉnh"),
            "{lines:#?}"
        );
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[3].contains("<b>hotich</b> · Nguồn dữ liệu"),
            "{lines:#?}"
        );
        assert!(
            !parts[0].contains("Ninh Thuận"),
            "the summary counts provinces"
        );
        // Back from catching up: the task force's count leaves the feed out.
        d.summary.as_mut().unwrap().occasion = Occasion::Resumed;
        let text = render(&d, &telegram(4096)).join("\n");
        assert!(
            text.contains("Thay đổi trong lúc chờ số liệu: 1 cảnh báo mới, 0 đã hết."),
            "{text}"
        );
        assert!(text.contains("<b>hotich</b> · Nguồn dữ liệu"), "{text}");
    }

    #[test]
    fn numbers_group_thousands_in_each_language() {
        assert_eq!(number(1_234_567.4, Language::Vi), "1.234.567");
        assert_eq!(number(1_234_567.6, Language::En), "1,234,568");
        assert_eq!(number(-999.0, Language::En), "-999");
    }
}
