//! Time buckets for rolling windows on event time.
//!
//! Counts are kept in minute, hour and day buckets (days aligned to Vietnam midnight). A
//! window is read as the fewest buckets that cover it: a 30-day window is a few hours at its
//! start, whole days, then today's bucket, so reading it costs tens of keys, not thousands.
//! The start edge is rounded down to the minute (windows up to two hours) or the hour.

use chrono::{DateTime, Utc};

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// Buckets are numbered on Vietnam local time so that day buckets are calendar days there.
const LOCAL_SHIFT: i64 = 7 * HOUR;

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
            Tier::Hour => 32 * DAY,
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

/// A rolling window ending now.
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
    /// The buckets whose sum is this window at `now`, oldest first. The newest bucket is the
    /// current hour or day, which holds everything up to now.
    pub fn plan(self, now: DateTime<Utc>) -> Vec<(Tier, i64)> {
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
        assert!(w.start(now) <= now.timestamp() - w.seconds);
        assert!(w.start(now) > now.timestamp() - w.seconds - HOUR);
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
    fn thirty_days_reads_few_buckets() {
        let plan = WINDOWS[3].plan(at("2024-10-01T08:37:12Z"));
        assert!(plan.len() < 60, "{}", plan.len());
        assert!(plan.iter().any(|(t, _)| *t == Tier::Day));
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
