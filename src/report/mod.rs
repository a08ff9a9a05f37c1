//! `tiendo report`: the task force's weekly classification, from live figures. For each
//! dataset with targets, every province is completed, basically completed, on track, or at
//! risk of missing its deadline (with percent done and projected date; one that has not
//! started is at risk, as the task force counts it); with counts, lists and national totals,
//! for the 34 current or the 63 legacy units. Rendered as a terminal table, Markdown, HTML
//! with a chart (inline SVG, no external assets) or JSON, in Vietnamese or English. Each
//! report also compares every province with one week earlier ([`weekly`]): the change in
//! points, the class moves, the top movers and the stalled.

pub mod schedule;
pub mod weekly;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::config::Language;
use crate::notify::message::{dataset_name, number, percent, Markup};
use crate::rules::Evaluation;
use crate::status::{Status, View};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Completed,
    BasicallyCompleted,
    OnTrack,
    AtRisk,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Completed,
        Class::BasicallyCompleted,
        Class::OnTrack,
        Class::AtRisk,
    ];

    pub fn label(self, lang: Language) -> &'static str {
        match (self, lang) {
            (Class::Completed, Language::Vi) => "Đã hoàn thành",
            (Class::BasicallyCompleted, Language::Vi) => "Cơ bản hoàn thành",
            (Class::OnTrack, Language::Vi) => "Đúng tiến độ",
            (Class::AtRisk, Language::Vi) => "Nguy cơ chậm",
            (Class::Completed, Language::En) => "Completed",
            (Class::BasicallyCompleted, Language::En) => "Basically completed",
            (Class::OnTrack, Language::En) => "On track",
            (Class::AtRisk, Language::En) => "At risk",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Class::Completed => "#2e7d32",
            Class::BasicallyCompleted => "#7cb342",
            Class::OnTrack => "#1e88e5",
            Class::AtRisk => "#e53935",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The unit table of `code` ("34" or "63"): a 63-unit report may list both tables' rows.
    pub scheme: &'static str,
    pub code: String,
    pub name: String,
    pub total: i64,
    pub target: u64,
    pub percent: f64,
    pub deadline: NaiveDate,
    /// Completion date at the projection window's rate; `None` without recent progress.
    pub projected: Option<NaiveDate>,
}

impl Entry {
    /// Whether it counted anything: one that did not is listed as not started, not at 0%.
    fn started(&self) -> bool {
        self.total > 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetReport {
    pub dataset: String,
    pub name: String,
    pub total: i64,
    pub target: u64,
    pub percent: f64,
    /// Provinces per class, most behind first.
    pub classes: BTreeMap<Class, Vec<Entry>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub as_of: DateTime<Utc>,
    pub view: View,
    pub language: Language,
    /// Share of target from which a province counts as basically completed.
    pub basically_done: f64,
    pub datasets: Vec<DatasetReport>,
    /// The week before, when the day figures reach back that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub week: Option<weekly::Week>,
}

impl Report {
    /// Classifies every province of `status` with a target, using the projections in `eval`.
    pub fn build(
        status: &Status,
        eval: &Evaluation,
        basically_done: f64,
        lang: Language,
    ) -> Report {
        let mut datasets = Vec::new();
        for name in &status.datasets {
            let mut classes: BTreeMap<Class, Vec<Entry>> =
                Class::ALL.iter().map(|c| (*c, Vec::new())).collect();
            let (mut total, mut target) = (0i64, 0u64);
            for row in &status.provinces {
                let d = &row.datasets[name];
                let (Some(t), Some(deadline)) = (d.target, d.deadline) else {
                    continue;
                };
                let key = format!("{}:{}:{}", row.scheme, row.code, name);
                let projected = eval.facts.get(&key).and_then(|(_, f)| f.projected);
                let percent = d.total as f64 * 100.0 / t as f64;
                // Nothing recorded yet is at risk, not a class of its own: the task force's
                // "10 at risk" counted Kiên Giang, which had not started, and its four
                // classes cover every province.
                let class = if percent >= 100.0 {
                    Class::Completed
                } else if percent >= basically_done * 100.0 {
                    Class::BasicallyCompleted
                } else if projected.is_none_or(|p| p > deadline) {
                    Class::AtRisk
                } else {
                    Class::OnTrack
                };
                total += d.total.min(t as i64);
                target += t;
                classes.entry(class).or_default().push(Entry {
                    scheme: row.scheme,
                    code: row.code.clone(),
                    name: row.name.clone(),
                    total: d.total,
                    target: t,
                    percent,
                    deadline,
                    projected,
                });
            }
            if target == 0 {
                continue;
            }
            for list in classes.values_mut() {
                list.sort_by(|a, b| a.percent.total_cmp(&b.percent).then(a.name.cmp(&b.name)));
            }
            datasets.push(DatasetReport {
                dataset: name.clone(),
                name: dataset_name(name, lang),
                total,
                target,
                percent: total as f64 * 100.0 / target as f64,
                classes,
            });
        }
        Report {
            as_of: status.as_of,
            view: status.view,
            language: lang,
            basically_done,
            datasets,
            week: None,
        }
    }

    fn units(&self) -> &'static str {
        match (self.view, self.language) {
            (View::Current34, Language::Vi) => "34 tỉnh, thành phố",
            (View::Legacy63, Language::Vi) => "63 tỉnh, thành phố (trước 1/7/2025)",
            (View::Current34, Language::En) => "34 provinces",
            (View::Legacy63, Language::En) => "63 provinces (before 1 July 2025)",
        }
    }

    pub fn title(&self) -> String {
        let at = self
            .as_of
            .with_timezone(&crate::clock::vn_offset())
            .format("%d/%m/%Y %H:%M");
        match self.language {
            Language::Vi => format!("Tiến độ số hóa Đề án 06 · {} · {at}", self.units()),
            Language::En => format!("Đề án 06 digitization progress · {} · {at}", self.units()),
        }
    }

    /// `Ninh Thuận 16,0% (dự kiến 02/06/2025)` for at-risk lists, else `Ninh Thuận 16,0%`.
    fn entry(&self, e: &Entry, class: Class) -> String {
        let pct = percent(e.percent, self.language);
        if class != Class::AtRisk {
            return format!("{} {pct}", e.name);
        }
        let vi = self.language == Language::Vi;
        let when = match e.projected {
            _ if !e.started() => not_started(self.language).into(),
            Some(p) if vi => format!("dự kiến {}", p.format("%d/%m/%Y")),
            Some(p) => format!("projected {}", p.format("%d/%m/%Y")),
            None if vi => "chưa có tiến độ".into(),
            None => "no recent progress".into(),
        };
        format!("{} {pct} ({when})", e.name)
    }

    fn national(&self, d: &DatasetReport) -> String {
        match self.language {
            Language::Vi => format!(
                "Toàn quốc: {}/{} ({})",
                number(d.total as f64, self.language),
                number(d.target as f64, self.language),
                percent(d.percent, self.language)
            ),
            Language::En => format!(
                "National: {}/{} ({})",
                number(d.total as f64, self.language),
                number(d.target as f64, self.language),
                percent(d.percent, self.language)
            ),
        }
    }

    /// For a terminal: one table per dataset, a row per class.
    pub fn table(&self) -> String {
        let mut out = format!("{}\n", self.title());
        for d in &self.datasets {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
            t.set_header(vec![d.name.clone(), String::new(), self.national(d)]);
            for (class, list) in &d.classes {
                let names: Vec<String> = list.iter().map(|e| self.entry(e, *class)).collect();
                t.add_row(vec![
                    class.label(self.language).to_string(),
                    list.len().to_string(),
                    names.join(", "),
                ]);
            }
            let _ = write!(out, "\n{t}\n");
            for line in self.week_lines(&d.dataset, Markup::Plain) {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("# {}\n", self.title());
        for d in &self.datasets {
            let _ = write!(out, "\n## {}\n\n{}\n\n", d.name, self.national(d));
            let (class_h, count_h, who_h) = match self.language {
                Language::Vi => ("Mức", "Số tỉnh", "Tỉnh, thành phố"),
                Language::En => ("Class", "Provinces", "Which"),
            };
            let _ = writeln!(
                out,
                "| {class_h} | {count_h} | {who_h} |\n| --- | ---: | --- |"
            );
            for (class, list) in &d.classes {
                let names: Vec<String> = list
                    .iter()
                    .map(|e| self.entry(e, *class).replace('|', "\\|"))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    class.label(self.language),
                    list.len(),
                    names.join(", ")
                );
            }
            let week = self.week_lines(&d.dataset, Markup::Plain);
            if !week.is_empty() {
                out.push('\n');
            }
            for line in week {
                let _ = writeln!(out, "- {}", line.replace('|', "\\|"));
            }
        }
        out
    }

    /// The dataset's week, a line each: national change, class moves, top movers, stalled.
    fn week_lines(&self, dataset: &str, m: Markup) -> Vec<String> {
        let Some(week) = &self.week else {
            return Vec::new();
        };
        let Some(w) = week.datasets.iter().find(|d| d.dataset == dataset) else {
            return Vec::new();
        };
        let lang = self.language;
        let vi = lang == Language::Vi;
        let pts = |p: f64| points(p, lang);
        let since = week.since.format("%d/%m/%Y");
        let mut lines = vec![if vi {
            format!(
                "Trong tuần (so với hết ngày {since}): {} → {} ({} điểm)",
                percent(w.percent_then, lang),
                percent(w.percent_now, lang),
                pts(w.percent_now - w.percent_then)
            )
        } else {
            format!(
                "This week (since the end of {since}): {} → {} ({} points)",
                percent(w.percent_then, lang),
                percent(w.percent_now, lang),
                pts(w.percent_now - w.percent_then)
            )
        }];
        let moved = w.moved();
        if !moved.is_empty() {
            let list = weekly::names(&moved, |p| {
                format!(
                    "{}: {} → {}",
                    m.bold(&p.name),
                    m.escape(&p.class_then.label(lang).to_lowercase()),
                    m.escape(&p.class_now.label(lang).to_lowercase())
                )
            });
            lines.push(if vi {
                format!("Chuyển nhóm: {list}")
            } else {
                format!("Moved: {list}")
            });
        }
        let top = w.top(5);
        if !top.is_empty() {
            let list = weekly::names(&top, |p| format!("{} {}", m.bold(&p.name), pts(p.points)));
            lines.push(if vi {
                format!("Tăng nhiều nhất: {list}")
            } else {
                format!("Top movers: {list}")
            });
        }
        let stalled = w.stalled();
        if !stalled.is_empty() {
            let list = weekly::names(&stalled, |p| {
                format!("{} {}", m.bold(&p.name), percent(p.percent_now, lang))
            });
            lines.push(if vi {
                format!("Đứng yên: {list}")
            } else {
                format!("Stalled: {list}")
            });
        }
        lines
    }

    /// The report as a chat message: per dataset the classes, the at-risk provinces and the
    /// week; `late` says when a scheduled report should have gone out.
    pub fn chat(&self, m: Markup, late: Option<DateTime<Utc>>) -> String {
        let lang = self.language;
        let vi = lang == Language::Vi;
        let mut lines = vec![m.bold(&if vi {
            format!("Báo cáo tuần · {}", self.title())
        } else {
            format!("Weekly report · {}", self.title())
        })];
        if let Some(due) = late {
            let due = due
                .with_timezone(&crate::clock::vn_offset())
                .format("%H:%M %d/%m/%Y");
            lines.push(if vi {
                format!("(gửi muộn: theo lịch lúc {due})")
            } else {
                format!("(late: scheduled for {due})")
            });
        }
        for d in &self.datasets {
            lines.push(String::new());
            lines.push(format!(
                "{}: {}",
                m.bold(&d.name),
                m.escape(&self.national(d))
            ));
            let counts: Vec<String> = d
                .classes
                .iter()
                .map(|(c, list)| format!("{} {}", m.escape(c.label(lang)), list.len()))
                .collect();
            lines.push(counts.join(" · "));
            let at_risk = &d.classes[&Class::AtRisk];
            if !at_risk.is_empty() {
                let shown: Vec<String> = at_risk
                    .iter()
                    .take(5)
                    .map(|e| {
                        let pct = if e.started() {
                            percent(e.percent, lang)
                        } else {
                            not_started(lang).into()
                        };
                        format!("{} {}", m.bold(&e.name), m.escape(&pct))
                    })
                    .collect();
                let more = if at_risk.len() > 5 {
                    format!(", +{}", at_risk.len() - 5)
                } else {
                    String::new()
                };
                lines.push(format!(
                    "{}: {}{more}",
                    m.escape(Class::AtRisk.label(lang)),
                    shown.join(", ")
                ));
            }
            lines.extend(self.week_lines(&d.dataset, m));
        }
        lines.join("\n")
    }

    /// A self-contained page: per dataset a stacked bar of the classes (SVG) and the lists.
    pub fn html(&self) -> String {
        let lang = match self.language {
            Language::Vi => "vi",
            Language::En => "en",
        };
        let mut body = String::new();
        for d in &self.datasets {
            let _ = write!(
                body,
                "<section><h2>{}</h2><p>{}</p>{}<dl>",
                esc(&d.name),
                esc(&self.national(d)),
                chart(d, self.language)
            );
            for (class, list) in &d.classes {
                let names: Vec<String> = list.iter().map(|e| self.entry(e, *class)).collect();
                let _ = write!(
                    body,
                    "<dt><span class=\"key\" style=\"background:{}\"></span>{} ({})</dt><dd>{}</dd>",
                    class.color(),
                    esc(class.label(self.language)),
                    list.len(),
                    esc(&names.join(", "))
                );
            }
            body.push_str("</dl>");
            let week = self.week_lines(&d.dataset, Markup::TelegramHtml);
            if !week.is_empty() {
                body.push_str("<ul class=\"week\">");
                for line in week {
                    let _ = write!(body, "<li>{line}</li>");
                }
                body.push_str("</ul>");
            }
            body.push_str(&self.trends(&d.dataset));
            body.push_str("</section>");
        }
        format!(
            "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title><style>\
             body{{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:900px;padding:16px;color:#1c2430}}\
             h1{{font-size:20px}}h2{{font-size:17px;margin-top:28px}}\
             svg{{width:100%;height:auto}}dt{{font-weight:600;margin-top:8px}}dd{{margin:2px 0 0 20px}}\
             .key{{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px}}\
             table.trend{{border-collapse:collapse;margin-top:8px}}\
             table.trend td{{padding:2px 8px 2px 0;vertical-align:middle}}\
             svg.spark{{width:120px;height:28px}}\
             </style></head><body><h1>{title}</h1>{body}</body></html>\n",
            title = esc(&self.title()),
        )
    }
}

/// The report of the figures in Redis at `now`, with the targets of `settings`, compared
/// with a week earlier.
pub async fn read(
    settings: &crate::config::Settings,
    view: View,
    lang: Language,
    now: DateTime<Utc>,
) -> anyhow::Result<Report> {
    let datasets = settings.validation.datasets.clone();
    let targets = crate::run::load_targets(settings)?;
    let conn = crate::store::connect(&settings.redis).await?;
    let store = crate::store::Store::new(conn, &settings.redis.key_prefix, datasets.clone(), 1);
    Ok(build(&store, &targets, settings, view, lang, now).await?)
}

/// The report at `now`, with its week: reads the figures and the day buckets behind them.
pub async fn build(
    store: &crate::store::Store,
    targets: &crate::targets::Targets,
    settings: &crate::config::Settings,
    view: View,
    lang: Language,
    now: DateTime<Utc>,
) -> Result<Report, crate::store::StoreError> {
    let datasets = &settings.validation.datasets;
    let snap = store.snapshot(now).await?;
    // The trend's weeks, and for the oldest of them its 30-day rate.
    let days = 7 * weekly::TREND_WEEKS + 31;
    let daily = store.daily(now, days).await?;
    let at = |snap: &crate::store::Snapshot, when: DateTime<Utc>| {
        let status = Status::build(snap, targets, datasets, view);
        let eval = crate::rules::evaluate(&status, when, &settings.alerts.rules);
        Report::build(&status, &eval, settings.report.basically_done, lang)
    };
    let mut report = at(&snap, now);
    let since = weekly::week_before(now);
    let end_of = |day: i64| {
        let past = snap.at_end_of(&daily, day);
        let when = past.as_of;
        at(&past, when)
    };
    // Week ends, oldest first; the last is "a week earlier".
    let trend: Vec<Report> = (0..weekly::TREND_WEEKS as i64 - 1)
        .rev()
        .map(|w| end_of(since - 7 * w))
        .collect();
    let then = trend.last().expect("at least one week");
    report.week = Some(weekly::compare(&report, then, since, &trend));
    Ok(report)
}

impl Report {
    /// The at-risk provinces of a dataset, each with its percent, the week's change and an
    /// eight-week sparkline (inline SVG).
    fn trends(&self, dataset: &str) -> String {
        let Some(w) = self
            .week
            .as_ref()
            .and_then(|w| w.datasets.iter().find(|d| d.dataset == dataset))
        else {
            return String::new();
        };
        let at_risk: Vec<&weekly::ProvinceWeek> = w
            .provinces
            .iter()
            .filter(|p| p.class_now == Class::AtRisk)
            .collect();
        if at_risk.is_empty() {
            return String::new();
        }
        let mut out = String::from("<table class=\"trend\">");
        for p in at_risk {
            let _ = write!(
                out,
                "<tr data-code=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.code),
                esc(&p.name),
                percent(p.percent_now, self.language),
                points(p.points, self.language),
                sparkline(&p.trend)
            );
        }
        out.push_str("</table>");
        out
    }
}

/// Percentage points with their sign, in the language's decimal mark: `+1,5`.
fn points(p: f64, lang: Language) -> String {
    let s = format!("{p:+.1}");
    if lang == Language::Vi {
        s.replace('.', ",")
    } else {
        s
    }
}

/// A small line of percents (0–100), oldest left.
pub fn sparkline(values: &[f64]) -> String {
    let (w, h) = (120.0, 28.0);
    let n = values.len().max(2) - 1;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = w * i as f64 / n as f64;
            let y = h - 2.0 - (h - 4.0) * v.clamp(0.0, 100.0) / 100.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {w} {h}\" role=\"img\"><polyline fill=\"none\" \
         stroke=\"#e53935\" stroke-width=\"2\" points=\"{}\"/></svg>",
        points.join(" ")
    )
}

/// How an at-risk province with nothing recorded is marked.
fn not_started(lang: Language) -> &'static str {
    match lang {
        Language::Vi => "chưa triển khai",
        Language::En => "not started",
    }
}

/// A horizontal stacked bar of province counts per class, labelled.
fn chart(d: &DatasetReport, lang: Language) -> String {
    let n: usize = d.classes.values().map(Vec::len).sum();
    let (w, h) = (800.0, 56.0);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">",
        esc(&d.name)
    );
    let mut x = 0.0;
    for (class, list) in &d.classes {
        if list.is_empty() || n == 0 {
            continue;
        }
        let width = w * list.len() as f64 / n as f64;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"0\" width=\"{width:.1}\" height=\"36\" fill=\"{}\"><title>{}: {}</title></rect>",
            class.color(),
            esc(class.label(lang)),
            list.len()
        );
        if width >= 24.0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"24\" fill=\"#fff\" font-size=\"15\" text-anchor=\"middle\">{}</text>",
                x + width / 2.0,
                list.len()
            );
        }
        x += width;
    }
    svg.push_str("</svg>");
    svg
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
