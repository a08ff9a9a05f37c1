//! The demo's season: autumn 2024 across the 63 provinces of the time, from the task force's
//! own reports (facts in `data/scenario-2024*.csv`, sourced row by row). Each province and
//! dataset has a target, a share done on 1 October 2024 and a weekly pace; [`Scenario`] turns
//! that into the events upstream registries would have sent: the history before the replay,
//! then, tick by tick, what each province digitized and which dossiers it completed.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};

use crate::clock::vn_offset;
use crate::events::{Channel, CodeScheme, ProcedureCompleted};
use crate::generator::{Generated, Generator};

const RECORDS: &str = include_str!("../data/scenario-2024.csv");
const PROCEDURES: &str = include_str!("../data/scenario-2024-procedures.csv");
/// Largest record count of one generated event (below validation's default maximum).
const MAX_EVENT: u64 = 500_000;

/// One province's progress on one dataset.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Series {
    pub code: String,
    pub dataset: String,
    pub target: u64,
    /// Percent done on 1 October 2024.
    pub done_pct: f64,
    /// Percent of target added per week.
    pub weekly_pct: f64,
    pub deadline: NaiveDate,
    /// The reports' word for where the province stood (done, basically_done, accelerating,
    /// at_risk).
    pub category: String,
    pub fact: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProcedureFeed {
    pub code: String,
    pub online_share: f64,
    pub dossiers_per_day: f64,
    pub fact: String,
}

pub struct Scenario {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub series: Vec<Series>,
    pub procedures: Vec<ProcedureFeed>,
    /// Records already emitted per series, so each tick sends only the difference.
    sent: Vec<u64>,
    /// Fractional dossiers carried between ticks, per province.
    carry: Vec<f64>,
    /// Online end-to-end dossiers owed, per province: channels are dealt by quota.
    online_credit: Vec<f64>,
    /// Share of real dossier volume generated (the in-process broker is slow).
    procedure_scale: f64,
}

fn vn_midnight(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    vn_offset()
        .with_ymd_and_hms(y, m, d, 0, 0, 0)
        .single()
        .expect("valid date")
        .with_timezone(&Utc)
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
    csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes())
        .deserialize()
        .collect::<Result<_, _>>()
        .expect("the embedded scenario parses (a unit test checks it)")
}

impl Scenario {
    /// From 1 October 2024 to 1 January 2025, Vietnam time.
    pub fn autumn_2024(procedure_scale: f64) -> Scenario {
        let series: Vec<Series> = parse(RECORDS);
        let procedures: Vec<ProcedureFeed> = parse(PROCEDURES);
        Scenario {
            start: vn_midnight(2024, 10, 1),
            end: vn_midnight(2025, 1, 1),
            sent: vec![0; series.len()],
            carry: vec![0.0; procedures.len()],
            online_credit: vec![0.0; procedures.len()],
            series,
            procedures,
            procedure_scale,
        }
    }

    /// Targets as `tiendo`'s targets CSV (63-unit codes).
    pub fn targets_csv(&self) -> String {
        let mut out = String::from("province,dataset,target,deadline,scheme\n");
        for s in &self.series {
            out.push_str(&format!(
                "{},{},{},{},63\n",
                s.code, s.dataset, s.target, s.deadline
            ));
        }
        out
    }

    /// Records done by `at`, following the series' pace backwards and forwards from the start.
    pub fn done(&self, s: &Series, at: DateTime<Utc>) -> u64 {
        let weeks = (at - self.start).num_seconds() as f64 / (7.0 * 86_400.0);
        let pct = (s.done_pct + s.weekly_pct * weeks).clamp(0.0, 100.0);
        (s.target as f64 * pct / 100.0).floor() as u64
    }

    fn records(&mut self, g: &mut Generator, at: DateTime<Utc>, out: &mut Vec<Generated>) {
        for i in 0..self.series.len() {
            let done = self.done(&self.series[i], at);
            let s = &self.series[i];
            let mut delta = done.saturating_sub(self.sent[i]);
            self.sent[i] = self.sent[i].max(done);
            while delta > 0 {
                let n = delta.min(MAX_EVENT);
                out.push(g.record_for(&s.code, CodeScheme::Provinces63, &s.dataset, n, at));
                delta -= n;
            }
        }
    }

    /// What happened before the replay: the bulk of each province's work as one event in
    /// mid-August, then the 31 days before the start day by day at its pace, so the rates at
    /// the start (over the 7 and 30 whole days before it) already show it, and no day they
    /// read carries the bulk's fortnight.
    pub fn history(&mut self, g: &mut Generator) -> Vec<Generated> {
        let mut out = Vec::new();
        let september = self.start - Duration::days(30);
        self.records(g, september - Duration::days(15), &mut out);
        for day in (1..=31).rev() {
            self.records(g, self.start - Duration::days(day), &mut out);
        }
        out
    }

    /// Everything sent in `(from, to]`: records at `to`, dossiers spread over the interval.
    pub fn between(
        &mut self,
        g: &mut Generator,
        rng: &mut fastrand::Rng,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<Generated> {
        let mut out = Vec::new();
        self.records(g, to, &mut out);
        let days = (to - from).num_milliseconds() as f64 / 86_400_000.0;
        for (i, p) in self.procedures.iter().enumerate() {
            self.carry[i] += p.dossiers_per_day * days * self.procedure_scale;
            while self.carry[i] >= 1.0 {
                self.carry[i] -= 1.0;
                let at = from + Duration::milliseconds(rng.i64(0..=(to - from).num_milliseconds()));
                // Dealt by quota, not by dice: a week of a 1% sample is a few dozen dossiers,
                // whose random share would stray by ±6 points where the full volume strays by
                // less than one. The quota keeps each province's share as the reports give it.
                self.online_credit[i] += p.online_share;
                let channel = if self.online_credit[i] >= 1.0 {
                    self.online_credit[i] -= 1.0;
                    Channel::OnlineEndToEnd
                } else if rng.bool() {
                    Channel::PartlyOnline
                } else {
                    Channel::InPerson
                };
                let Generated::Procedure(mut e) = g.procedure(at) else {
                    unreachable!("procedure() makes procedures")
                };
                e = ProcedureCompleted {
                    province_code: p.code.clone(),
                    code_scheme: CodeScheme::Provinces63 as i32,
                    channel: channel as i32,
                    ..e
                };
                out.push(Generated::Procedure(e));
            }
        }
        out
    }

    /// Provinces the reports put in `category` for `dataset`.
    pub fn in_category(&self, dataset: &str, category: &str) -> Vec<&Series> {
        self.series
            .iter()
            .filter(|s| s.dataset == dataset && s.category == category)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provinces::{provinces, Scheme};

    #[test]
    fn the_scenario_matches_the_reports_counts_and_codes() {
        let s = Scenario::autumn_2024(0.01);
        assert_eq!(s.series.len(), 63 * 3);
        assert_eq!(s.procedures.len(), 63);
        for row in &s.series {
            assert!(
                provinces().resolve(Scheme::Legacy63, &row.code).is_some(),
                "{row:?}"
            );
        }
        let count = |c| s.in_category("civil_status", c).len();
        // End of September 2024: 14 done, 20 basically done, 19 accelerating, 10 at risk.
        assert_eq!(
            (
                count("done"),
                count("basically_done"),
                count("accelerating"),
                count("at_risk")
            ),
            (14, 20, 19, 10)
        );
        let ninh_thuan = s
            .series
            .iter()
            .find(|r| r.code == "58" && r.dataset == "civil_status")
            .unwrap();
        assert_eq!(ninh_thuan.done_pct, 16.0);
        assert!(Targets::parse(&s.targets_csv(), &datasets()).is_ok());
    }

    use crate::targets::Targets;

    fn datasets() -> Vec<String> {
        crate::config::ValidationSettings::default().datasets
    }

    #[test]
    fn events_follow_the_pace_and_add_up() {
        let mut s = Scenario::autumn_2024(0.01);
        let mut g = Generator::new(1, "t", &datasets());
        let mut rng = fastrand::Rng::with_seed(1);
        let sum = |ms: &[Generated]| -> u64 {
            ms.iter()
                .map(|m| match m {
                    Generated::Record(r) => r.record_count,
                    _ => 0,
                })
                .sum()
        };
        let history = s.history(&mut g);
        let week = s.start + Duration::days(7);
        let next = s.between(&mut g, &mut rng, s.start, week);
        let expected: u64 = s.series.iter().map(|r| s.done(r, week)).sum();
        assert_eq!(sum(&history) + sum(&next), expected);
        assert!(next.iter().any(|m| matches!(m, Generated::Procedure(_))));
    }
}
