//! A chat outbox's backlog, merged. While a receiver is down, each evaluation's digest waits
//! in its outbox; sent back to back once it returns, they would flood the chat with states
//! already out of date. So when two or more digests of changes wait at the head of a chat
//! outbox, they go as one: each alert's newest notice, from the first digest's time to the
//! last, leaving out alerts a silence resolved meanwhile. The Kafka alerts topic and webhooks,
//! which record every transition, get every digest as it was.

use std::collections::hash_map::{Entry, HashMap};

use crate::rules::ledger::{Digest, Notice};
use crate::rules::state::Change;

/// Digests read from the head of an outbox for one merge; a longer backlog merges again.
pub const MAX_MERGED: usize = 200;

/// The number of digests at the head of `waiting` that merge, and the digest they merge into;
/// `None` when fewer than two would. The same digests always merge into the same digest, id
/// included, so a merge retried after a lost race makes no second version.
pub fn merge(waiting: &[Digest]) -> Option<(usize, Digest)> {
    let n = waiting.iter().take_while(|d| d.plain_changes()).count();
    if n < 2 {
        return None;
    }
    let run = &waiting[..n];
    // Each alert's first and newest notice, in the order the alerts first appear, and whether
    // a silence resolved it after a newest notice that has it firing: then that is no longer
    // true, and the silence keeps the resolution from the chat, so it is left out. (A newest
    // notice that resolved it stays true, and is told.)
    let mut alerts: Vec<(&Notice, &Notice, bool)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for digest in run {
        for notice in &digest.notices {
            match index.entry(notice.alert_key.as_str()) {
                Entry::Occupied(i) => {
                    let alert = &mut alerts[*i.get()];
                    (alert.1, alert.2) = (notice, false);
                }
                Entry::Vacant(slot) => {
                    slot.insert(alerts.len());
                    alerts.push((notice, notice, false));
                }
            }
        }
        for key in &digest.resolved_silently {
            if let Some(&i) = index.get(key.as_str()) {
                alerts[i].2 = alerts[i].1.change != Change::Resolved;
            }
        }
    }
    let notices = alerts
        .into_iter()
        .filter(|(_, _, resolved_silently)| !resolved_silently)
        .filter_map(|(first, newest, _)| {
            Some(Notice {
                change: as_the_chat_sees(first, newest)?,
                ..newest.clone()
            })
        })
        .collect();
    // Only the head is ever a merged digest: a backlog merged again keeps one id, its first
    // digest's, with the count of the digests folded into it.
    let (base, folded) = match (&run[0].since, run[0].id.rsplit_once('+')) {
        (Some(_), Some((base, k))) => (base, k.parse().unwrap_or(0)),
        _ => (run[0].id.as_str(), 0),
    };
    let last = &run[n - 1];
    // The span starts with the first digest that had something to tell.
    let first = run
        .iter()
        .find(|d| !d.notices.is_empty())
        .unwrap_or(&run[0]);
    Some((
        n,
        Digest {
            id: format!("{base}+{}", folded + n - 1),
            at: last.at,
            since: Some(first.since.unwrap_or(first.at)),
            notices,
            ..Digest::default()
        },
    ))
}

/// The change an alert's newest notice in a backlog makes to what the chat last knew of it,
/// which its first notice there tells: an alert that began firing in the backlog is new, one
/// that was firing already has changed severity from what the chat saw, or not. `None` for
/// one that began firing and resolved within the backlog: the chat never saw it fire, so
/// "resolved" would be news of nothing.
fn as_the_chat_sees(first: &Notice, newest: &Notice) -> Option<Change> {
    let known = match first.change {
        Change::Firing { previous } => previous,
        Change::Completed => None,
        Change::Repeated | Change::Resolved | Change::Flapping => Some(first.severity),
    };
    Some(match (newest.change, known) {
        (Change::Firing { .. } | Change::Repeated | Change::Flapping, None) => {
            Change::Firing { previous: None }
        }
        (Change::Firing { .. } | Change::Repeated, Some(k)) if k != newest.severity => {
            Change::Firing { previous: Some(k) }
        }
        (Change::Firing { .. } | Change::Repeated, Some(_)) => Change::Repeated,
        (Change::Resolved, None) => return None,
        (change, _) => change,
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};

    use super::*;
    use crate::rules::ledger::{Kind, Occasion, Summary};
    use crate::rules::{Facts, Rule, Severity, Subject};

    fn t0() -> DateTime<Utc> {
        "2024-11-20T03:00:00Z".parse().unwrap()
    }

    fn notice(code: &str, change: Change, severity: Severity, minute: i64) -> Notice {
        let subject = Subject {
            scheme: "34".into(),
            code: code.into(),
            name: format!("Tỉnh {code}"),
            dataset: "civil_status".into(),
        };
        let at = t0() + Duration::minutes(minute);
        let key = subject.alert_key(Rule::BehindPace);
        Notice {
            id: format!("{key}@{}", at.timestamp_millis()),
            alert_key: key,
            rule: Rule::BehindPace,
            severity,
            change,
            subject,
            facts: Facts::default(),
            at,
            silenced_by: None,
        }
    }

    fn digest(minute: i64, notices: Vec<Notice>) -> Digest {
        Digest {
            id: format!("d{minute}"),
            at: t0() + Duration::minutes(minute),
            notices,
            ..Digest::default()
        }
    }

    const NEW: Change = Change::Firing { previous: None };

    /// Each notice's province and change.
    fn told(d: &Digest) -> Vec<(&str, Change)> {
        d.notices
            .iter()
            .map(|n| (n.subject.code.as_str(), n.change))
            .collect()
    }

    #[test]
    fn a_backlog_merges_into_each_alerts_newest_notice() {
        let (w, c) = (Severity::Warning, Severity::Critical);
        let escalated = Change::Firing { previous: Some(w) };
        let eased = Change::Firing { previous: Some(c) };
        let waiting = vec![
            digest(
                0,
                vec![
                    notice("01", NEW, w, 0),
                    notice("04", Change::Repeated, w, 0),
                    notice("11", escalated, c, 0),
                    notice("15", Change::Repeated, w, 0),
                    notice("19", NEW, w, 0),
                ],
            ),
            digest(
                1,
                vec![notice("01", escalated, c, 1), notice("11", eased, w, 1)],
            ),
            digest(
                2,
                vec![
                    notice("04", Change::Resolved, w, 2),
                    notice("08", NEW, w, 2),
                    notice("15", escalated, c, 2),
                    notice("19", Change::Flapping, w, 2),
                ],
            ),
            digest(3, vec![notice("08", Change::Repeated, w, 3)]),
        ];
        let (n, merged) = merge(&waiting).unwrap();
        assert_eq!(n, 4);
        assert_eq!(merged.id, "d0+3");
        assert_eq!(merged.since, Some(t0()));
        assert_eq!(merged.at, t0() + Duration::minutes(3));
        let got: Vec<(&str, Change, Severity)> = merged
            .notices
            .iter()
            .map(|n| (n.subject.code.as_str(), n.change, n.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                // New within the backlog, and critical by its end: new and critical.
                ("01", NEW, c),
                // Fired before the backlog, resolved within it.
                ("04", Change::Resolved, w),
                // The chat saw a warning; critical a while, a warning again: still firing.
                ("11", Change::Repeated, w),
                ("15", escalated, c),
                // Began and flapped: new to the chat.
                ("19", NEW, w),
                ("08", NEW, w),
            ]
        );
        assert_eq!(
            merge(&waiting),
            Some((n, merged.clone())),
            "the same every time"
        );
        // Merged again with what came since, it keeps its id's first part and start.
        let more = [merged, digest(4, vec![]), digest(5, vec![])];
        let (n, again) = merge(&more).unwrap();
        assert_eq!((n, again.id.as_str(), again.since), (3, "d0+5", Some(t0())));
    }

    /// An alert that fired and resolved within the backlog is no news to the chat, which
    /// never saw it fire; one that fired before it is told resolved.
    #[test]
    fn an_alert_that_came_and_went_in_the_backlog_is_left_out() {
        let w = Severity::Warning;
        let waiting = vec![
            digest(
                0,
                vec![
                    notice("49", NEW, w, 0),
                    notice("04", Change::Repeated, w, 0),
                ],
            ),
            digest(1, vec![notice("49", Change::Resolved, w, 1)]),
            digest(2, vec![notice("04", Change::Resolved, w, 2)]),
        ];
        let (n, merged) = merge(&waiting).unwrap();
        assert_eq!(n, 3);
        assert_eq!(told(&merged), vec![("04", Change::Resolved)]);
    }

    /// An alert that fired in the backlog and was then resolved under a silence is not shown
    /// as firing; one that fired again after the silence is.
    #[test]
    fn alerts_a_silence_resolved_are_left_out() {
        let w = Severity::Warning;
        let quiet = |minute, keys: &[&Notice]| Digest {
            resolved_silently: keys.iter().map(|n| n.alert_key.clone()).collect(),
            ..digest(minute, vec![])
        };
        let (hanoi, caobang) = (notice("01", NEW, w, 0), notice("04", NEW, w, 0));
        let waiting = vec![
            digest(0, vec![hanoi.clone(), caobang.clone()]),
            quiet(1, &[&hanoi, &caobang]),
            digest(2, vec![notice("04", NEW, w, 2)]),
        ];
        let (n, merged) = merge(&waiting).unwrap();
        assert_eq!(n, 3);
        assert_eq!(told(&merged), vec![("04", NEW)]);
        // A backlog of nothing else has nothing to tell: it is taken off unsent.
        let (_, merged) = merge(&waiting[..2]).unwrap();
        assert!(merged.tells_nothing(), "{merged:?}");
        // Resolved under a silence before the backlog fired it: no bearing on it, nor on the
        // span, which starts with the first digest that had something to tell.
        let later = digest(1, vec![notice("01", NEW, w, 1), notice("04", NEW, w, 1)]);
        let (_, merged) = merge(&[quiet(0, &[&hanoi]), later]).unwrap();
        assert_eq!(merged.notices.len(), 2);
        assert_eq!(merged.since, Some(t0() + Duration::minutes(1)));
        // Resolved where the chat would see it, then fired and resolved again under a
        // silence: the chat is still told of the resolution.
        let resolved = notice("01", Change::Resolved, w, 0);
        let (_, merged) = merge(&[digest(0, vec![resolved]), quiet(1, &[&hanoi])]).unwrap();
        let got: Vec<Change> = merged.notices.iter().map(|n| n.change).collect();
        assert_eq!(got, vec![Change::Resolved]);
    }

    #[test]
    fn only_plain_changes_at_the_head_merge() {
        let w = Severity::Warning;
        let summary = Digest {
            summary: Some(Summary {
                occasion: Occasion::Started,
                provinces: 1,
                tallies: vec![],
            }),
            ..digest(0, vec![notice("01", NEW, w, 0)])
        };
        let report = Digest {
            kind: Kind::Report,
            texts: vec!["báo cáo".into()],
            ..digest(2, vec![])
        };
        let one = digest(1, vec![notice("04", NEW, w, 1)]);
        let two = digest(3, vec![notice("08", NEW, w, 3)]);
        // A summary at the head goes as it is; so does a lone digest before a report.
        assert_eq!(merge(&[summary, one.clone(), two.clone()]), None);
        assert_eq!(merge(&[one.clone(), report.clone(), two.clone()]), None);
        // Two changes before a report merge; the report waits its turn after them.
        let (n, merged) = merge(&[one, two, report]).unwrap();
        assert_eq!(n, 2);
        assert_eq!(merged.notices.len(), 2);
    }
}
