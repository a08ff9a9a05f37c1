//! Time buckets for rolling windows on event time.
//!
//! Counts are kept in minute, hour and day buckets (days aligned to Vietnam midnight). A
//! window is read as the fewest buckets that cover it. The 1 h and 24 h windows roll: their
//! start edge is rounded down to the minute or the hour. The 7 d and 30 d windows are
//! calendar days, today's part included, as the task force's reports count them (and as
//! daily history reads them): day buckets only. So hour buckets live two days, not a month,
//! and an event older than that costs one counter per field in Redis, not two: a backfill
//! over two months writes about half as much and keeps a tenth of the keys. Rates over the
//! calendar windows read the whole days before today (see [`Window::rate_plan`]).

use chrono::{DateTime, Utc};

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// Buckets are numbered on Vietnam local time so that day buckets are calendar days there.
const LOCAL_SHIFT: i64 = 7 * HOUR;

/// The Vietnam calendar date of day bucket `day`.
pub fn day_date(day: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(day * DAY, 0)
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Minute,
    Hour,
    Day,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Minute, Tier::Hour, Tier::Day];

    pub fn seconds(self) -> i64 {
        match self {
            Tier::Minute => MINUTE,
            Tier::Hour => HOUR,
            Tier::Day => DAY,
        }
    }

    /// The letter in the bucket's Redis key.
    pub fn letter(self) -> char {
        match self {
            Tier::Minute => 'm',
            Tier::Hour => 'h',
            Tier::Day => 'd',
        }
    }

    /// How long a bucket is kept after it ends: long enough for the longest window that reads
    /// this tier (days are kept a year and more, for daily history).
    pub fn retention(self) -> i64 {
        match self {
            Tier::Minute => 3 * HOUR,
            Tier::Hour => 2 * DAY,
            Tier::Day => 400 * DAY,
        }
    }

    /// The bucket holding unix time `t`.
    pub fn bucket(self, t: i64) -> i64 {
        (t + LOCAL_SHIFT).div_euclid(self.seconds())
    }

    /// Unix time at which bucket `b` starts.
    pub fn start(self, b: i64) -> i64 {
        b * self.seconds() - LOCAL_SHIFT
    }

    /// Seconds a bucket written at `now` should live, or `None` if it is already too old to
    /// be read by any window (then it is not written at all).
    pub fn ttl(self, b: i64, now: i64) -> Option<i64> {
        let ttl = self.start(b + 1) + self.retention() - now;
        (ttl > 0).then_some(ttl)
    }
}

/// A window ending now: rolling (to the minute or the hour) up to a day, calendar days beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub name: &'static str,
    pub seconds: i64,
}

/// The windows every counter is read over.
pub const WINDOWS: [Window; 4] = [
    Window {
        name: "1h",
        seconds: HOUR,
    },
    Window {
        name: "24h",
        seconds: DAY,
    },
    Window {
        name: "7d",
        seconds: 7 * DAY,
    },
    Window {
        name: "30d",
        seconds: 30 * DAY,
    },
];

impl Window {
    /// The window of this name in [`WINDOWS`].
    pub fn named(name: &str) -> Option<Window> {
        WINDOWS.iter().copied().find(|w| w.name == name)
    }

    /// Whole calendar days (today's part included), or `None` for a rolling window.
    pub fn calendar_days(self) -> Option<i64> {
        (self.seconds > DAY).then_some(self.seconds / DAY)
    }

    /// Days this window covers at `now`, from its start edge. A calendar window covers its
    /// earlier days and today's part so far (6.0 to 7.0 days for `7d`).
    pub fn days(self, now: DateTime<Utc>) -> f64 {
        (now.timestamp() - self.start(now)) as f64 / DAY as f64
    }

    /// The buckets a rate over this window reads at `now`: a calendar window's number of whole
    /// days before today, a rolling window its plan. Any 7 whole days hold each weekday once;
    /// 6 days and a part of today do not, so a province that records on weekdays only would
    /// read from 0.67 to 0.83 of its weekly rate by weekday and hour, and an alert on that
    /// rate would fire on Mondays and resolve on Saturdays.
    pub fn rate_plan(self, now: DateTime<Utc>) -> Vec<(Tier, i64)> {
        match self.calendar_days() {
            Some(days) => {
                let today = Tier::Day.bucket(now.timestamp());
                (today - days..today).map(|d| (Tier::Day, d)).collect()
            }
            None => self.plan(now),
        }
    }

    /// Days the sum over [`Window::rate_plan`] covers: what a rate over this window divides by.
    pub fn rate_days(self, now: DateTime<Utc>) -> f64 {
        match self.calendar_days() {
            Some(days) => days as f64,
            None => self.days(now),
        }
    }

    /// The buckets whose sum is this window at `now`, oldest first. The newest bucket is the
    /// current hour or day, which holds everything up to now.
    pub fn plan(self, now: DateTime<Utc>) -> Vec<(Tier, i64)> {
        if let Some(days) = self.calendar_days() {
            let today = Tier::Day.bucket(now.timestamp());
            return (today + 1 - days..=today).map(|d| (Tier::Day, d)).collect();
        }
        let now = now.timestamp() + LOCAL_SHIFT;
        let edge = if self.seconds <= 2 * HOUR {
            MINUTE
        } else {
            HOUR
        };
        let mut t = (now - self.seconds).div_euclid(edge) * edge;
        let today = now.div_euclid(DAY) * DAY;
        let this_hour = now.div_euclid(HOUR) * HOUR;
        let mut plan = Vec::new();
        while t <= now {
            let tier = if t % DAY == 0 && t <= today {
                Tier::Day
            } else if t % HOUR == 0 && t <= this_hour {
                Tier::Hour
            } else {
                Tier::Minute
            };
            plan.push((tier, t.div_euclid(tier.seconds())));
            t += tier.seconds();
        }
        plan
    }

    /// Unix time from which this window counts at `now` (its rounded start edge).
    pub fn start(self, now: DateTime<Utc>) -> i64 {
        let plan = self.plan(now);
        let (tier, b) = plan[0];
        tier.start(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Every second from the window's rounded start to the end of the newest bucket is covered
    /// exactly once.
    fn assert_tiles(w: Window, now: DateTime<Utc>) {
        let plan = w.plan(now);
        let mut t = w.start(now);
        for (tier, b) in &plan {
            assert_eq!(tier.start(*b), t, "gap or overlap in {plan:?}");
            t = tier.start(b + 1);
        }
        assert!(t > now.timestamp());
        match w.calendar_days() {
            None => {
                assert!(w.start(now) <= now.timestamp() - w.seconds);
                assert!(w.start(now) > now.timestamp() - w.seconds - HOUR);
            }
            Some(days) => {
                // From a Vietnam midnight, covering days - 1 whole days and today's part.
                assert_eq!(
                    w.start(now),
                    Tier::Day.start(Tier::Day.bucket(w.start(now)))
                );
                assert!(w.days(now) >= (days - 1) as f64 && w.days(now) < days as f64);
            }
        }
    }

    #[test]
    fn windows_tile_without_gaps_or_overlaps() {
        for now in [
            "2024-10-01T00:00:00Z",
            "2024-10-01T16:59:59Z",
            "2024-10-01T17:00:00Z",
            "2024-12-31T23:37:12Z",
        ] {
            for w in WINDOWS {
                assert_tiles(w, at(now));
            }
        }
    }

    #[test]
    fn seven_and_thirty_days_are_calendar_days() {
        // 2024-10-01T08:37:12Z is 15:37 in Hà Nội on 1 October.
        let now = at("2024-10-01T08:37:12Z");
        let today = Tier::Day.bucket(now.timestamp());
        assert_eq!(WINDOWS[3].plan(now).len(), 30);
        assert_eq!(WINDOWS[2].plan(now)[0], (Tier::Day, today - 6));
        // Six whole days (25 to 30 September) and 15 h 37 min 12 s of 1 October.
        let expected = 6.0 + (15 * 3600 + 37 * 60 + 12) as f64 / 86_400.0;
        assert!((WINDOWS[2].days(now) - expected).abs() < 1e-9);
        // A rolling window covers its length and the part of an hour its edge rounds down.
        assert!((WINDOWS[1].days(now) - (1.0 + 37.2 / 1440.0)).abs() < 1e-9);
    }

    #[test]
    fn rates_over_calendar_windows_read_the_whole_days_before_today() {
        let now = at("2024-10-01T08:37:12Z");
        let today = Tier::Day.bucket(now.timestamp());
        let week = WINDOWS[2].rate_plan(now);
        assert_eq!(week.len(), 7);
        assert_eq!(week[0], (Tier::Day, today - 7));
        assert_eq!(week[6], (Tier::Day, today - 1));
        assert_eq!(WINDOWS[2].rate_days(now), 7.0);
        assert_eq!(WINDOWS[3].rate_plan(now).len(), 30);
        // A rolling window's rate reads the window itself.
        assert_eq!(WINDOWS[1].rate_plan(now), WINDOWS[1].plan(now));
        assert_eq!(WINDOWS[1].rate_days(now), WINDOWS[1].days(now));
    }

    /// A province that records `r` on each weekday and nothing at weekends: its 7-day rate
    /// reads 5r/7 at every hour of a fortnight, where the window with today's part would
    /// swing from about 0.67r to 0.83r with the weekday (beyond `pace_resolve_margin`).
    #[test]
    fn a_weekday_only_province_reads_the_same_rate_all_week() {
        let r = 1_000.0;
        let on = |day: i64| {
            // Day buckets count from 1970-01-01 (a Thursday) in Vietnam time.
            let weekday = (day + 3).rem_euclid(7); // 0 = Monday
            if weekday < 5 {
                r
            } else {
                0.0
            }
        };
        let week = WINDOWS[2];
        let start = at("2024-11-03T17:30:00Z").timestamp(); // 00:30 on Monday 4 November
        let (mut low, mut high) = (f64::MAX, 0.0_f64);
        for hour in 0..14 * 24 {
            let now = DateTime::from_timestamp(start + hour * HOUR, 0).unwrap();
            let sum: f64 = week.rate_plan(now).iter().map(|(_, d)| on(*d)).sum();
            assert!(
                (sum / week.rate_days(now) - r * 5.0 / 7.0).abs() < 1e-9,
                "{now}"
            );
            // The window with today's part, today's records spread over the day.
            let today = Tier::Day.bucket(now.timestamp());
            let part = (now.timestamp() - Tier::Day.start(today)) as f64 / DAY as f64;
            let with_today: f64 = (today - 6..today).map(on).sum::<f64>() + on(today) * part;
            let rate = with_today / week.days(now);
            (low, high) = (low.min(rate / r), high.max(rate / r));
        }
        assert!(low < 0.68 && high > 0.82, "{low} {high}");
    }

    #[test]
    fn hour_buckets_outlive_the_24_hour_window() {
        // The oldest hour the 24 h window reads starts up to 25 h back.
        let now = at("2024-10-01T08:59:59Z").timestamp();
        let oldest = Tier::Hour.bucket(now - DAY);
        assert!(Tier::Hour.ttl(oldest, now).is_some());
        assert_eq!(Tier::Hour.ttl(Tier::Hour.bucket(now - 3 * DAY), now), None);
    }

    #[test]
    fn days_are_vietnam_calendar_days() {
        // 17:00 UTC is midnight in Hà Nội.
        let b = Tier::Day.bucket(at("2024-10-01T17:00:00Z").timestamp());
        assert_eq!(
            Tier::Day.bucket(at("2024-10-01T16:59:59Z").timestamp()),
            b - 1
        );
    }

    #[test]
    fn too_old_buckets_are_not_written() {
        let now = at("2024-10-01T00:00:00Z").timestamp();
        let old = Tier::Minute.bucket(now - 4 * HOUR);
        assert_eq!(Tier::Minute.ttl(old, now), None);
        assert!(Tier::Hour
            .ttl(Tier::Hour.bucket(now - 4 * HOUR), now)
            .is_some());
    }
}
