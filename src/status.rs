//! Reading the figures the way people ask for them: per province in the 34-unit view (legacy
//! codes folded into the unit that absorbed them) or the 63-unit view, against targets, with
//! national totals. `tiendo status`, and later the HTTP API and reports, all build on
//! [`Status`].

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use comfy_table::{presets, Cell, CellAlignment, Table};
use serde::Serialize;

use crate::buckets::WINDOWS;
use crate::events::{channel_name, CHANNELS};
pub use crate::provinces::View;
use crate::provinces::{provinces, Scheme, Unit};
use crate::store::{Counts, Snapshot};
use crate::targets::Targets;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DatasetStatus {
    pub total: i64,
    /// Sums over the windows of [`WINDOWS`], by window name.
    pub windows: BTreeMap<&'static str, i64>,
    /// The sums a rate over each window reads (see [`DatasetStatus::rate`]).
    #[serde(skip)]
    pub rate_sums: BTreeMap<&'static str, i64>,
    /// Per calendar window, the first day of its rate sum with a count (see `rate`).
    #[serde(skip)]
    pub rate_from: BTreeMap<&'static str, i64>,
    pub target: Option<u64>,
    pub deadline: Option<NaiveDate>,
    /// Percent of target done, when there is a target.
    pub percent: Option<f64>,
    /// Event time of the newest event, when any.
    pub last_event: Option<DateTime<Utc>>,
}

impl DatasetStatus {
    /// Records per day over window `name` at `now`: over the whole days before today for a
    /// calendar window (7 of them for `7d`, so the rate does not swing with the weekday), over
    /// the time it covers for a rolling one. See [`crate::buckets::Window::rate_plan`]. With
    /// nothing in those whole days but something today (a feed that starts today, or comes
    /// back from a silence), the rate is over the window with today's part, so that a first
    /// day's work is not read as none. A feed younger than a calendar window (all it ever
    /// counted lies in the window) divides by the whole days since its first, not by the
    /// window's: one started three days ago at the pace needed is not a third as fast.
    pub fn rate(&self, name: &str, now: DateTime<Utc>) -> f64 {
        self.rate_on(name, now, &[]).unwrap_or(0.0)
    }

    /// [`DatasetStatus::rate`] per day that is not one of `holidays`: a week that held Tết
    /// had fewer working days, not slower ones. `None` when every day it would divide by
    /// was a holiday. A rolling window's is the calendar's.
    pub fn rate_on(
        &self,
        name: &str,
        now: DateTime<Utc>,
        holidays: &[crate::clock::Holiday],
    ) -> Option<f64> {
        use crate::buckets::{day_date, Tier};
        let Some(w) = crate::buckets::Window::named(name) else {
            return Some(0.0);
        };
        let sum = self.rate_sums.get(name).copied().unwrap_or(0);
        let window = self.windows.get(name).copied().unwrap_or(0);
        if sum == 0 && window > 0 {
            return Some(window as f64 / w.days(now));
        }
        let Some(calendar) = w.calendar_days() else {
            return Some(sum as f64 / w.rate_days(now));
        };
        let today = Tier::Day.bucket(now.timestamp());
        let days = match self.rate_from.get(name) {
            Some(&first) if self.total == window => (today - first).max(1).min(calendar),
            _ => calendar,
        };
        let open = (today - days..today)
            .filter(|day| !crate::clock::Holiday::any_on(holidays, day_date(*day)))
            .count();
        (open > 0).then(|| sum as f64 / open as f64)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelStatus {
    pub completed: i64,
    pub on_time: i64,
    /// Completed dossiers over each window.
    pub windows: BTreeMap<&'static str, i64>,
    /// Of those, on time, over each window.
    pub on_time_windows: BTreeMap<&'static str, i64>,
    /// Completed dossiers over each window's rate plan (a calendar window's whole days before
    /// today), which shares judged by the rules read, as rates do.
    #[serde(skip)]
    pub rate_sums: BTreeMap<&'static str, i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcedureStatus {
    pub channels: BTreeMap<&'static str, ChannelStatus>,
    pub completed: i64,
    pub on_time: i64,
    /// Share of completed dossiers handled online end to end.
    pub online_share: Option<f64>,
    pub on_time_share: Option<f64>,
    pub last_event: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProvinceStatus {
    pub code: String,
    pub name: String,
    /// The table the code belongs to ("34" or "63").
    pub scheme: &'static str,
    pub datasets: BTreeMap<String, DatasetStatus>,
    pub procedures: ProcedureStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub as_of: DateTime<Utc>,
    pub view: View,
    pub datasets: Vec<String>,
    pub provinces: Vec<ProvinceStatus>,
    pub national: ProvinceStatus,
    pub dead_letters: BTreeMap<String, i64>,
}

impl Status {
    pub fn build(snap: &Snapshot, targets: &Targets, datasets: &[String], view: View) -> Status {
        let table = provinces();
        let mut rows: BTreeMap<Unit, ProvinceStatus> = BTreeMap::new();
        let scheme = view.scheme();
        for (unit, _) in table.units(scheme) {
            rows.insert(unit, empty_row(unit, datasets));
        }
        for (field, counts) in &snap.counts {
            let Some((unit, metric)) = parse_field(field) else {
                continue;
            };
            let row = rows
                .entry(row_unit(unit, view))
                .or_insert_with_key(|u| empty_row(*u, datasets));
            add(row, metric, counts);
        }
        for (field, at) in &snap.latest {
            let Some((unit, metric)) = parse_field(field) else {
                continue;
            };
            let Some(row) = rows.get_mut(&row_unit(unit, view)) else {
                continue;
            };
            let at = DateTime::from_timestamp(*at, 0);
            let slot = if metric == "p" {
                Some(&mut row.procedures.last_event)
            } else {
                metric
                    .strip_prefix("r.")
                    .and_then(|d| row.datasets.get_mut(d))
                    .map(|d| &mut d.last_event)
            };
            if let Some(slot) = slot {
                *slot = (*slot).max(at);
            }
        }
        for (unit, row) in rows.iter_mut() {
            for (name, d) in row.datasets.iter_mut() {
                let target = match (view, unit.scheme) {
                    (View::Current34, _) => targets.current(unit.code, name),
                    (View::Legacy63, Scheme::Legacy63) => targets.legacy(unit.code, name),
                    // The events sent with the 34-unit code only: measured against the
                    // unit's whole target they would read as far behind, and alarm.
                    (View::Legacy63, Scheme::Current34) => None,
                };
                if let Some(t) = target {
                    d.target = Some(t.count);
                    d.deadline = Some(t.deadline);
                }
            }
            finish(row);
        }
        let mut national = ProvinceStatus {
            code: "VN".into(),
            name: "Toàn quốc".into(),
            scheme: view.tag(),
            ..empty_row(Unit { scheme, code: 1 }, datasets)
        };
        for row in rows.values() {
            merge(&mut national, row);
        }
        finish(&mut national);
        // The national percent as the report counts it: each province's records up to its
        // target, over the provinces that have one. Records beyond a target, or of a
        // province without one, make up for no other's shortfall.
        for (name, n) in &mut national.datasets {
            let (done, target) = rows
                .values()
                .filter_map(|row| {
                    let d = row.datasets.get(name)?;
                    let t = d.target?;
                    Some((d.total.min(t as i64), t))
                })
                .fold((0i64, 0u64), |(a, b), (d, t)| (a + d, b + t));
            n.percent = (target > 0).then(|| done as f64 * 100.0 / target as f64);
        }
        Status {
            as_of: snap.as_of,
            view,
            datasets: datasets.to_vec(),
            provinces: rows.into_values().collect(),
            national,
            dead_letters: snap.dead.clone(),
        }
    }

    /// A terminal table: one row per province and the national total.
    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.load_preset(presets::UTF8_BORDERS_ONLY);
        let mut header = vec!["Mã".to_string(), "Tỉnh/thành".to_string()];
        header.extend(self.datasets.iter().cloned());
        header.extend([
            "7 ngày".into(),
            "Thủ tục".into(),
            "Trực tuyến".into(),
            "Đúng hạn".into(),
        ]);
        t.set_header(header);
        for row in self.provinces.iter().chain(std::iter::once(&self.national)) {
            let mut cells = vec![Cell::new(&row.code), Cell::new(&row.name)];
            for d in &self.datasets {
                let s = &row.datasets[d];
                let pct = s
                    .percent
                    .map(|p| format!(" {:.0}%", crate::notify::message::below_done(p, 0)))
                    .unwrap_or_default();
                cells.push(
                    Cell::new(format!("{}{pct}", compact(s.total)))
                        .set_alignment(CellAlignment::Right),
                );
            }
            let week: i64 = row.datasets.values().map(|d| d.windows["7d"]).sum();
            cells.push(Cell::new(compact(week)).set_alignment(CellAlignment::Right));
            let p = &row.procedures;
            cells.push(Cell::new(compact(p.completed)).set_alignment(CellAlignment::Right));
            cells.push(Cell::new(share(p.online_share)).set_alignment(CellAlignment::Right));
            cells.push(Cell::new(share(p.on_time_share)).set_alignment(CellAlignment::Right));
            t.add_row(cells);
        }
        let dead: i64 = self.dead_letters.values().sum();
        format!(
            "{t}\nas of {} · {} units · dead letters: {dead}\n",
            self.as_of
                .with_timezone(&crate::clock::vn_offset())
                .format("%Y-%m-%d %H:%M:%S %:z"),
            self.provinces.len(),
        )
    }
}

/// 1234 → "1234", 123456 → "123.5k", 12345678 → "12.3M": keeps the table narrow.
fn compact(n: i64) -> String {
    match n.abs() {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn share(s: Option<f64>) -> String {
    s.map(|v| format!("{:.0}%", v * 100.0))
        .unwrap_or_else(|| "–".into())
}

fn row_unit(unit: Unit, view: View) -> Unit {
    match view {
        View::Current34 => Unit {
            scheme: Scheme::Current34,
            code: unit.current_code(),
        },
        View::Legacy63 => unit,
    }
}

fn parse_field(field: &str) -> Option<(Unit, &str)> {
    let (unit, metric) = field.split_once('|')?;
    Some((Unit::parse_tagged(unit)?, metric))
}

fn empty_row(unit: Unit, datasets: &[String]) -> ProvinceStatus {
    let p = provinces().get(unit.scheme, unit.code);
    ProvinceStatus {
        code: format!("{:02}", unit.code),
        name: p.map(|p| p.name_vi.clone()).unwrap_or_default(),
        scheme: match unit.scheme {
            Scheme::Current34 => "34",
            Scheme::Legacy63 => "63",
        },
        datasets: datasets
            .iter()
            .map(|d| (d.clone(), dataset_zero()))
            .collect(),
        procedures: ProcedureStatus {
            channels: CHANNELS
                .iter()
                .map(|c| (channel_name(*c), channel_zero()))
                .collect(),
            ..ProcedureStatus::default()
        },
    }
}

fn window_zero() -> BTreeMap<&'static str, i64> {
    WINDOWS.iter().map(|w| (w.name, 0)).collect()
}

fn dataset_zero() -> DatasetStatus {
    DatasetStatus {
        windows: window_zero(),
        rate_sums: window_zero(),
        ..DatasetStatus::default()
    }
}

fn channel_zero() -> ChannelStatus {
    ChannelStatus {
        windows: window_zero(),
        on_time_windows: window_zero(),
        rate_sums: window_zero(),
        ..ChannelStatus::default()
    }
}

/// Keeps the earlier of the day held for `window` and `day`.
fn earliest(into: &mut BTreeMap<&'static str, i64>, window: &'static str, day: i64) {
    into.entry(window)
        .and_modify(|d| *d = (*d).min(day))
        .or_insert(day);
}

fn add_windows(into: &mut BTreeMap<&'static str, i64>, counts: &[i64]) {
    for (w, v) in WINDOWS.iter().zip(counts) {
        *into.entry(w.name).or_default() += v;
    }
}

fn add(row: &mut ProvinceStatus, metric: &str, counts: &Counts) {
    if let Some(dataset) = metric.strip_prefix("r.") {
        if let Some(d) = row.datasets.get_mut(dataset) {
            d.total += counts.total;
            add_windows(&mut d.windows, &counts.windows);
            add_windows(&mut d.rate_sums, &counts.rate_sums);
            for (w, from) in WINDOWS.iter().zip(counts.rate_from) {
                if let Some(from) = from {
                    earliest(&mut d.rate_from, w.name, from);
                }
            }
        }
    } else if let Some(rest) = metric.strip_prefix("p.") {
        let Some((channel, what)) = rest.rsplit_once('.') else {
            return;
        };
        let Some(c) = row.procedures.channels.get_mut(channel) else {
            return;
        };
        match what {
            "n" => {
                c.completed += counts.total;
                add_windows(&mut c.windows, &counts.windows);
                add_windows(&mut c.rate_sums, &counts.rate_sums);
            }
            "ot" => {
                c.on_time += counts.total;
                add_windows(&mut c.on_time_windows, &counts.windows);
            }
            _ => {}
        }
    }
}

fn merge(into: &mut ProvinceStatus, row: &ProvinceStatus) {
    for (name, d) in &row.datasets {
        let n = into
            .datasets
            .entry(name.clone())
            .or_insert_with(dataset_zero);
        n.total += d.total;
        merge_windows(&mut n.windows, &d.windows);
        merge_windows(&mut n.rate_sums, &d.rate_sums);
        for (&w, &from) in &d.rate_from {
            earliest(&mut n.rate_from, w, from);
        }
        if let Some(t) = d.target {
            n.target = Some(n.target.unwrap_or(0) + t);
            n.deadline = n.deadline.max(d.deadline);
        }
        n.last_event = n.last_event.max(d.last_event);
    }
    for (name, c) in &row.procedures.channels {
        let n = into
            .procedures
            .channels
            .entry(name)
            .or_insert_with(channel_zero);
        n.completed += c.completed;
        n.on_time += c.on_time;
        merge_windows(&mut n.windows, &c.windows);
        merge_windows(&mut n.on_time_windows, &c.on_time_windows);
        merge_windows(&mut n.rate_sums, &c.rate_sums);
    }
    into.procedures.last_event = into.procedures.last_event.max(row.procedures.last_event);
}

/// Adds figures kept per window into another row's.
fn merge_windows(into: &mut BTreeMap<&'static str, i64>, from: &BTreeMap<&'static str, i64>) {
    for (w, v) in from {
        *into.entry(*w).or_default() += v;
    }
}

fn finish(row: &mut ProvinceStatus) {
    for d in row.datasets.values_mut() {
        d.percent = d.target.map(|t| d.total as f64 * 100.0 / t as f64);
    }
    let p = &mut row.procedures;
    p.completed = p.channels.values().map(|c| c.completed).sum();
    p.on_time = p.channels.values().map(|c| c.on_time).sum();
    if p.completed > 0 {
        let online = p.channels.get("online").map(|c| c.completed).unwrap_or(0);
        p.online_share = Some(online as f64 / p.completed as f64);
        p.on_time_share = Some(p.on_time as f64 / p.completed as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(fields: &[(&str, i64)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (f, v) in fields {
            s.counts.insert(
                f.to_string(),
                Counts {
                    total: *v,
                    windows: [*v; 4],
                    rate_sums: [*v; 4],
                    ..Counts::default()
                },
            );
        }
        s
    }

    #[test]
    fn a_rate_reads_the_whole_days_before_today_or_today_when_they_hold_nothing() {
        // 15:37 in Hà Nội: the 7-day window covers 6 whole days and 15 h 37 min of today.
        let now: DateTime<Utc> = "2024-10-01T08:37:12Z".parse().unwrap();
        let d = |rate_sum: i64, window: i64| DatasetStatus {
            windows: [("7d", window)].into_iter().collect(),
            rate_sums: [("7d", rate_sum)].into_iter().collect(),
            ..DatasetStatus::default()
        };
        assert_eq!(d(7_000, 9_000).rate("7d", now), 1_000.0);
        let today_only = d(0, 6_500).rate("7d", now);
        let days = crate::buckets::Window::named("7d").unwrap().days(now);
        assert!((today_only - 6_500.0 / days).abs() < 1e-9, "{today_only}");
        assert_eq!(d(0, 0).rate("7d", now), 0.0);
        assert_eq!(d(7_000, 7_000).rate("9d", now), 0.0);
    }

    #[test]
    fn a_feed_younger_than_the_window_is_rated_over_its_own_days() {
        let now: DateTime<Utc> = "2024-10-03T08:37:12Z".parse().unwrap();
        let today = crate::buckets::Tier::Day.bucket(now.timestamp());
        // Started two days ago (1 October) at 10,000 a day; 5,000 so far today.
        let young = |total: i64| DatasetStatus {
            total,
            windows: [("7d", 25_000), ("30d", 25_000)].into_iter().collect(),
            rate_sums: [("7d", 20_000), ("30d", 20_000)].into_iter().collect(),
            rate_from: [("7d", today - 2), ("30d", today - 2)]
                .into_iter()
                .collect(),
            ..DatasetStatus::default()
        };
        assert_eq!(young(25_000).rate("7d", now), 10_000.0);
        assert_eq!(young(25_000).rate("30d", now), 10_000.0);
        // Counted before the window too (a feed that paused): over the whole window.
        assert_eq!(young(40_000).rate("7d", now), 20_000.0 / 7.0);
    }

    fn ds() -> Vec<String> {
        vec!["civil_status".into(), "land".into()]
    }

    /// The national percent counts each province up to its target, as the report does: one
    /// far beyond its target, or one without a target, does not make up for another's gap.
    #[test]
    fn the_national_percent_counts_each_province_up_to_its_target() {
        let s = snap(&[
            ("n01|r.land", 150),
            ("n04|r.land", 50),
            ("n08|r.land", 1000),
        ]);
        let targets = Targets::parse(
            "province,dataset,target,deadline\n01,land,100,2026-12-31\n04,land,100,2026-12-31\n",
            &ds(),
        )
        .unwrap();
        let st = Status::build(&s, &targets, &ds(), View::Current34);
        let land = &st.national.datasets["land"];
        assert_eq!((land.total, land.target), (1200, Some(200)));
        assert_eq!(land.percent, Some(75.0));
    }

    #[test]
    fn legacy_codes_fold_into_the_absorbing_unit() {
        // Lào Cai (10) and Yên Bái (15) → Lào Cai (15); one event already in the new table.
        let s = snap(&[("o10|r.land", 3), ("o15|r.land", 4), ("n15|r.land", 5)]);
        let st = Status::build(&s, &Targets::default(), &ds(), View::Current34);
        assert_eq!(st.provinces.len(), 34);
        let lc = st.provinces.iter().find(|p| p.code == "15").unwrap();
        assert_eq!(lc.name, "Lào Cai");
        assert_eq!(lc.datasets["land"].total, 12);
        assert_eq!(st.national.datasets["land"].total, 12);

        let legacy = Status::build(&s, &Targets::default(), &ds(), View::Legacy63);
        assert_eq!(
            legacy.provinces.len(),
            64,
            "63 legacy rows + one 34-table row with data"
        );
        let yb = legacy
            .provinces
            .iter()
            .find(|p| p.code == "15" && p.scheme == "63")
            .unwrap();
        assert_eq!(
            (yb.name.as_str(), yb.datasets["land"].total),
            ("Yên Bái", 4)
        );
        assert_eq!(legacy.national.datasets["land"].total, 12);

        // A 34-unit target: the whole Lào Cai's in the 34-unit view; in the 63-unit view
        // its row of new-code events only is no part to measure against it.
        let targets = Targets::parse(
            "province,dataset,target,deadline\n15,land,20,2026-12-31\n",
            &ds(),
        )
        .unwrap();
        let st = Status::build(&s, &targets, &ds(), View::Current34);
        let lc = st.provinces.iter().find(|p| p.code == "15").unwrap();
        assert_eq!(lc.datasets["land"].percent, Some(60.0));
        let legacy = Status::build(&s, &targets, &ds(), View::Legacy63);
        let new_row = legacy
            .provinces
            .iter()
            .find(|p| p.code == "15" && p.scheme == "34")
            .unwrap();
        assert_eq!(new_row.datasets["land"].total, 5);
        assert_eq!(new_row.datasets["land"].target, None);
    }

    #[test]
    fn procedure_shares() {
        let s = snap(&[
            ("n01|p.online.n", 8),
            ("n01|p.online.ot", 8),
            ("n01|p.in_person.n", 2),
        ]);
        let st = Status::build(&s, &Targets::default(), &ds(), View::Current34);
        let hn = &st.provinces[0];
        assert_eq!(hn.procedures.completed, 10);
        assert_eq!(hn.procedures.channels["online"].on_time_windows["7d"], 8);
        assert_eq!(hn.procedures.online_share, Some(0.8));
        assert_eq!(hn.procedures.on_time_share, Some(0.8));
    }

    #[test]
    fn percent_against_targets() {
        let t = Targets::parse(
            "province,dataset,target,deadline,scheme\n94,civil_status,200,2024-12-31,63\n",
            &ds(),
        )
        .unwrap();
        let s = snap(&[("o94|r.civil_status", 50)]);
        let st = Status::build(&s, &t, &ds(), View::Legacy63);
        let st_row = st.provinces.iter().find(|p| p.code == "94").unwrap();
        assert_eq!(st_row.datasets["civil_status"].percent, Some(25.0));
        assert!(st.table().contains("Sóc Trăng"));
    }
}
