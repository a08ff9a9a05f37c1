//! The week in the report: each province against itself one week earlier (percent then and
//! now, the change in points, its class then and now), the provinces that moved between
//! classes, the week's top movers and the ones that stalled, and an eight-week trend.
//!
//! "A week earlier" is the end of the Vietnam calendar day before the same moment a week ago,
//! read from the day buckets (see [`crate::history`]), so it is exact to the day.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use super::{Class, Report};
use crate::buckets::Tier;
use crate::history::date;

/// Weeks of trend kept per province.
pub const TREND_WEEKS: usize = 8;
/// Below this many points in a week, a province that is not done counts as stalled.
const STALLED_POINTS: f64 = 0.1;
/// Names listed per kind in chat.
const LISTED: usize = 5;

/// One province's week on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProvinceWeek {
    pub code: String,
    pub name: String,
    pub percent_then: f64,
    pub percent_now: f64,
    /// Percentage points gained in the week toward the target: what lies beyond 100% gains
    /// nothing, as the national figure counts it, so it tops no list of movers.
    pub points: f64,
    pub class_then: Class,
    pub class_now: Class,
    /// Percent at the end of each of the last weeks, oldest first, now last.
    pub trend: Vec<f64>,
}

/// One dataset's week.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetWeek {
    pub dataset: String,
    /// National percent then and now.
    pub percent_then: f64,
    pub percent_now: f64,
    /// Every province with a target, by code.
    pub provinces: Vec<ProvinceWeek>,
}

/// The week before a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Week {
    /// The figures compared with are those at the end of this day.
    pub since: NaiveDate,
    pub datasets: Vec<DatasetWeek>,
}

/// The day whose end is "a week earlier" than `now`.
pub fn week_before(now: DateTime<Utc>) -> i64 {
    Tier::Day.bucket((now - Duration::days(7)).timestamp()) - 1
}

impl DatasetWeek {
    /// Provinces that changed class, most improved first.
    pub fn moved(&self) -> Vec<&ProvinceWeek> {
        let mut m: Vec<&ProvinceWeek> = self
            .provinces
            .iter()
            .filter(|p| p.class_then != p.class_now)
            .collect();
        m.sort_by(|a, b| b.points.total_cmp(&a.points).then(a.name.cmp(&b.name)));
        m
    }

    /// The largest gains of the week, largest first.
    pub fn top(&self, n: usize) -> Vec<&ProvinceWeek> {
        let mut t: Vec<&ProvinceWeek> = self
            .provinces
            .iter()
            .filter(|p| p.points >= STALLED_POINTS)
            .collect();
        t.sort_by(|a, b| b.points.total_cmp(&a.points).then(a.name.cmp(&b.name)));
        t.truncate(n);
        t
    }

    /// Not done, and next to no progress in the week, lowest first.
    pub fn stalled(&self) -> Vec<&ProvinceWeek> {
        let mut s: Vec<&ProvinceWeek> = self
            .provinces
            .iter()
            .filter(|p| p.class_now != Class::Completed && p.points < STALLED_POINTS)
            .collect();
        s.sort_by(|a, b| {
            a.percent_now
                .total_cmp(&b.percent_now)
                .then(a.name.cmp(&b.name))
        });
        s
    }
}

/// Compares `now` with `then` (the report of a week earlier); `weekly` are the reports at
/// the end of each of the last weeks, oldest first, for the trend.
pub fn compare(now: &Report, then: &Report, since: i64, weekly: &[Report]) -> Week {
    // By table and code: in the 63-unit view a 34-unit code can be an old province's too.
    type Entries = BTreeMap<(&'static str, String), (f64, Class)>;
    let entries = |r: &Report, dataset: &str| -> Entries {
        r.datasets
            .iter()
            .filter(|d| d.dataset == dataset)
            .flat_map(|d| d.classes.iter())
            .flat_map(|(class, list)| {
                list.iter()
                    .map(|e| ((e.scheme, e.code.clone()), (e.percent, *class)))
            })
            .collect()
    };
    let datasets = now
        .datasets
        .iter()
        .map(|d| {
            let before = entries(then, &d.dataset);
            let trends: Vec<Entries> = weekly.iter().map(|r| entries(r, &d.dataset)).collect();
            let mut provinces: Vec<ProvinceWeek> = d
                .classes
                .iter()
                .flat_map(|(class, list)| list.iter().map(move |e| (class, e)))
                .map(|(class, e)| {
                    let key = (e.scheme, e.code.clone());
                    // Absent a week ago (no figures for the dataset then): no class move.
                    let (percent_then, class_then) =
                        before.get(&key).copied().unwrap_or((0.0, *class));
                    let mut trend: Vec<f64> = trends
                        .iter()
                        .map(|t| t.get(&key).map_or(0.0, |(p, _)| *p))
                        .collect();
                    trend.push(e.percent);
                    ProvinceWeek {
                        code: e.code.clone(),
                        name: e.name.clone(),
                        percent_then,
                        percent_now: e.percent,
                        points: e.percent.min(100.0) - percent_then.min(100.0),
                        class_then,
                        class_now: *class,
                        trend,
                    }
                })
                .collect();
            provinces.sort_by(|a, b| a.code.cmp(&b.code));
            let percent_then = then
                .datasets
                .iter()
                .find(|t| t.dataset == d.dataset)
                .map_or(0.0, |t| t.percent);
            DatasetWeek {
                dataset: d.dataset.clone(),
                percent_then,
                percent_now: d.percent,
                provinces,
            }
        })
        .collect();
    Week {
        since: date(since),
        datasets,
    }
}

/// The names of a list, as chat shows them: at most a few, then how many more.
pub fn names(list: &[&ProvinceWeek], show: impl Fn(&ProvinceWeek) -> String) -> String {
    let mut out: Vec<String> = list.iter().take(LISTED).map(|p| show(p)).collect();
    if list.len() > LISTED {
        out.push(format!("+{}", list.len() - LISTED));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Language;
    use crate::provinces::View;
    use crate::report::{DatasetReport, Entry};

    fn report(rows: &[(&'static str, &str, &str, f64)]) -> Report {
        let mut classes: BTreeMap<Class, Vec<Entry>> =
            Class::ALL.iter().map(|c| (*c, Vec::new())).collect();
        for (scheme, code, name, percent) in rows {
            classes.entry(Class::AtRisk).or_default().push(Entry {
                scheme,
                code: code.to_string(),
                name: name.to_string(),
                total: (*percent * 100.0) as i64,
                target: 10_000,
                percent: *percent,
                deadline: NaiveDate::from_ymd_opt(2026, 12, 31).unwrap(),
                projected: None,
            });
        }
        Report {
            as_of: Utc::now(),
            view: View::Legacy63,
            language: Language::Vi,
            basically_done: 0.95,
            datasets: vec![DatasetReport {
                dataset: "civil_status".into(),
                name: "Hộ tịch".into(),
                total: 0,
                target: 0,
                percent: 0.0,
                classes,
            }],
            week: None,
        }
    }

    #[test]
    fn a_code_of_both_tables_is_compared_with_its_own_row() {
        // In the 63-unit view, 56 is the old Khánh Hòa and the 34-unit Khánh Hòa's row.
        let then = report(&[
            ("63", "56", "Khánh Hòa", 40.0),
            ("34", "56", "Khánh Hòa", 2.0),
        ]);
        let now = report(&[
            ("63", "56", "Khánh Hòa", 41.0),
            ("34", "56", "Khánh Hòa", 5.0),
        ]);
        let week = compare(&now, &then, 0, std::slice::from_ref(&then));
        let mut points: Vec<(f64, f64)> = week.datasets[0]
            .provinces
            .iter()
            .map(|p| (p.percent_then, p.points))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(points, [(2.0, 3.0), (40.0, 1.0)]);
        let trends: Vec<&[f64]> = week.datasets[0]
            .provinces
            .iter()
            .map(|p| p.trend.as_slice())
            .collect();
        assert!(trends.contains(&[2.0, 5.0].as_slice()), "{trends:?}");
    }

    #[test]
    fn records_beyond_the_target_make_no_mover() {
        let then = report(&[
            ("34", "01", "Hà Nội", 150.0),
            ("34", "04", "Cao Bằng", 40.0),
        ]);
        let now = report(&[
            ("34", "01", "Hà Nội", 200.0),
            ("34", "04", "Cao Bằng", 70.0),
        ]);
        let week = compare(&now, &then, 0, &[]);
        let top: Vec<(&str, f64)> = week.datasets[0]
            .top(5)
            .iter()
            .map(|p| (p.name.as_str(), p.points))
            .collect();
        assert_eq!(top, [("Cao Bằng", 30.0)]);
    }
}
