//! `tiendo report`: the task force's weekly classification, from live figures. For each
//! dataset with targets, every province is completed, basically completed, on track, at risk
//! of missing its deadline (with percent done and projected date), or not started; with counts,
//! lists and national totals, for the 34 current or the 63 legacy units. Rendered as a
//! terminal table, Markdown, HTML with a chart (inline SVG, no external assets) or JSON, in
//! Vietnamese or English.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::config::Language;
use crate::notify::message::{dataset_name, number};
use crate::rules::Evaluation;
use crate::status::{Status, View};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Completed,
    BasicallyCompleted,
    OnTrack,
    AtRisk,
    NotStarted,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Completed,
        Class::BasicallyCompleted,
        Class::OnTrack,
        Class::AtRisk,
        Class::NotStarted,
    ];

    pub fn label(self, lang: Language) -> &'static str {
        match (self, lang) {
            (Class::Completed, Language::Vi) => "Đã hoàn thành",
            (Class::BasicallyCompleted, Language::Vi) => "Cơ bản hoàn thành",
            (Class::OnTrack, Language::Vi) => "Đúng tiến độ",
            (Class::AtRisk, Language::Vi) => "Nguy cơ chậm",
            (Class::NotStarted, Language::Vi) => "Chưa triển khai",
            (Class::Completed, Language::En) => "Completed",
            (Class::BasicallyCompleted, Language::En) => "Basically completed",
            (Class::OnTrack, Language::En) => "On track",
            (Class::AtRisk, Language::En) => "At risk",
            (Class::NotStarted, Language::En) => "Not started",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Class::Completed => "#2e7d32",
            Class::BasicallyCompleted => "#7cb342",
            Class::OnTrack => "#1e88e5",
            Class::AtRisk => "#e53935",
            Class::NotStarted => "#616161",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub code: String,
    pub name: String,
    pub total: i64,
    pub target: u64,
    pub percent: f64,
    pub deadline: NaiveDate,
    /// Completion date at the projection window's rate; `None` without recent progress.
    pub projected: Option<NaiveDate>,
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
                let class = if d.total == 0 {
                    Class::NotStarted
                } else if percent >= 100.0 {
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

    fn title(&self) -> String {
        let at = self
            .as_of
            .with_timezone(&crate::clock::vn_offset())
            .format("%d/%m/%Y %H:%M");
        match self.language {
            Language::Vi => format!("Tiến độ số hóa Đề án 06 · {} · {at}", self.units()),
            Language::En => format!("Đề án 06 digitization progress · {} · {at}", self.units()),
        }
    }

    /// `Ninh Thuận 16,0% (xong 02/06/2025)` for at-risk lists, else `Ninh Thuận 16,0%`.
    fn entry(&self, e: &Entry, class: Class) -> String {
        let pct = percent(e.percent, self.language);
        if class != Class::AtRisk {
            return format!("{} {pct}", e.name);
        }
        let when = match (e.projected, self.language) {
            (Some(p), Language::Vi) => format!("dự kiến {}", p.format("%d/%m/%Y")),
            (Some(p), Language::En) => format!("projected {}", p.format("%d/%m/%Y")),
            (None, Language::Vi) => "chưa có tiến độ".into(),
            (None, Language::En) => "no recent progress".into(),
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
        }
        out
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
            body.push_str("</dl></section>");
        }
        format!(
            "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title}</title><style>\
             body{{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:900px;padding:16px;color:#1c2430}}\
             h1{{font-size:20px}}h2{{font-size:17px;margin-top:28px}}\
             svg{{width:100%;height:auto}}dt{{font-weight:600;margin-top:8px}}dd{{margin:2px 0 0 20px}}\
             .key{{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px}}\
             </style></head><body><h1>{title}</h1>{body}</body></html>\n",
            title = esc(&self.title()),
        )
    }
}

/// The report of the figures in Redis at `now`, with the targets of `settings`.
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
    let snap = store.snapshot(now).await?;
    let status = Status::build(&snap, &targets, &datasets, view);
    let eval = crate::rules::evaluate(&status, now, &settings.alerts.rules);
    Ok(Report::build(
        &status,
        &eval,
        settings.report.basically_done,
        lang,
    ))
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

fn percent(v: f64, lang: Language) -> String {
    let s = format!("{v:.1}%");
    if lang == Language::Vi {
        s.replace('.', ",")
    } else {
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
