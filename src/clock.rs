//! Where "now" comes from. Validation, window edges and (later) stall rules all ask a
//! [`Clock`], so tests can pin time and the demo can run simulated days in seconds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, NaiveTime, TimeZone, Utc, Weekday};

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
    fn manual_time_moves_only_when_told() {
        let start: DateTime<Utc> = "2024-10-01T00:00:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::hours(48));
        assert_eq!(clock.now(), start + chrono::Duration::hours(48));
    }
}
