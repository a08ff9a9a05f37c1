//! Where "now" comes from. Validation, window edges and (later) stall rules all ask a
//! [`Clock`], so tests can pin time and the demo can run simulated days in seconds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, FixedOffset, Utc};

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

/// Simulated time that starts at `start` and runs `speed` times faster than the wall clock:
/// the demo replays weeks of a season in minutes. It may be created stopped at `start`, to
/// wait for something before time runs.
#[derive(Debug)]
pub struct SimulatedClock {
    start: DateTime<Utc>,
    started: std::sync::OnceLock<Instant>,
    speed: f64,
}

impl SimulatedClock {
    pub fn new(start: DateTime<Utc>, speed: f64) -> Arc<SimulatedClock> {
        let clock = SimulatedClock::stopped(start, speed);
        clock.run();
        clock
    }

    /// Stands at `start` until [`SimulatedClock::run`].
    pub fn stopped(start: DateTime<Utc>, speed: f64) -> Arc<SimulatedClock> {
        Arc::new(SimulatedClock {
            start,
            started: std::sync::OnceLock::new(),
            speed,
        })
    }

    /// Lets time run from now on (once; later calls change nothing).
    pub fn run(&self) {
        let _ = self.started.set(Instant::now());
    }
}

impl Clock for SimulatedClock {
    fn now(&self) -> DateTime<Utc> {
        let Some(started) = self.started.get() else {
            return self.start;
        };
        let elapsed = started.elapsed().as_secs_f64() * self.speed;
        self.start + chrono::Duration::milliseconds((elapsed * 1000.0) as i64)
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

    #[test]
    fn a_stopped_clock_waits_to_run() {
        let start: DateTime<Utc> = "2024-10-01T00:00:00Z".parse().unwrap();
        let clock = SimulatedClock::stopped(start, 86_400.0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(clock.now(), start);
        clock.run();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(clock.now() > start);
    }

    #[test]
    fn simulated_time_runs_faster() {
        let start: DateTime<Utc> = "2024-10-01T00:00:00Z".parse().unwrap();
        let clock = SimulatedClock::new(start, 86_400.0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(clock.now() - start >= chrono::Duration::minutes(20));
    }
}
