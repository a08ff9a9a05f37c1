//! The rules on figures set up by hand: which fire, and which stay quiet.

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::config::RuleSettings;
use crate::status::View;
use crate::store::{Counts, Snapshot};
use crate::targets::Targets;

fn now() -> DateTime<Utc> {
    "2024-11-20T03:00:00Z".parse().unwrap()
}

fn datasets() -> Vec<String> {
    ["civil_status", "land"].map(String::from).to_vec()
}

/// Counts for a field: total, and [1h, 24h, 7d, 30d] window sums, which rates read too (as
/// if today had nothing yet: the 7 and 30 whole days before it hold the same).
fn put(snap: &mut Snapshot, field: &str, total: i64, windows: [i64; 4], last: Option<Duration>) {
    let counts = Counts {
        total,
        windows,
        rate_sums: windows,
        ..Counts::default()
    };
    snap.counts.insert(field.to_string(), counts);
    if let Some(ago) = last {
        let metric = field.split_once('|').unwrap().1;
        let latest = if metric.starts_with("p.") {
            field.split('|').next().unwrap().to_string() + "|p"
        } else {
            field.to_string()
        };
        snap.latest.insert(latest, (now() - ago).timestamp());
    }
}

fn keys(e: &Evaluation) -> Vec<(String, Severity)> {
    let mut k: Vec<_> = e
        .findings
        .iter()
        .map(|f| (f.key.clone(), f.severity))
        .collect();
    k.sort();
    k
}

/// The 63-unit view of autumn 2024: deadline 31 Dec 2024, 41.9 days after `now`.
fn scenario() -> Evaluation {
    let targets = Targets::parse(
        "province,dataset,target,deadline,scheme\n\
         58,civil_status,1000000,2024-12-31,63\n\
         49,civil_status,1000000,2024-12-31,63\n\
         01,civil_status,200000,2024-12-31,63\n\
         79,civil_status,1000000,2024-12-31,63\n\
         56,civil_status,1000000,2024-12-31,63\n",
        &datasets(),
    )
    .unwrap();
    let mut snap = Snapshot {
        as_of: now(),
        ..Snapshot::default()
    };
    // Ninh Thuận: 16% done, nothing for 5 days.
    put(
        &mut snap,
        "o58|r.civil_status",
        160_000,
        [0, 0, 20_000, 90_000],
        Some(Duration::days(5)),
    );
    // Quảng Nam: 25%, reporting, but at 5,000/day where 17,900/day is needed: critical.
    put(
        &mut snap,
        "o49|r.civil_status",
        250_000,
        [200, 5_000, 35_000, 150_000],
        Some(Duration::hours(1)),
    );
    // Hà Nội: target reached.
    put(
        &mut snap,
        "o01|r.civil_status",
        210_000,
        [0, 100, 700, 3_000],
        Some(Duration::hours(2)),
    );
    // Hồ Chí Minh: 60% and fast enough (57,000/day over 7 days, 9,500 needed).
    put(
        &mut snap,
        "o79|r.civil_status",
        600_000,
        [2_000, 50_000, 400_000, 600_000],
        Some(Duration::minutes(5)),
    );
    // Khánh Hòa: 50%, 7-day pace 10,000/day against 11,900 needed (a warning), and the
    // 30-day rate says it will still make it: no projected miss.
    put(
        &mut snap,
        "o56|r.civil_status",
        500_000,
        [500, 10_000, 70_000, 500_000],
        Some(Duration::hours(1)),
    );
    let status = crate::status::Status::build(&snap, &targets, &datasets(), View::Legacy63);
    evaluate(&status, now(), &RuleSettings::default())
}

#[test]
fn the_scenario_fires_what_it_should_and_nothing_else() {
    let e = scenario();
    assert_eq!(
        keys(&e),
        vec![
            ("63:01:civil_status:completed".into(), Severity::Info),
            ("63:49:civil_status:behind_pace".into(), Severity::Critical),
            (
                "63:49:civil_status:projected_miss".into(),
                Severity::Warning
            ),
            ("63:56:civil_status:behind_pace".into(), Severity::Warning),
            ("63:58:civil_status:behind_pace".into(), Severity::Critical),
            (
                "63:58:civil_status:projected_miss".into(),
                Severity::Warning
            ),
            ("63:58:civil_status:silent".into(), Severity::Warning),
        ]
    );
}

#[test]
fn facts_carry_pace_needed_days_left_and_projection() {
    let e = scenario();
    let (subject, f) = e.about("63:49:civil_status:behind_pace").unwrap();
    assert_eq!(subject.name, "Quảng Nam");
    assert_eq!(f.percent, Some(25.0));
    // 35,000 in the 7 whole days before 20 November (Hà Nội).
    assert!((f.pace_7d - 35_000.0 / 7.0).abs() < 1e-6);
    let days = f.days_left.unwrap();
    // 31 Dec ends at 2025-01-01T00:00+07:00 = 2024-12-31T17:00Z; now is 2024-11-20T03:00Z.
    assert!((days - (41.0 + 14.0 / 24.0)).abs() < 1e-9, "{days}");
    assert!((f.pace_needed.unwrap() - 750_000.0 / days).abs() < 1e-6);
    // 750,000 left at 150,000 per 30 days (the whole days before today): 150 days from now.
    assert_eq!(
        f.projected,
        Some(chrono::NaiveDate::from_ymd_opt(2025, 4, 19).unwrap())
    );
}

#[test]
fn a_province_that_never_started_is_silent_and_projected_to_miss() {
    let targets = Targets::parse(
        "province,dataset,target,deadline\n15,land,1000,2026-12-31\n",
        &datasets(),
    )
    .unwrap();
    let snap = Snapshot::default();
    let status = crate::status::Status::build(&snap, &targets, &datasets(), View::Current34);
    let e = evaluate(&status, now(), &RuleSettings::default());
    let k: Vec<String> = keys(&e).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        k,
        vec![
            "34:15:land:behind_pace",
            "34:15:land:projected_miss",
            "34:15:land:silent"
        ]
    );
    assert_eq!(e.about("34:15:land:silent").unwrap().1.projected, None);
}

#[test]
fn procedure_rules_need_history_and_volume() {
    let mut snap = Snapshot::default();
    // Đà Nẵng: 60 dossiers this week, 30 online end to end: 50% < 80%.
    put(
        &mut snap,
        "n48|p.online.n",
        1_000,
        [1, 5, 30, 500],
        Some(Duration::hours(3)),
    );
    put(&mut snap, "n48|p.in_person.n", 1_000, [1, 5, 30, 500], None);
    // Huế: 40% online, but only 10 dossiers: too few to judge; silent for 3 days.
    put(
        &mut snap,
        "n46|p.online.n",
        100,
        [0, 0, 4, 40],
        Some(Duration::days(3)),
    );
    put(&mut snap, "n46|p.in_person.n", 100, [0, 0, 6, 60], None);
    // Hà Nội: 95% online, reporting.
    put(
        &mut snap,
        "n01|p.online.n",
        10_000,
        [10, 100, 950, 4000],
        Some(Duration::minutes(1)),
    );
    put(&mut snap, "n01|p.in_person.n", 500, [0, 5, 50, 200], None);
    let status =
        crate::status::Status::build(&snap, &Targets::default(), &datasets(), View::Current34);
    let e = evaluate(&status, now(), &RuleSettings::default());
    let k: Vec<String> = keys(&e).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        k,
        vec![
            "34:46:procedures:procedures_silent",
            "34:48:procedures:online_share_low"
        ]
    );
    let f = &e.about("34:48:procedures:online_share_low").unwrap().1;
    assert_eq!((f.online_share, f.dossiers), (Some(0.5), 60));
    // Were Huế's alert firing, its 10 dossiers, 40% online, would keep it firing: too few
    // to fire on, not too few to stay low.
    let key = "34:46:procedures:online_share_low";
    let firing = BTreeMap::from([(key.to_string(), Severity::Warning)]);
    let e = evaluate_holding(&status, now(), &RuleSettings::default(), &firing);
    assert!(keys(&e).iter().any(|(k, _)| k == key));
    // 10 dossiers, 90% online, resolve it: judged on what there is.
    put(&mut snap, "n46|p.online.n", 100, [0, 0, 9, 40], None);
    put(&mut snap, "n46|p.in_person.n", 100, [0, 0, 1, 60], None);
    let status =
        crate::status::Status::build(&snap, &Targets::default(), &datasets(), View::Current34);
    let e = evaluate_holding(&status, now(), &RuleSettings::default(), &firing);
    assert!(!keys(&e).iter().any(|(k, _)| k == key));
}

/// Figures near each threshold: an alert that is not firing does not fire inside the margin,
/// one that is firing does not resolve inside it.
#[test]
fn thresholds_resolve_only_past_their_margin() {
    let targets = Targets::parse(
        "province,dataset,target,deadline\n01,civil_status,1000000,2024-12-31\n",
        &datasets(),
    )
    .unwrap();
    let days_left = 41.0 + 14.0 / 24.0;
    let needed = 500_000.0 / days_left;
    // Evaluates Hà Nội at half its target with a 7-day pace of `pace` × needed, completion
    // projected `early` days before the deadline, and an online share of `share`.
    let eval = |pace: f64, early: f64, share: f64, active: &[(Rule, Severity)]| {
        let mut snap = Snapshot::default();
        let rate = 500_000.0 / (days_left - early);
        // Rates read the 7 and 30 whole days before today.
        let week = (pace * needed * 7.0) as i64;
        let month = (rate * 30.0) as i64;
        put(
            &mut snap,
            "n01|r.civil_status",
            500_000,
            [0, 0, week, month],
            Some(Duration::hours(1)),
        );
        let online = (share * 1000.0) as i64;
        put(
            &mut snap,
            "n01|p.online.n",
            online,
            [0, 0, online, online],
            Some(Duration::hours(1)),
        );
        put(
            &mut snap,
            "n01|p.in_person.n",
            1000 - online,
            [0, 0, 1000 - online, 1000 - online],
            None,
        );
        let status = crate::status::Status::build(&snap, &targets, &datasets(), View::Current34);
        let subject = |rule: Rule| {
            let what = if rule == Rule::OnlineShareLow {
                "procedures"
            } else {
                "civil_status"
            };
            format!("34:01:{what}:{}", rule.as_str())
        };
        let active: BTreeMap<String, Severity> =
            active.iter().map(|(r, s)| (subject(*r), *s)).collect();
        let e = evaluate_holding(&status, now(), &RuleSettings::default(), &active);
        let mut found: Vec<(Rule, Severity)> =
            e.findings.iter().map(|f| (f.rule, f.severity)).collect();
        found.sort();
        found
    };
    let (warn, crit) = (Severity::Warning, Severity::Critical);
    // Clear of every threshold by more than its margin: nothing, firing or not.
    let all = [
        (Rule::BehindPace, warn),
        (Rule::ProjectedMiss, warn),
        (Rule::OnlineShareLow, warn),
    ];
    assert_eq!(eval(1.2, 10.0, 0.85, &[]), vec![]);
    assert_eq!(eval(1.2, 10.0, 0.85, &all), vec![]);
    // Inside every margin (pace 5% above need, 3 days early, 81% online): nothing new fires,
    // and what fires keeps firing.
    assert_eq!(eval(1.05, 3.0, 0.81, &[]), vec![]);
    assert_eq!(eval(1.05, 3.0, 0.81, &all), all.to_vec());
    // Below the thresholds: fires either way.
    assert_eq!(eval(0.9, -3.0, 0.79, &[]), all.to_vec());
    // The critical line (half the needed pace) has a margin too.
    assert_eq!(eval(0.52, 10.0, 0.9, &[]), vec![(Rule::BehindPace, warn)]);
    assert_eq!(
        eval(0.52, 10.0, 0.9, &[(Rule::BehindPace, crit)]),
        vec![(Rule::BehindPace, crit)]
    );
    assert_eq!(
        eval(0.56, 10.0, 0.9, &[(Rule::BehindPace, crit)]),
        vec![(Rule::BehindPace, warn)]
    );
}

/// A province that records on weekdays only is not silent on Monday morning; over Tết, listed
/// as holidays, not at all; with no day off, the weekend counts.
#[test]
fn weekends_and_holidays_are_no_silence() {
    let targets = Targets::parse(
        "province,dataset,target,deadline\n01,civil_status,1000000,2024-12-31\n",
        &datasets(),
    )
    .unwrap();
    let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
    // Last heard on Friday 15 November 2024, 16:30 Vietnam time.
    let mut snap = Snapshot::default();
    put(&mut snap, "n01|r.civil_status", 500_000, [0; 4], None);
    let friday = at("2024-11-15T09:30:00Z").timestamp();
    snap.latest.insert("n01|r.civil_status".into(), friday);
    let status = crate::status::Status::build(&snap, &targets, &datasets(), View::Current34);
    let silent = |now: &str, rules: &RuleSettings| {
        evaluate_holding(&status, at(now), rules, &BTreeMap::new())
            .findings
            .iter()
            .any(|f| f.rule == Rule::Silent)
    };
    let rules = RuleSettings::default();
    // Monday 09:00: 16.5 working hours quiet (7.5 on Friday, 9 on Monday).
    assert!(!silent("2024-11-18T02:00:00Z", &rules));
    // Tuesday 17:00: 48.5.
    assert!(silent("2024-11-19T10:00:00Z", &rules));
    let every_day = RuleSettings {
        days_off: Vec::new(),
        ..RuleSettings::default()
    };
    assert!(silent("2024-11-18T02:00:00Z", &every_day));
    let holidays = RuleSettings {
        holidays: vec!["2024-11-18..2024-11-22".to_string().try_into().unwrap()],
        ..RuleSettings::default()
    };
    assert!(!silent("2024-11-22T10:00:00Z", &holidays));
}

/// The online share is judged over the 7 whole days before today, as rates are, not over 6
/// days and a part of today, whose weekday mix moves with the hour; over the window itself
/// while those days hold no dossier.
#[test]
fn the_online_share_is_judged_over_whole_days() {
    let targets = Targets::parse(
        "province,dataset,target,deadline\n01,civil_status,1000000,2024-12-31\n",
        &datasets(),
    )
    .unwrap();
    let judged = |online: (i64, i64), other: (i64, i64), active: &BTreeMap<String, Severity>| {
        let mut snap = Snapshot::default();
        for (field, (window, whole)) in [("n01|p.online.n", online), ("n01|p.in_person.n", other)] {
            let counts = Counts {
                total: 1000,
                windows: [0, 0, window, window],
                rate_sums: [0, 0, whole, whole],
                ..Counts::default()
            };
            snap.counts.insert(field.into(), counts);
        }
        snap.latest
            .insert("n01|p".into(), (now() - Duration::hours(1)).timestamp());
        let status = crate::status::Status::build(&snap, &targets, &datasets(), View::Current34);
        evaluate_holding(&status, now(), &RuleSettings::default(), active)
            .findings
            .iter()
            .any(|f| f.rule == Rule::OnlineShareLow)
    };
    let share_low = |online, other| judged(online, other, &BTreeMap::new());
    // 79% over the window with today's part, 81% over the whole days: not low.
    assert!(!share_low((79, 81), (21, 19)));
    assert!(share_low((81, 79), (19, 21)));
    // Nothing in the whole days yet: the window with today decides.
    assert!(share_low((60, 0), (40, 0)));
    // No dossier at all (a holiday week): nothing new fires, and a firing alert holds
    // rather than resolve and fire again when dossiers come back at the same share.
    assert!(!share_low((0, 0), (0, 0)));
    let firing = BTreeMap::from([(
        "34:01:procedures:online_share_low".to_string(),
        Severity::Warning,
    )]);
    assert!(judged((0, 0), (0, 0), &firing));
}

/// Near the deadline a firing projected_miss resolves on half the time left, not the full
/// margin, which a projection (never before today) could no longer meet.
#[test]
fn a_projected_miss_can_resolve_in_the_last_week() {
    // Deadline 26 Nov 2024, about 6.6 days after `now`; half the target done.
    let targets = Targets::parse(
        "province,dataset,target,deadline\n01,civil_status,1000000,2024-11-26\n",
        &datasets(),
    )
    .unwrap();
    let days_left = 6.0 + 14.0 / 24.0;
    let firing = |early: f64, active: bool| {
        let mut snap = Snapshot::default();
        let month = (500_000.0 / (days_left - early) * 30.0) as i64;
        put(
            &mut snap,
            "n01|r.civil_status",
            500_000,
            [0, 0, month / 4, month],
            Some(Duration::hours(1)),
        );
        let status = crate::status::Status::build(&snap, &targets, &datasets(), View::Current34);
        let key = "34:01:civil_status:projected_miss".to_string();
        let active: BTreeMap<String, Severity> = if active {
            [(key.clone(), Severity::Warning)].into()
        } else {
            BTreeMap::new()
        };
        let e = evaluate_holding(&status, now(), &RuleSettings::default(), &active);
        e.findings.iter().any(|f| f.key == key)
    };
    // Projected 4.5 days early: a firing alert resolves (half of 6.6 days is 3.3).
    assert!(!firing(4.5, true));
    // 2 days early: within the margin, it holds; a new one does not fire.
    assert!(firing(2.0, true));
    assert!(!firing(2.0, false));
    // After the deadline: fires.
    assert!(firing(-1.0, false));
}

/// A source's view with `events` counted and `rejected` rejects in the last 24 hours, last
/// heard from `ago` before now (never, if `None`).
fn feed(
    name: &str,
    events: i64,
    rejected: i64,
    ago: Option<Duration>,
) -> crate::sources::SourceView {
    let mut s = crate::sources::Stored::default();
    let hour = crate::buckets::Tier::Hour.bucket(now().timestamp());
    let tally = s.hours.entry(hour).or_default();
    tally.add("e", events);
    tally.add("x.future_time", rejected);
    s.last_seen = ago.map(|a| (now() - a).timestamp());
    let stored = BTreeMap::from([(name.to_string(), s)]);
    let known = [name.to_string()];
    let quiet_after = std::time::Duration::from_secs(6 * 3600);
    crate::sources::view(&known, &stored, quiet_after, now()).remove(0)
}

fn sources(views: &[crate::sources::SourceView], active: &[&str]) -> Vec<String> {
    let active = active
        .iter()
        .map(|k| (k.to_string(), Severity::Warning))
        .collect();
    let mut out = Evaluation::default();
    evaluate_sources(views, &SourceSettings::default(), &active, &mut out);
    out.findings.into_iter().map(|f| f.key).collect()
}

#[test]
fn a_source_is_quiet_only_after_it_was_heard_from() {
    let views = [
        feed("hotich", 10, 0, Some(Duration::hours(7))),
        feed("dat-dai", 10, 0, Some(Duration::hours(5))),
        feed("never", 0, 0, None),
    ];
    assert_eq!(sources(&views, &[]), ["src:hotich:feed:source_quiet"]);
    assert!(views[2].quiet, "shown as quiet, but not alerted");
}

#[test]
fn rejecting_needs_enough_messages_and_resolves_below_a_margin() {
    let recent = Some(Duration::minutes(1));
    let key = "src:hotich:feed:source_rejecting";
    // 6 of 100 rejected: over 5%.
    assert_eq!(sources(&[feed("hotich", 94, 6, recent)], &[]), [key]);
    // 5 of 100 is not over it; 6 of 60 is too few messages to say.
    assert!(sources(&[feed("hotich", 95, 5, recent)], &[]).is_empty());
    assert!(sources(&[feed("hotich", 54, 6, recent)], &[]).is_empty());
    // Firing, it holds at 4.5% and resolves below 4%.
    assert_eq!(sources(&[feed("hotich", 955, 45, recent)], &[key]), [key]);
    assert!(sources(&[feed("hotich", 961, 39, recent)], &[key]).is_empty());
    // Firing, it is judged on fewer messages than it takes to fire: 6 of 60 rejected keep it
    // firing; 60 clean ones, or none, resolve it.
    assert_eq!(sources(&[feed("hotich", 54, 6, recent)], &[key]), [key]);
    assert!(sources(&[feed("hotich", 60, 0, recent)], &[key]).is_empty());
    assert!(sources(&[feed("hotich", 0, 0, recent)], &[key]).is_empty());
}

#[test]
fn feed_facts_name_the_commonest_reasons() {
    let mut v = feed("hotich", 80, 0, Some(Duration::minutes(1)));
    for (reason, n) in [("a", 5), ("b", 9), ("c", 1), ("d", 5)] {
        v.last_24h.tally.rejects.insert(reason.into(), n);
    }
    let mut out = Evaluation::default();
    let active = BTreeMap::new();
    evaluate_sources(&[v], &SourceSettings::default(), &active, &mut out);
    let (subject, facts) = out.about("src:hotich:feed:source_rejecting").unwrap();
    assert!(subject.is_source());
    let feed = facts.feed.as_ref().unwrap();
    let reasons: Vec<(&str, i64)> = feed.reasons.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    assert_eq!(reasons, [("b", 9), ("a", 5), ("d", 5)]);
}

/// Tết is days nobody works, not provinces slowing down: with the holidays listed, a week
/// that held four of them is judged on its three working days, a projection passes over
/// them, and holidays ahead of the deadline leave fewer days to do the rest in.
#[test]
fn holidays_are_no_days_behind() {
    // Half of 1,000,000 left, 41.6 days before 31 Dec 2024: 12,019 a day needed.
    let targets = Targets::parse(
        "province,dataset,target,deadline\n01,civil_status,1000000,2024-12-31\n",
        &datasets(),
    )
    .unwrap();
    let judge = |week: i64, month: i64, holidays: &[&str], active: &BTreeMap<String, Severity>| {
        let mut snap = Snapshot::default();
        put(
            &mut snap,
            "n01|r.civil_status",
            500_000,
            [0, 0, week, month],
            Some(Duration::hours(1)),
        );
        let status = crate::status::Status::build(&snap, &targets, &datasets(), View::Current34);
        let rules = RuleSettings {
            holidays: holidays
                .iter()
                .map(|h| crate::clock::Holiday::try_from(h.to_string()).unwrap())
                .collect(),
            ..RuleSettings::default()
        };
        keys(&evaluate_holding(&status, now(), &rules, active))
            .into_iter()
            .map(|(k, s)| (k.rsplit(':').next().unwrap().to_string(), s))
            .collect::<Vec<_>>()
    };
    let none = BTreeMap::new();
    let (w, c) = (Severity::Warning, Severity::Critical);
    // 13,000 on each working day; 13–19 Nov is the week before `now`, 16–19 Nov off.
    let tet = ["2024-11-16..2024-11-19"];
    let (week, month) = (3 * 13_000, 26 * 13_000);
    assert_eq!(judge(week, month, &tet, &none), vec![]);
    assert_eq!(
        judge(week, month, &[], &none),
        vec![("behind_pace".into(), c), ("projected_miss".into(), w)],
        "the same figures without the holidays listed"
    );
    // Ten holidays ahead of the deadline: 15,800 a day needed on the days left.
    let ahead = ["2024-12-20..2024-12-29"];
    let (week, month) = (7 * 13_000, 30 * 13_000);
    assert_eq!(judge(week, month, &[], &none), vec![]);
    assert_eq!(
        judge(week, month, &ahead, &none),
        vec![("behind_pace".into(), w), ("projected_miss".into(), w)],
        "38.5 working days of work, 31.6 left"
    );
    // A whole week of holidays tells nothing of the pace: nothing new fires, and what fired
    // holds as it was.
    let all_week = ["2024-11-13..2024-11-19"];
    assert_eq!(judge(0, 23 * 13_000, &all_week, &none), vec![]);
    let firing = BTreeMap::from([("34:01:civil_status:behind_pace".to_string(), c)]);
    assert_eq!(
        judge(0, 23 * 13_000, &all_week, &firing),
        vec![("behind_pace".into(), c)]
    );
    // The other rules are judged all the same: a projection short that week still is.
    assert_eq!(
        judge(0, 20 * 13_000, &all_week, &none),
        vec![("projected_miss".into(), w)]
    );
}
