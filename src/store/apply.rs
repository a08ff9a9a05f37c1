//! The arguments of an apply.lua call (see its header), built once per batch and sent either
//! as a script call with every counter inside, or as a transaction of plain HSET and HINCRBY
//! commands around a script call that does the rest (see `Store::apply`).

use rustc_hash::FxHashMap;

use super::{Keys, PartitionBatch};
use crate::aggregate::{Field, Slot, SourceCounts, EXAMPLES_KEPT};
use crate::buckets::Tier;
use crate::sources;

/// One apply.lua call.
#[derive(Debug, Default)]
pub(super) struct ApplyCall {
    pub keys: Vec<String>,
    pub args: Vec<String>,
    /// Counter increments (index in `keys`, index in `names`, delta) left out of `args`, to
    /// go out as HINCRBY commands in the same transaction; empty when the script carries them.
    pub increments: Vec<(usize, usize, i64)>,
    /// Counters written whole, from the values [`super::Store::current`] read: (index in
    /// `keys`, [(index in `names`, value)]), one HSET per key. Only without `counters_inline`.
    pub sets: Vec<(usize, Vec<(usize, i64)>)>,
    /// The hash fields `increments` and `sets` name. A batch spread over many days adds to
    /// the same field in many buckets, so each field is rendered once per call, not once per
    /// counter.
    pub names: Vec<String>,
}

/// Renders each counter field once into a list of names, and finds it there after.
#[derive(Default)]
pub(super) struct Names {
    index: FxHashMap<Field, usize>,
}

impl Names {
    /// The index in `names` of `field`'s rendered name.
    pub fn of(&mut self, names: &mut Vec<String>, field: Field, datasets: &[String]) -> usize {
        *self.index.entry(field).or_insert_with(|| {
            names.push(field.render(datasets));
            names.len() - 1
        })
    }
}

fn named(names: &mut Vec<String>, name: String) -> usize {
    names.push(name);
    names.len() - 1
}

/// Builds the call for these partition batches, stored under `writer`'s token. With
/// `directory` (one tag per batch), the call also lists the partitions in the directory. With
/// `counters_inline`, the script adds the counters itself; without, they are left in
/// `increments`.
pub(super) fn call(
    keys: &Keys,
    datasets: &[String],
    batches: &[&PartitionBatch<'_>],
    directory: Option<&[String]>,
    writer: &str,
    now: i64,
    counters_inline: bool,
) -> ApplyCall {
    let mut call = ApplyCall::default();
    let mut names = Names::default();
    call.args.push(batches.len().to_string());
    call.args.push(u8::from(directory.is_some()).to_string());
    call.args.push(EXAMPLES_KEPT.to_string());
    call.args.push(writer.to_string());
    if directory.is_some() {
        call.keys.push(keys.directory());
    }
    for (n, b) in batches.iter().enumerate() {
        let tag = directory.map(|tags| tags[n].as_str());
        section(
            &mut call,
            &mut names,
            keys,
            datasets,
            b,
            tag,
            now,
            counters_inline,
        );
    }
    call
}

/// One partition's keys and arguments.
#[allow(clippy::too_many_arguments)]
fn section(
    call: &mut ApplyCall,
    names: &mut Names,
    keys: &Keys,
    datasets: &[String],
    b: &PartitionBatch<'_>,
    tag: Option<&str>,
    now: i64,
    counters_inline: bool,
) {
    let keys = keys.partition(b.topic, b.partition);
    let mut own = vec![keys.offset(), keys.totals(), keys.latest(), keys.dead()];
    // Bucket keys are numbered after the four fixed ones (Lua indexes from 1).
    let mut bucket_index: FxHashMap<(Tier, i64), usize> = FxHashMap::default();
    let mut expiries: Vec<(usize, i64)> = Vec::new();
    let cells = b.cells(now);
    let mut incr: Vec<(usize, usize, i64)> = Vec::with_capacity(cells.len());
    let current = b.current.filter(|_| !counters_inline);
    let mut sets: FxHashMap<usize, Vec<(usize, i64)>> = FxHashMap::default();
    for ((slot, field), delta) in cells.iter() {
        let idx = match slot {
            Slot::Total => 2,
            Slot::Bucket(tier, n) => *bucket_index.entry((*tier, *n)).or_insert_with(|| {
                own.push(keys.bucket(*tier, *n));
                expiries.push((own.len(), tier.ttl(*n, now).unwrap_or(1)));
                own.len()
            }),
        };
        let name = names.of(&mut call.names, *field, datasets);
        // An overflow is left to HINCRBY, which refuses it.
        let whole = current
            .and_then(|c| c.values.get(&(*slot, *field)))
            .and_then(|v| v.checked_add(*delta));
        match whole {
            Some(value) => sets.entry(idx).or_default().push((name, value)),
            None => incr.push((idx, name, *delta)),
        }
    }
    for (reason, n) in &b.aggregate.dead {
        let name = named(&mut call.names, reason.as_str().to_string());
        incr.push((4, name, *n));
    }
    let mut raise: Vec<(usize, String, i64)> = b
        .aggregate
        .latest
        .iter()
        .map(|(field, at)| {
            let name = names.of(&mut call.names, *field, datasets);
            (3, call.names[name].clone(), *at)
        })
        .collect();
    let mut push: Vec<(usize, String, String)> = Vec::new();
    if !b.aggregate.sources.is_empty() {
        own.push(keys.sources());
        let all_time = own.len();
        own.push(keys.source_examples());
        let examples = own.len();
        // Each hour a source sent in has its own hash, until no window reads it.
        let mut hour_index: FxHashMap<i64, usize> = FxHashMap::default();
        let mut field_index: FxHashMap<String, usize> = FxHashMap::default();
        for (source, d) in &b.aggregate.sources {
            let name = source.as_str();
            let mut field = |counter: String| {
                *field_index
                    .entry(format!("{name}|{counter}"))
                    .or_insert_with_key(|f| named(&mut call.names, f.clone()))
            };
            for (counter, n) in counts(&d.total()) {
                incr.push((all_time, field(counter), n));
            }
            for (hour, c) in &d.hours {
                let lives = Tier::Hour.start(hour + sources::HOURS_KEPT) - now;
                if lives <= 0 {
                    continue;
                }
                let hourly = *hour_index.entry(*hour).or_insert_with(|| {
                    own.push(keys.source_hour(*hour));
                    expiries.push((own.len(), lives));
                    own.len()
                });
                for (counter, n) in counts(c) {
                    incr.push((hourly, field(counter), n));
                }
            }
            if d.last_sent > 0 {
                raise.push((all_time, format!("{name}|seen"), d.last_sent));
            }
            if d.last_event > 0 {
                raise.push((all_time, format!("{name}|at"), d.last_event));
            }
            // Pushed oldest first, so the newest ends first and older batches' examples
            // move down rather than being overwritten out of order.
            for (reason, list) in &d.examples {
                for (sent, origin, detail) in list.iter().rev() {
                    let field = format!("{name}|{}", reason.as_str());
                    push.push((examples, field, format!("{sent}\t{origin}\t{detail}")));
                }
            }
        }
    }
    let args = &mut call.args;
    args.push(own.len().to_string());
    if let Some(tag) = tag {
        args.push(tag.to_string());
    }
    args.push(b.expected.to_string());
    args.push(b.next.to_string());
    if counters_inline {
        args.push(incr.len().to_string());
        for (idx, field, delta) in incr {
            let field = call.names[field].clone();
            args.extend([idx.to_string(), field, delta.to_string()]);
        }
    } else {
        args.push("0".to_string());
        // `own` is appended to `keys` below; Lua's indexes count from 1.
        let base = call.keys.len() - 1;
        call.increments
            .extend(incr.into_iter().map(|(idx, f, d)| (base + idx, f, d)));
        call.sets
            .extend(sets.into_iter().map(|(idx, values)| (base + idx, values)));
    }
    args.push(raise.len().to_string());
    for (idx, field, at) in raise {
        args.extend([idx.to_string(), field, at.to_string()]);
    }
    args.push(push.len().to_string());
    for (idx, field, text) in push {
        args.extend([idx.to_string(), field, text]);
    }
    args.push(expiries.len().to_string());
    for (idx, at) in expiries {
        args.extend([idx.to_string(), at.to_string()]);
    }
    call.keys.extend(own);
}

/// A source's counters as stored (`e`, `r`, `d`, `x.<reason>`), those that are not 0.
fn counts(c: &SourceCounts) -> impl Iterator<Item = (String, i64)> + '_ {
    let reasons = c
        .rejects
        .iter()
        .map(|(r, n)| (format!("x.{}", r.as_str()), *n));
    [("e", c.events), ("r", c.records), ("d", c.duplicates)]
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .chain(reasons)
        .filter(|(_, n)| *n != 0)
}
