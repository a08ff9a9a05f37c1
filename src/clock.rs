//! Where "now" comes from. Validation, window edges and (later) stall rules all ask a
//! [`Clock`], so tests can pin time and the demo can run simulated days in seconds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};

/// Vietnam time (UTC+7, no daylight saving): days and the code switch-over are counted in it.
pub fn vn_offset() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).expect("+07:00 is a valid offset")
}

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

pub type SharedClock = Arc<dyn Clock>;

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A holiday, or a run of them: a Vietnam calendar date (`2026-04-30`) or two joined by `..`
/// (`2026-02-14..2026-02-22`, both included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Holiday {
    pub first: NaiveDate,
    pub last: NaiveDate,
}

impl TryFrom<String> for Holiday {
    type Error = String;

    fn try_from(text: String) -> Result<Holiday, String> {
        let date = |t: &str| {
            NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d")
                .map_err(|_| format!("{text:?} is not a date (2026-04-30) or a run of dates (2026-02-14..2026-02-22)"))
        };
        let (first, last) = match text.split_once("..") {
            Some((a, b)) => (date(a)?, date(b)?),
            None => (date(&text)?, date(&text)?),
        };
        if last < first {
            return Err(format!("{text:?} ends before it begins"));
        }
        Ok(Holiday { first, last })
    }
}

impl Holiday {
    /// Whether `date` is one of `holidays`.
    pub fn any_on(holidays: &[Holiday], date: NaiveDate) -> bool {
        holidays.iter().any(|h| (h.first..=h.last).contains(&date))
    }

    /// How many dates from `first` to `last` (both included) are holidays; overlapping
    /// runs count a date once.
    pub fn count_between(holidays: &[Holiday], first: NaiveDate, last: NaiveDate) -> i64 {
        let mut dates: Vec<(NaiveDate, NaiveDate)> = holidays
            .iter()
            .map(|h| (h.first.max(first), h.last.min(last)))
            .filter(|(a, b)| a <= b)
            .collect();
        dates.sort();
        let (mut count, mut counted_to) = (0, None::<NaiveDate>);
        for (a, b) in dates {
            let a = counted_to.map_or(a, |c| a.max(c + chrono::Duration::days(1)));
            if a <= b {
                count += (b - a).num_days() + 1;
                counted_to = Some(b);
            }
        }
        count
    }
}

impl From<Holiday> for String {
    fn from(h: Holiday) -> String {
        if h.first == h.last {
            h.first.to_string()
        } else {
            format!("{}..{}", h.first, h.last)
        }
    }
}

/// Seconds of working time in `[from, to)` (unix seconds), counting only Vietnam calendar days
/// that are neither in `days_off` nor in `holidays`; counting stops once it reaches `enough`.
/// A feed that is quiet over a weekend or Tết has not stalled: its silence is measured in this.
pub fn working_seconds(
    from: i64,
    to: i64,
    enough: i64,
    days_off: &[Weekday],
    holidays: &[Holiday],
) -> i64 {
    const DAY: i64 = 86_400;
    // A bound on days looked at, when (nearly) every day is off.
    const MOST_DAYS: i64 = 3 * 366;
    let local = |t: i64| t + i64::from(vn_offset().local_minus_utc());
    let (start, end) = (local(from), local(to));
    let mut worked = 0;
    let mut day = end.div_euclid(DAY);
    let first = start.div_euclid(DAY).max(day - MOST_DAYS);
    while day >= first && worked < enough {
        let date = DateTime::from_timestamp(day * DAY, 0).map(|t| t.date_naive());
        let off =
            date.is_none_or(|d| days_off.contains(&d.weekday()) || Holiday::any_on(holidays, d));
        if !off {
            let (lo, hi) = ((day * DAY).max(start), ((day + 1) * DAY).min(end));
            worked += (hi - lo).max(0);
        }
        day -= 1;
    }
    worked
}

/// A clock that only moves when told to: for tests.
#[derive(Debug)]
pub struct ManualClock {
    millis: AtomicI64,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            millis: AtomicI64::new(at.timestamp_millis()),
        })
    }

    pub fn set(&self, at: DateTime<Utc>) {
        self.millis.store(at.timestamp_millis(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: chrono::Duration) {
        self.millis
            .fetch_add(by.num_milliseconds(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.millis.load(Ordering::SeqCst)).unwrap_or_default()
    }
}

/// One line of `report.schedule`: a weekday (or every day) and a time, Vietnam time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// `None`: every day.
    pub day: Option<Weekday>,
    pub time: NaiveTime,
}

impl Slot {
    /// `"Mon 08:00"`, `"monday 8:00"`, `"daily 17:30"`.
    pub fn parse(text: &str) -> Result<Slot, String> {
        let bad = || format!("{text:?} is not \"<weekday or daily> HH:MM\" (e.g. \"Mon 08:00\")");
        let mut words = text.split_whitespace();
        let (Some(day), Some(time), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let day = match day.to_ascii_lowercase().as_str() {
            "daily" | "everyday" => None,
            d => Some(d.parse::<Weekday>().map_err(|_| bad())?),
        };
        let time = NaiveTime::parse_from_str(time, "%H:%M").map_err(|_| bad())?;
        Ok(Slot { day, time })
    }

    /// The latest instant of this slot at or before `now`.
    pub fn latest(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let local = now.with_timezone(&vn_offset());
        (0..8)
            .map(|back| local.date_naive() - chrono::Duration::days(back))
            .filter(|d| self.day.is_none_or(|w| d.weekday() == w))
            .map(|d| {
                vn_offset()
                    .from_local_datetime(&d.and_time(self.time))
                    .single()
                    .expect("fixed offset")
                    .with_timezone(&Utc)
            })
            .find(|at| *at <= now)
            .expect("every slot recurs within a week")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holidays_between_two_dates_count_each_date_once() {
        let h = |t: &str| Holiday::try_from(t.to_string()).unwrap();
        let d = |t: &str| t.parse::<NaiveDate>().unwrap();
        let tet = [
            h("2026-02-14..2026-02-22"),
            h("2026-02-20..2026-02-23"),
            h("2026-04-30"),
        ];
        assert_eq!(
            Holiday::count_between(&tet, d("2026-01-01"), d("2026-12-31")),
            11
        );
        assert_eq!(
            Holiday::count_between(&tet, d("2026-02-21"), d("2026-04-29")),
            3
        );
        assert_eq!(
            Holiday::count_between(&tet, d("2026-03-01"), d("2026-04-29")),
            0
        );
        assert!(Holiday::any_on(&tet, d("2026-02-23")) && !Holiday::any_on(&tet, d("2026-02-24")));
    }

    #[test]
    fn manual_time_moves_only_when_told() {
        let start: DateTime<Utc> = "2024-10-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::hours(48));
        assert_eq!(clock.now(), start + chrono::Duration::hours(48));
    }

    #[test]
    fn working_time_leaves_out_weekends_and_holidays() {
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap().timestamp();
        let weekend = [Weekday::Sat, Weekday::Sun];
        let h = |t: &str| Holiday::try_from(t.to_string()).unwrap();
        // Last heard on Friday 4 December 2026 at 16:30 Vietnam time.
        let friday = at("2026-12-04T09:30:00Z");
        let worked = |to: &str, holidays: &[Holiday]| {
            working_seconds(friday, at(to), i64::MAX, &weekend, holidays) as f64 / 3600.0
        };
        assert_eq!(worked("2026-12-06T09:30:00Z", &[]), 7.5); // Sunday 16:30
        assert_eq!(worked("2026-12-07T09:30:00Z", &[]), 24.0); // Monday 16:30
        assert_eq!(worked("2026-12-08T09:30:00Z", &[h("2026-12-07")]), 24.0);
        assert_eq!(
            worked("2026-12-10T09:30:00Z", &[h("2026-12-07..2026-12-09")]),
            24.0
        );
        // Every day counts when none is off; counting stops at `enough`.
        let all = working_seconds(friday, at("2026-12-06T09:30:00Z"), i64::MAX, &[], &[]);
        assert_eq!(all, 48 * 3600);
        let some = working_seconds(friday, at("2026-12-30T09:30:00Z"), 3600, &weekend, &[]);
        assert!((3600..=86_400).contains(&some), "{some}");
        assert!(Holiday::try_from("2026-02-22..2026-02-14".to_string()).is_err());
        assert!(Holiday::try_from("Tết".to_string()).is_err());
        assert_eq!(
            String::from(h("2026-02-14..2026-02-22")),
            "2026-02-14..2026-02-22"
        );
    }
}
