//! The weekly report arrives by itself: on the manual clock, two replicas look at the schedule
//! at once and the report is sent once, on time, to Telegram (text and the HTML as a document)
//! and to Slack (text with a link to the page); with every replica down at the scheduled time,
//! it arrives when one comes back, marked late, and only once. An evaluator committing all
//! the time does not keep the report from going out.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, Duration as Span, NaiveDate, TimeZone, Utc, Weekday};
use tokio_util::sync::CancellationToken;

use common::chat::ChatServer;
use common::{receiver, seed_stalls, stall_targets, store_and_ledger, Env};
use tiendo::clock::{vn_offset, ManualClock, SharedClock};
use tiendo::config::{ReceiverKind, ReceiverSettings, Settings};
use tiendo::embedded::telegram::BotApi;
use tiendo::report::schedule::{Posted, Poster};
use tiendo::rules::ledger::Commit;
use tiendo::status::View;
use tiendo::targets::Targets;

/// The coming Monday in Vietnam, and a time of it.
fn coming_monday() -> (
    NaiveDate,
    impl Fn(NaiveDate, u32, u32) -> chrono::DateTime<Utc>,
) {
    let today = Utc::now().with_timezone(&vn_offset()).date_naive();
    let monday = (1..=7)
        .map(|d| today + Span::days(d))
        .find(|d| d.weekday() == Weekday::Mon)
        .unwrap();
    let at = |day: NaiveDate, h: u32, m: u32| {
        vn_offset()
            .from_local_datetime(&day.and_hms_opt(h, m, 0).unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    (monday, at)
}

/// A replica's poster, on its own Redis connection.
async fn poster(s: &Arc<Settings>, targets: &Targets, clock: &SharedClock) -> Poster {
    let (store, ledger) = store_and_ledger(s).await;
    Poster::new(store, ledger, targets.clone(), s.clone(), clock.clone())
}

/// The receivers here share a chat id the test checks.
fn receiver_in(kind: ReceiverKind, url: &str) -> ReceiverSettings {
    ReceiverSettings {
        chat_id: "-100111".into(),
        ..receiver(kind, url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_report_arrives_once_on_time_and_late_when_missed() {
    let env = Env::start();
    // The coming Monday, 07:59 Vietnam time, with figures from the days before.
    let now = Utc::now();
    let (monday, at) = coming_monday();
    let start = at(monday, 7, 59);
    seed_stalls(&env, now).await;
    let bot = BotApi::start().await.unwrap();
    let slack = ChatServer::start(vec![]).await;
    let mut s = env.settings.clone();
    s.alerts.view = View::Current34;
    s.http.public_url = "https://tiendo.example.gov.vn".into();
    s.report.schedule = vec!["Mon 08:00".into()];
    s.alerts
        .receivers
        .insert("tg".into(), receiver_in(ReceiverKind::Telegram, &bot.url()));
    s.alerts
        .receivers
        .insert("sl".into(), receiver_in(ReceiverKind::Slack, &slack.url()));
    let s = Arc::new(s.validated().unwrap());
    let clock = ManualClock::new(start);
    let shared: SharedClock = clock.clone();
    let targets = stall_targets(now, &s.validation.datasets);
    let (a, b) = (
        poster(&s, &targets, &shared).await,
        poster(&s, &targets, &shared).await,
    );
    let stop = CancellationToken::new();
    let dispatchers = tiendo::run::spawn_dispatchers(&s, stop.clone())
        .await
        .unwrap();

    // First look of a new deployment: last Monday's time is remembered, nothing is sent.
    let due = at(monday, 8, 0);
    let last_monday = due - Span::days(7);
    assert_eq!(a.post_once().await.unwrap(), Posted::Started(last_monday));
    assert_eq!(b.post_once().await.unwrap(), Posted::Nothing);

    // 08:00:30: both replicas look at once; one sends.
    clock.set(due + Span::seconds(30));
    let (x, y) = tokio::join!(a.post_once(), b.post_once());
    let mut outcomes = vec![x.unwrap(), y.unwrap()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        vec![Posted::Nothing, Posted::Sent { due, late: false }]
    );
    for _ in 0..3 {
        assert_eq!(a.post_once().await.unwrap(), Posted::Nothing);
        assert_eq!(b.post_once().await.unwrap(), Posted::Nothing);
    }
    let sent = bot.wait_sent(2, Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[0].method, "sendMessage");
    assert_eq!(sent[0].chat_id, "-100111");
    let text = &sent[0].text;
    assert!(text.starts_with("<b>Báo cáo tuần · "), "{text}");
    assert!(!text.contains("gửi muộn"), "{text}");
    assert!(text.contains("<b>Hộ tịch</b>: "), "{text}");
    assert_eq!(sent[1].method, "sendDocument");
    let file = |d: NaiveDate| format!("tiendo-bao-cao-{}.html", d.format("%Y-%m-%d"));
    assert_eq!(sent[1].file_name, Some(file(monday)));
    let html = sent[1].document.as_deref().unwrap();
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<svg"),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    let sl = slack.wait_accepted(1, Duration::from_secs(30)).await;
    let slack_text = sl[0].body["text"].as_str().unwrap();
    assert!(slack_text.starts_with("*Báo cáo tuần · "), "{slack_text}");
    assert!(
        slack_text.ends_with("\nhttps://tiendo.example.gov.vn/report"),
        "{slack_text}"
    );

    // Every replica down over next Monday's time; one comes back at 11:10.
    let next = due + Span::days(7);
    clock.set(next + Span::minutes(190));
    assert_eq!(
        b.post_once().await.unwrap(),
        Posted::Sent {
            due: next,
            late: true
        }
    );
    assert_eq!(a.post_once().await.unwrap(), Posted::Nothing);
    let sent = bot.wait_sent(4, Duration::from_secs(30)).await;
    assert_eq!(sent.len(), 4, "{sent:#?}");
    let late = format!(
        "\n(gửi muộn: theo lịch lúc 08:00 {})\n",
        (monday + Span::days(7)).format("%d/%m/%Y")
    );
    assert!(sent[2].text.contains(&late), "{}", sent[2].text);
    assert_eq!(sent[3].file_name, Some(file(monday + Span::days(7))));
    // Slack's dispatcher drains its outbox on its own turn, not Telegram's.
    slack.wait_accepted(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bot.sent().len(), 4, "each report once");
    assert_eq!(slack.accepted().len(), 2);

    // At 11:15 the schedule becomes daily 11:00: today's 11:00, before the schedule existed,
    // is not posted at once; tomorrow's is.
    let mut daily = (*s).clone();
    daily.report.schedule = vec!["daily 11:00".into()];
    let daily = Arc::new(daily);
    let c = poster(&daily, &targets, &shared).await;
    clock.set(next + Span::minutes(195));
    let today = at(monday + Span::days(7), 11, 0);
    assert_eq!(c.post_once().await.unwrap(), Posted::Started(today));
    assert_eq!(c.post_once().await.unwrap(), Posted::Nothing);
    clock.set(today + Span::days(1) + Span::seconds(30));
    assert_eq!(
        c.post_once().await.unwrap(),
        Posted::Sent {
            due: today + Span::days(1),
            late: false
        }
    );
    bot.wait_sent(6, Duration::from_secs(30)).await;
    stop.cancel();
    for d in dispatchers {
        d.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_goes_out_while_evaluations_commit_all_the_time() {
    let env = Env::start();
    let now = Utc::now();
    let (monday, at) = coming_monday();
    seed_stalls(&env, now).await;
    let bot = BotApi::start().await.unwrap();
    let mut s = env.settings.clone();
    s.report.schedule = vec!["Mon 08:00".into()];
    s.alerts
        .receivers
        .insert("tg".into(), receiver_in(ReceiverKind::Telegram, &bot.url()));
    let s = Arc::new(s.validated().unwrap());
    let clock = ManualClock::new(at(monday, 7, 59));
    let shared: SharedClock = clock.clone();
    let targets = stall_targets(now, &s.validation.datasets);
    // It waits for current figures, as `tiendo run` does: the check takes a fetch round.
    let replica = poster(&s, &targets, &shared)
        .await
        .with_watch(tiendo::run::watch(&s).await.unwrap());
    assert!(matches!(
        replica.post_once().await.unwrap(),
        Posted::Started(_)
    ));

    // An evaluator of a busy deployment commits every 2 ms, much more often than a report
    // takes to check and build.
    let (_, ledger) = store_and_ledger(&s).await;
    let stop = CancellationToken::new();
    let commits = Arc::new(AtomicU64::new(0));
    let busy = tokio::spawn({
        let (stop, commits) = (stop.clone(), commits.clone());
        async move {
            while !stop.is_cancelled() {
                let read = ledger.read().await.unwrap();
                let n = commits.load(Ordering::SeqCst);
                let commit = Commit {
                    meta: vec![("test_busy", Some(n.to_string()))],
                    ..Commit::default()
                };
                if ledger.commit(read.generation, &commit).await.unwrap() {
                    commits.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    while commits.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = commits.load(Ordering::SeqCst);
    let due = at(monday, 8, 0);
    clock.set(due + Span::seconds(30));
    let mut looks = Vec::new();
    for _ in 0..3 {
        looks.push(replica.post_once().await.unwrap());
    }
    let commits = commits.load(Ordering::SeqCst) - before;
    stop.cancel();
    busy.await.unwrap();
    assert_eq!(
        looks,
        vec![
            Posted::Sent { due, late: false },
            Posted::Nothing,
            Posted::Nothing
        ],
        "the first look sends the report; {commits} evaluations committed meanwhile"
    );
}

/// The report's commit is guarded by its marker, not the generation: a commit of anything else
/// since the read does not refuse it, a moved marker does, and it still moves the generation
/// (so an evaluation that read before it reads again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_commit_is_refused_only_by_a_moved_marker() {
    let env = Env::start();
    let (_, ledger) = store_and_ledger(&env.settings).await;
    let field = tiendo::report::schedule::REPORT_DUE;
    let mark = |value: &str| Commit {
        meta: vec![(field, Some(value.to_string()))],
        ..Commit::default()
    };
    let first = ledger.read().await.unwrap();
    assert!(ledger.commit_if(field, None, &mark("a")).await.unwrap());
    // An evaluation that read before the mark is refused, as after any commit.
    assert!(!ledger
        .commit(first.generation, &Commit::default())
        .await
        .unwrap());
    let read = ledger.read().await.unwrap();
    assert!(ledger
        .commit(read.generation, &Commit::default())
        .await
        .unwrap());
    // The generation moved since the marker was read; the marker did not.
    assert!(ledger
        .commit_if(field, Some("a"), &mark("b"))
        .await
        .unwrap());
    // Another replica's mark moved it.
    assert!(!ledger
        .commit_if(field, Some("a"), &mark("c"))
        .await
        .unwrap());
    assert!(!ledger.commit_if(field, None, &mark("c")).await.unwrap());
    assert_eq!(ledger.read().await.unwrap().meta[field], "b");
}
