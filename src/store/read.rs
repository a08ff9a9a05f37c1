//! Reading the counters back: every partition's totals, newest times, dead-letter counts and
//! window sums, merged. Readers (status, rules, the HTTP API) all start from a [`Snapshot`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures::future::try_join_all;

use super::{Store, StoreError};
use crate::buckets::{Tier, WINDOWS};
use crate::sources;

/// A counter's total, its sums over each of [`WINDOWS`], and the sums a rate over each reads
/// (see [`crate::buckets::Window::rate_plan`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub total: i64,
    pub windows: [i64; WINDOWS.len()],
    pub rate_sums: [i64; WINDOWS.len()],
    /// For a calendar window, the first day bucket of its rate plan with a count: a rate over
    /// a feed younger than the window divides by the days since (see `DatasetStatus::rate`).
    #[serde(skip)]
    pub rate_from: [Option<i64>; WINDOWS.len()],
}

/// Everything stored, summed over partitions, keyed by the field names the pipeline writes
/// (`o94|r.civil_status`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    pub as_of: DateTime<Utc>,
    pub counts: BTreeMap<String, Counts>,
    pub latest: BTreeMap<String, i64>,
    pub dead: BTreeMap<String, i64>,
    /// Next offset per `topic/partition`.
    pub offsets: BTreeMap<String, i64>,
}

type Raw = HashMap<String, String>;
type Hash = HashMap<String, i64>;

/// Counter values of a hash, without the '~' encoding pin (see apply.lua).
fn counters(raw: Raw) -> Hash {
    raw.into_iter()
        .filter(|(k, _)| !k.starts_with('~'))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect()
}

impl Store {
    /// The tags of every partition that ever stored data.
    async fn tags(&self) -> Result<BTreeSet<String>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("SMEMBERS")
            .arg(self.keys.directory())
            .query_async(&mut conn)
            .await?)
    }

    /// Reads every partition's figures at `now`, one pipeline per partition, all at once.
    pub async fn snapshot(&self, now: DateTime<Utc>) -> Result<Snapshot, StoreError> {
        let tags = self.tags().await?;
        let plans: Vec<Vec<(Tier, i64)>> = WINDOWS.iter().map(|w| w.plan(now)).collect();
        let rate_plans: Vec<Vec<(Tier, i64)>> = WINDOWS.iter().map(|w| w.rate_plan(now)).collect();
        let buckets: BTreeSet<(Tier, i64)> =
            plans.iter().chain(&rate_plans).flatten().copied().collect();
        let buckets: Vec<(Tier, i64)> = buckets.into_iter().collect();

        let reads = tags.iter().map(|tag| {
            let keys = self.keys.tagged(tag);
            let mut pipe = redis::pipe();
            pipe.get(keys.offset())
                .hgetall(keys.totals())
                .hgetall(keys.latest())
                .hgetall(keys.dead());
            for (tier, b) in &buckets {
                pipe.hgetall(keys.bucket(*tier, *b));
            }
            let mut conn = self.conn.clone();
            async move {
                let mut values: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                let rest = values.split_off(4);
                let (offset, totals, latest, dead): (Option<i64>, Raw, Raw, Raw) =
                    redis::from_redis_value(redis::Value::Array(values))?;
                let head = (offset, counters(totals), counters(latest), counters(dead));
                let rest = rest
                    .into_iter()
                    .map(|v| redis::from_redis_value(v).map(counters))
                    .collect::<Result<Vec<Hash>, _>>()?;
                Ok::<_, StoreError>((tag.clone(), head, rest))
            }
        });
        let mut snap = Snapshot {
            as_of: now,
            ..Snapshot::default()
        };
        for (tag, (offset, totals, latest, dead), bucket_values) in try_join_all(reads).await? {
            if let Some(o) = offset {
                snap.offsets.insert(tag, o);
            }
            for (field, v) in totals {
                snap.counts.entry(field).or_default().total += v;
            }
            for (field, v) in latest {
                let t = snap.latest.entry(field).or_insert(v);
                *t = (*t).max(v);
            }
            for (reason, v) in dead {
                *snap.dead.entry(reason).or_default() += v;
            }
            let by_bucket: HashMap<(Tier, i64), &Hash> =
                buckets.iter().copied().zip(bucket_values.iter()).collect();
            for (w, (plan, rate_plan)) in plans.iter().zip(&rate_plans).enumerate() {
                for bucket in plan {
                    for (field, v) in by_bucket[bucket] {
                        snap.counts.entry(field.clone()).or_default().windows[w] += v;
                    }
                }
                for bucket in rate_plan {
                    for (field, v) in by_bucket[bucket] {
                        let counts = snap.counts.entry(field.clone()).or_default();
                        counts.rate_sums[w] += v;
                        if let (Tier::Day, true) = (bucket.0, *v != 0) {
                            let from = &mut counts.rate_from[w];
                            *from = Some(from.map_or(bucket.1, |f| f.min(bucket.1)));
                        }
                    }
                }
            }
        }
        Ok(snap)
    }
}

/// Counts per Vietnam calendar day, from the day buckets, summed over partitions: what the
/// figures were at the end of any past day, and what each day added.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Daily {
    /// Day bucket number of `days[0]`.
    pub first: i64,
    /// Per day, oldest first, the counts of each field that day.
    pub days: Vec<HashMap<String, i64>>,
}

impl Daily {
    /// Day bucket number of the last day held.
    pub fn last(&self) -> i64 {
        self.first + self.days.len() as i64 - 1
    }

    fn day(&self, d: i64) -> Option<&HashMap<String, i64>> {
        usize::try_from(d - self.first)
            .ok()
            .and_then(|i| self.days.get(i))
    }

    /// Sum of `field` over days `from..=to`.
    fn sum(&self, field: &str, from: i64, to: i64) -> i64 {
        (from..=to).filter_map(|d| self.day(d)?.get(field)).sum()
    }

    /// `field`'s count on day `d`.
    fn get(&self, field: &str, d: i64) -> i64 {
        self.day(d).and_then(|c| c.get(field)).copied().unwrap_or(0)
    }
}

impl Snapshot {
    /// The figures as they stood at the end of day `day` (Vietnam time): totals less what
    /// later days added; the 24 h, 7 d and 30 d windows as that day and the days before it
    /// (the 1 h window is not kept that long, so it reads 0), which are whole days, so rates
    /// read them too. The newest event times are kept only where they are not later than
    /// that.
    pub fn at_end_of(&self, daily: &Daily, day: i64) -> Snapshot {
        let later = self
            .counts
            .keys()
            .map(|f| (f.as_str(), daily.sum(f, day + 1, daily.last())))
            .collect();
        self.ended(daily, day, &later)
    }

    /// [`Snapshot::at_end_of`] each day of `from..=to`, oldest first. What the later days
    /// added is summed once, newest day first, rather than again for each day.
    pub fn at_ends_of(&self, daily: &Daily, from: i64, to: i64) -> Vec<(i64, Snapshot)> {
        let mut later: HashMap<&str, i64> = self
            .counts
            .keys()
            .map(|f| (f.as_str(), daily.sum(f, to + 1, daily.last())))
            .collect();
        let mut out = Vec::new();
        for day in (from..=to).rev() {
            out.push((day, self.ended(daily, day, &later)));
            for (field, v) in daily.day(day).into_iter().flatten() {
                if let Some(l) = later.get_mut(field.as_str()) {
                    *l += v;
                }
            }
        }
        out.reverse();
        out
    }

    /// The figures at the end of `day`, `later` being what each field counted after it.
    fn ended(&self, daily: &Daily, day: i64, later: &HashMap<&str, i64>) -> Snapshot {
        let end = Tier::Day.start(day + 1);
        let mut counts = BTreeMap::new();
        for (field, c) in &self.counts {
            let mut windows = [0; WINDOWS.len()];
            // As the live figures keep it: a young feed is rated over its own days.
            let mut rate_from = [None; WINDOWS.len()];
            for (i, w) in WINDOWS.iter().enumerate() {
                let days = w.seconds / Tier::Day.seconds();
                for d in day + 1 - days..=day {
                    let v = daily.get(field, d);
                    if v != 0 {
                        windows[i] += v;
                        rate_from[i].get_or_insert(d);
                    }
                }
            }
            counts.insert(
                field.clone(),
                Counts {
                    total: c.total - later.get(field.as_str()).copied().unwrap_or(0),
                    windows,
                    rate_sums: windows,
                    rate_from,
                },
            );
        }
        Snapshot {
            as_of: DateTime::from_timestamp(end, 0).unwrap_or(self.as_of),
            counts,
            latest: self
                .latest
                .iter()
                .filter(|(_, at)| **at < end)
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            dead: self.dead.clone(),
            offsets: self.offsets.clone(),
        }
    }
}

impl Store {
    /// The day buckets of the last `days` days up to and including tomorrow (an event may be
    /// dated a little ahead), one pipeline per partition, all at once.
    pub async fn daily(&self, now: DateTime<Utc>, days: usize) -> Result<Daily, StoreError> {
        let tags = self.tags().await?;
        let last = Tier::Day.bucket(now.timestamp()) + 1;
        let first = last - days as i64;
        let reads = tags.iter().map(|tag| {
            let keys = self.keys.tagged(tag);
            let mut pipe = redis::pipe();
            for d in first..=last {
                pipe.hgetall(keys.bucket(Tier::Day, d));
            }
            let mut conn = self.conn.clone();
            async move {
                let values: Vec<Raw> = pipe.query_async(&mut conn).await?;
                Ok::<_, StoreError>(values.into_iter().map(counters).collect::<Vec<Hash>>())
            }
        });
        let mut daily = Daily {
            first,
            days: vec![HashMap::new(); days + 1],
        };
        for partition in try_join_all(reads).await? {
            for (i, day) in partition.into_iter().enumerate() {
                for (field, v) in day {
                    *daily.days[i].entry(field).or_default() += v;
                }
            }
        }
        Ok(daily)
    }
}

impl Store {
    /// Every source's figures (see [`crate::sources`]), summed over partitions: one pipeline
    /// per partition, all at once.
    pub async fn sources(
        &self,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, sources::Stored>, StoreError> {
        let tags = self.tags().await?;
        let hour = Tier::Hour.bucket(now.timestamp());
        let hours: Vec<i64> = (hour - sources::HOURS_KEPT + 1..=hour).collect();
        let reads = tags.iter().map(|tag| {
            let keys = self.keys.tagged(tag);
            let mut pipe = redis::pipe();
            pipe.hgetall(keys.sources()).hgetall(keys.source_examples());
            for h in &hours {
                pipe.hgetall(keys.source_hour(*h));
            }
            let mut conn = self.conn.clone();
            async move {
                let values: Vec<Raw> = pipe.query_async(&mut conn).await?;
                Ok::<_, StoreError>(values)
            }
        });
        let mut out: BTreeMap<String, sources::Stored> = BTreeMap::new();
        for values in try_join_all(reads).await? {
            let mut values = values.into_iter();
            let all_time = values.next().unwrap_or_default();
            let examples = values.next().unwrap_or_default();
            for (field, v) in counters(all_time) {
                let Some((name, counter)) = field.split_once('|') else {
                    continue;
                };
                let s = out.entry(name.to_string()).or_default();
                match counter {
                    "seen" => s.last_seen = s.last_seen.max(Some(v)),
                    "at" => s.last_event = s.last_event.max(Some(v)),
                    _ => s.total.add(counter, v),
                }
            }
            for (field, text) in examples {
                let mut f = field.split('|');
                let (Some(name), Some(reason), Some(slot)) = (f.next(), f.next(), f.next()) else {
                    continue; // the '~' pin
                };
                let mut t = text.splitn(3, '\t');
                let (Some(at), Some(origin), Some(detail)) = (t.next(), t.next(), t.next()) else {
                    continue;
                };
                let Some(at) = at.parse().ok().and_then(|t| DateTime::from_timestamp(t, 0)) else {
                    continue;
                };
                out.entry(name.to_string())
                    .or_default()
                    .examples
                    .push(sources::Example {
                        at,
                        reason: reason.to_string(),
                        origin: origin.to_string(),
                        detail: detail.to_string(),
                        slot: slot.parse().unwrap_or(u8::MAX),
                    });
            }
            for (h, raw) in hours.iter().zip(values) {
                for (field, v) in counters(raw) {
                    if let Some((name, counter)) = field.split_once('|') {
                        let s = out.entry(name.to_string()).or_default();
                        s.hours.entry(*h).or_default().add(counter, v);
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provinces::View;
    use crate::status::Status;
    use crate::targets::Targets;

    const FIELD: &str = "n01|r.land";

    /// Hà Nội's land feed, started on day 103 at 200 records a day; now is day 110, 01:00.
    fn young_feed() -> (Snapshot, Daily) {
        let first = 100;
        // Days 100 to 111: the last held is tomorrow.
        let mut days = vec![HashMap::new(); 12];
        for d in 103..=110 {
            days[(d - first) as usize].insert(FIELD.to_string(), 200);
        }
        let snap = Snapshot {
            as_of: DateTime::from_timestamp(Tier::Day.start(110) + 3_600, 0).unwrap(),
            counts: [(
                FIELD.to_string(),
                Counts {
                    total: 8 * 200,
                    ..Counts::default()
                },
            )]
            .into(),
            ..Snapshot::default()
        };
        (snap, Daily { first, days })
    }

    #[test]
    fn a_past_day_rates_a_young_feed_over_its_own_days_as_the_live_figures_do() {
        let (snap, daily) = young_feed();
        // The end of day 106: four days of 200, rated as 200 a day, not as 800 over 7.
        let past = snap.at_end_of(&daily, 106);
        let c = &past.counts[FIELD];
        assert_eq!(
            (c.total, c.windows[2], c.rate_from[2]),
            (800, 800, Some(103))
        );
        let status = Status::build(
            &past,
            &Targets::default(),
            &["land".into()],
            View::Current34,
        );
        let row = status.provinces.iter().find(|p| p.code == "01").unwrap();
        assert_eq!(row.datasets["land"].rate("7d", past.as_of), 200.0);
    }

    #[test]
    fn every_day_at_once_is_each_day_alone() {
        let (snap, daily) = young_feed();
        let all = snap.at_ends_of(&daily, 101, 110);
        assert_eq!(all.len(), 10);
        for (day, s) in all {
            assert_eq!(s, snap.at_end_of(&daily, day), "day {day}");
        }
    }
}
