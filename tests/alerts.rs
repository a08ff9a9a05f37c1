//! Stall detection and chat alerts end to end: events through the real pipeline into a private
//! Redis, the evaluator on a manual clock, digests delivered to real HTTP servers standing in
//! for Telegram and a Slack-compatible webhook, and the Kafka alerts topic read back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, DurationRound, Utc};
use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

use common::chat::{ChatServer, Reply};
use common::{receiver, seed_stalls, stall_targets, Env};
use tiendo::clock::{Clock, ManualClock, SharedClock};
use tiendo::config::{ReceiverKind, ReceiverSettings, Settings, KAFKA_OUTBOX};
use tiendo::events::{v1, CodeScheme};
use tiendo::notify::{Dispatcher, Sink, Step};
use tiendo::rules::evaluator::Evaluator;
use tiendo::rules::ledger::{Commit, Ledger, Notice, Occasion, Silence, HELD, STARTED};
use tiendo::rules::state::Change;
use tiendo::status::View;
use tiendo::store;
use tiendo::targets::Targets;

struct Alerting {
    ledger: Ledger,
    clock: Arc<ManualClock>,
    settings: Settings,
    targets: Targets,
}

impl Alerting {
    async fn new(
        env: &Env,
        now: DateTime<Utc>,
        receivers: &[(&str, ReceiverSettings)],
    ) -> Alerting {
        let mut settings = env.settings.clone();
        settings.alerts.view = View::Current34;
        settings.alerts.max_backoff = Duration::from_secs(2);
        for (name, r) in receivers {
            settings
                .alerts
                .receivers
                .insert(name.to_string(), r.clone());
        }
        let settings = settings.validated().unwrap();
        let conn = store::connect(&settings.redis).await.unwrap();
        Alerting {
            ledger: Ledger::new(conn, &settings.redis.key_prefix),
            clock: ManualClock::new(now),
            targets: stall_targets(now, &settings.validation.datasets),
            settings,
        }
    }

    /// Marks the deployment as running for a while: its first evaluation, which sums up
    /// instead of announcing each alert, is behind it.
    async fn started(&self) {
        let commit = Commit {
            meta: vec![(STARTED, Some(self.clock.now().to_rfc3339()))],
            ..Commit::default()
        };
        assert!(self.ledger.commit(0, &commit).await.unwrap());
    }

    /// Silences one of a province's civil-status rules for a week, as the task force would.
    async fn silence(&self, code: &str, rule: &str, now: DateTime<Utc>) {
        let silence = Silence::build(
            View::Current34,
            code,
            Some("civil_status"),
            Some(rule),
            now + Span::days(7),
            "số liệu đang được đối soát",
            now,
            &self.settings.validation.datasets,
        )
        .unwrap();
        self.ledger.add_silence(&silence).await.unwrap();
    }

    async fn evaluator(&self) -> Evaluator {
        let s = &self.settings;
        let conn = store::connect(&s.redis).await.unwrap();
        let clock: SharedClock = self.clock.clone();
        Evaluator::new(
            store::Store::new(conn, &s.redis.key_prefix, s.validation.datasets.clone(), 1),
            self.ledger.clone(),
            self.targets.clone(),
            s.validation.datasets.clone(),
            s.alerts.clone(),
            clock,
            true,
        )
    }

    fn dispatcher(&self, outbox: &str) -> Dispatcher {
        let a = &self.settings.alerts;
        let sink = if outbox == KAFKA_OUTBOX {
            Sink::Kafka {
                producer: tiendo::source::producer(&self.settings.kafka, "alerts producer")
                    .unwrap(),
                topic: self.settings.kafka.topics.alerts.clone(),
            }
        } else {
            Sink::http(&a.receivers[outbox], a, "")
        };
        Dispatcher::new(self.ledger.clone(), outbox, sink, a.max_backoff)
            .with_poll(Duration::from_millis(50))
            .with_unreadable_grace(Duration::from_secs(1))
    }

    /// Runs two dispatchers per outbox (two replicas) until every outbox is empty.
    async fn deliver_all(&self) {
        let stop = CancellationToken::new();
        let mut outboxes: Vec<String> = self.settings.alerts.receivers.keys().cloned().collect();
        outboxes.push(KAFKA_OUTBOX.into());
        let mut tasks = Vec::new();
        for o in &outboxes {
            for _ in 0..2 {
                tasks.push(tokio::spawn(self.dispatcher(o).run(stop.clone())));
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut pending = 0;
            for o in &outboxes {
                pending += self.ledger.pending(o).await.unwrap();
            }
            if pending == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pending} digests still pending"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

fn alerts_topic(env: &Env) -> Vec<v1::Alert> {
    let topic = &env.settings.kafka.topics.alerts;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.settings.kafka.brokers)
        .set("group.id", "alerts-reader")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < high && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(v1::Alert::decode(m.payload().unwrap()).unwrap());
        }
    }
    out
}

/// Hà Nội, silent since the season began, reports again; the evaluator resolves its silence
/// alert once it has been clear for 30 minutes, and that resolution is returned.
async fn hanoi_reports_again(env: &Env, a: &Alerting, e: &Evaluator) -> Notice {
    let mut g = env.generator(5);
    env.publish(&[g.record_for(
        "01",
        CodeScheme::Provinces34,
        "civil_status",
        1000,
        Utc::now(),
    )])
    .await;
    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(60)).await;
    running.shutdown().await;
    a.clock
        .set(Utc::now().duration_trunc(Span::minutes(1)).unwrap() + Span::minutes(1));
    assert!(
        e.evaluate_once().await.unwrap().notices.is_empty(),
        "not yet clear long enough"
    );
    a.clock.advance(Span::minutes(31));
    let mut resolved = e.evaluate_once().await.unwrap().notices;
    let keys: Vec<&str> = resolved.iter().map(|n| n.alert_key.as_str()).collect();
    assert_eq!(keys, vec!["34:01:civil_status:silent"]);
    assert_eq!(resolved[0].change, Change::Resolved);
    resolved.remove(0)
}

/// A deployment running for a while on the seeded stalls, with one Telegram chat, `tg`, whose
/// server answers with `replies` first, then accepts.
async fn with_telegram(replies: Vec<Reply>) -> (Env, DateTime<Utc>, ChatServer, Alerting) {
    let env = Env::start();
    let now = Utc::now().duration_trunc(Span::minutes(1)).unwrap();
    seed_stalls(&env, now).await;
    let server = ChatServer::start(replies).await;
    let a = Alerting::new(
        &env,
        now,
        &[("tg", receiver(ReceiverKind::Telegram, &server.url()))],
    )
    .await;
    a.started().await;
    (env, now, server, a)
}

/// How a merged backlog of `changes` changes from `since` on begins, in Telegram's markup.
fn merged_header(changes: usize, since: DateTime<Utc>) -> String {
    let since = since.with_timezone(&tiendo::clock::vn_offset());
    format!(
        "<b>tiendo · {changes} thay đổi · {} – ",
        since.format("%d/%m/%Y %H:%M")
    )
}

fn text(r: &common::chat::Request) -> String {
    r.body["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_season_alerts_the_right_provinces_once_through_retries() {
    let env = Env::start();
    let now = Utc::now().duration_trunc(Span::minutes(1)).unwrap();
    seed_stalls(&env, now).await;

    // Telegram fails with a 500, then rate-limits (Telegram's retry_after); Slack rate-limits
    // with a Retry-After header. Both then accept.
    let telegram = ChatServer::start(vec![Reply::Status(500), Reply::TooManyBody(1)]).await;
    let slack = ChatServer::start(vec![Reply::TooManyHeader(1)]).await;
    let a = Alerting::new(
        &env,
        now,
        &[
            (
                "taskforce",
                receiver(ReceiverKind::Telegram, &telegram.url()),
            ),
            (
                "ops",
                receiver(ReceiverKind::Slack, &format!("{}/hooks/abc", slack.url())),
            ),
        ],
    )
    .await;
    a.started().await;
    let (e1, e2) = (a.evaluator().await, a.evaluator().await);

    // t = 0: the completed target is announced at once; the stalls are only pending.
    let first = e1.evaluate_once().await.unwrap();
    let keys: Vec<&str> = first.notices.iter().map(|n| n.alert_key.as_str()).collect();
    assert_eq!(keys, vec!["34:08:civil_status:completed"]);

    // The task force silences Cao Bằng's projection for a week.
    a.silence("04", "projected_miss", now).await;

    // t = 16 min: past `pending_for`. Two evaluators at once commit the transitions once.
    a.clock.advance(Span::minutes(16));
    let (r1, r2) = tokio::join!(e1.evaluate_once(), e2.evaluate_once());
    let mut fired: Vec<(String, bool)> = r1
        .unwrap()
        .notices
        .into_iter()
        .chain(r2.unwrap().notices)
        .map(|n| (n.alert_key, n.silenced_by.is_some()))
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        vec![
            ("34:01:civil_status:silent".to_string(), false),
            ("34:04:civil_status:behind_pace".to_string(), false),
            ("34:04:civil_status:projected_miss".to_string(), true),
        ]
    );
    // Nothing new a minute later, from either evaluator.
    a.clock.advance(Span::minutes(1));
    assert!(e2.evaluate_once().await.unwrap().notices.is_empty());
    assert!(e1.evaluate_once().await.unwrap().notices.is_empty());

    a.deliver_all().await;

    // Each chat got the two digests that waited as one message, after its retries, and no
    // more: the notices of both, headed with the span from the first to the second.
    let tg = telegram.accepted();
    assert_eq!(tg.len(), 1, "{tg:?}");
    assert_eq!(telegram.requests().len(), 3, "500 and 429 retried");
    assert!(tg.iter().all(|r| r.path == "/bot123:SECRET/sendMessage"));
    assert!(tg
        .iter()
        .all(|r| r.body["parse_mode"] == "HTML" && r.body["chat_id"] == "-100042"));
    let second = text(&tg[0]);
    assert!(second
        .contains("<b>Tuyên Quang</b> · Hộ tịch — hoàn thành chỉ tiêu [hoàn thành]: đạt 125,0%"));
    assert!(second.starts_with(&merged_header(3, now)), "{second}");
    assert!(
        second.contains("<b>Hà Nội</b> · Hộ tịch — không có dữ liệu mới [mới]: đạt 50,0%"),
        "{second}"
    );
    assert!(
        second.contains("<b>Cao Bằng</b> · Hộ tịch — chậm tiến độ [mới]"),
        "{second}"
    );
    assert!(
        !second.contains("dự kiến không kịp hạn"),
        "silenced: {second}"
    );
    assert!(
        !second.contains("Điện Biên"),
        "healthy province alerted: {second}"
    );
    let waited = tg[0].at.duration_since(telegram.requests()[1].at);
    assert!(
        waited >= Duration::from_millis(900),
        "Retry-After honoured: {waited:?}"
    );

    let sl = slack.accepted();
    assert_eq!(sl.len(), 1, "{sl:?}");
    assert_eq!(slack.requests().len(), 2);
    assert!(sl.iter().all(|r| r.path == "/hooks/abc"));
    assert!(
        text(&sl[0]).contains("*Hà Nội* · Hộ tịch"),
        "{}",
        text(&sl[0])
    );

    // Every transition is on the alerts topic, the silenced one marked as such.
    let mut published: Vec<(String, bool)> = alerts_topic(&env)
        .into_iter()
        .map(|a| (a.alert_id, a.silenced))
        .collect();
    published.sort();
    assert_eq!(
        published,
        vec![
            ("34:01:civil_status:silent".to_string(), false),
            ("34:04:civil_status:behind_pace".to_string(), false),
            ("34:04:civil_status:projected_miss".to_string(), true),
            ("34:08:civil_status:completed".to_string(), false),
        ]
    );

    // Hà Nội reports again: the silence alert resolves once it has been clear for 30 minutes.
    let resolved = hanoi_reports_again(&env, &a, &e1).await;
    assert_eq!(resolved.silenced_by, None);
    a.deliver_all().await;
    let tg = telegram.accepted();
    assert_eq!(tg.len(), 2);
    assert!(
        text(&tg[1]).contains("🟢 <b>Hà Nội</b> · Hộ tịch — không có dữ liệu mới [đã hết]"),
        "{}",
        text(&tg[1])
    );

    // The week's silence ends with Cao Bằng's projection still short: the chat, which never
    // saw it fire, is told of it as new at once, not "still firing" a day later.
    a.clock.set(now + Span::days(7) + Span::minutes(1));
    let told = e1.evaluate_once().await.unwrap();
    let projection = told
        .notices
        .iter()
        .find(|n| n.alert_key == "34:04:civil_status:projected_miss")
        .unwrap_or_else(|| panic!("{:?}", told.notices));
    assert_eq!(projection.change, Change::Firing { previous: None });
    assert_eq!(projection.silenced_by, None);
    a.clock.advance(Span::minutes(1));
    let again = e1.evaluate_once().await.unwrap();
    assert!(
        !again
            .notices
            .iter()
            .any(|n| n.alert_key.ends_with("projected_miss")),
        "told once: {:?}",
        again.notices
    );

    // Ended silences are pruned; live ones stay.
    assert_eq!(a.ledger.prune_silences(now).await.unwrap(), 0);
    assert_eq!(
        a.ledger.prune_silences(now + Span::days(8)).await.unwrap(),
        1
    );
    assert!(a.ledger.silences().await.unwrap().is_empty());
}

/// A new deployment's first evaluation: everything that holds fires at once (the figures are
/// complete, there is nothing to wait out), and the chat gets one summary, not a line per
/// alert; silenced alerts are left out of it. Later evaluations announce changes line by line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_evaluation_sums_up_instead_of_a_line_per_alert() {
    let env = Env::start();
    let now = Utc::now().duration_trunc(Span::minutes(1)).unwrap();
    seed_stalls(&env, now).await;
    let telegram = ChatServer::start(vec![]).await;
    let a = Alerting::new(
        &env,
        now,
        &[("tg", receiver(ReceiverKind::Telegram, &telegram.url()))],
    )
    .await;
    a.silence("04", "projected_miss", now).await;
    let e = a.evaluator().await;
    let first = e.evaluate_once().await.unwrap();
    let mut keys: Vec<&str> = first.notices.iter().map(|n| n.alert_key.as_str()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "34:01:civil_status:silent",
            "34:04:civil_status:behind_pace",
            "34:04:civil_status:projected_miss",
            "34:08:civil_status:completed",
        ]
    );
    a.clock.advance(Span::minutes(20));
    assert!(e.evaluate_once().await.unwrap().notices.is_empty());
    a.deliver_all().await;
    let got = telegram.accepted();
    assert_eq!(got.len(), 1);
    let at = now
        .with_timezone(&tiendo::clock::vn_offset())
        .format("%d/%m/%Y %H:%M");
    assert_eq!(
        text(&got[0]),
        format!(
            "<b>tiendo · bắt đầu theo dõi · {at} (giờ VN)</b>\n\
             2 tỉnh/thành đang có cảnh báo:\n\
             🟠 Hộ tịch — không có dữ liệu mới: 1 tỉnh\n\
             🟠 Hộ tịch — chậm tiến độ: 1 tỉnh\n\
             ✅ Hộ tịch — hoàn thành chỉ tiêu: 1 tỉnh"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_waits_for_a_receiver_that_is_down_across_a_restart() {
    let env = Env::start();
    let now = Utc::now().duration_trunc(Span::minutes(1)).unwrap();
    seed_stalls(&env, now).await;
    // A port with nobody listening yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let a = Alerting::new(&env, now, &[("ops", receiver(ReceiverKind::Webhook, &url))]).await;
    let notices = a.evaluator().await.evaluate_once().await.unwrap().notices;
    assert_eq!(notices.len(), 4);

    // The first replica tries for a while and is stopped (a restart) without delivering.
    let stop = CancellationToken::new();
    let first = tokio::spawn(a.dispatcher("ops").run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    first.await.unwrap();
    assert_eq!(
        a.ledger.pending("ops").await.unwrap(),
        1,
        "still waiting in Redis"
    );

    // The receiver comes back; a new process delivers the digest, once.
    let server = ChatServer::start_on(format!("127.0.0.1:{port}").parse().unwrap(), vec![]).await;
    a.deliver_all().await;
    let got = server.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    let body = &got[0].body;
    assert_eq!(body["schema"], "tiendo.alerts.v1");
    // The first evaluation sums up in its text; the webhook still gets every notice.
    assert_eq!(body["summary"]["occasion"], "started");
    assert!(
        body["text"].as_str().unwrap().contains("bắt đầu theo dõi"),
        "{body}"
    );
    assert_eq!(body["notices"].as_array().unwrap().len(), 4);
    assert_eq!(
        body["notices"][3]["alert_key"],
        "34:08:civil_status:completed"
    );
    assert_eq!(body["notices"][3]["facts"]["target"], 200_000);
    assert_eq!(
        got[0].idempotency_key.as_deref(),
        body["digest_id"].as_str()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.requests().len(), 1, "sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_for_good_does_not_block_the_outbox() {
    let (_env, _, server, a) = with_telegram(vec![Reply::Status(400)]).await;
    let e = a.evaluator().await;
    e.evaluate_once().await.unwrap();
    a.deliver_all().await;
    a.clock.advance(Span::minutes(16));
    e.evaluate_once().await.unwrap();
    assert_eq!(a.ledger.pending("tg").await.unwrap(), 1);
    a.deliver_all().await;
    // The first digest was refused (400) and set aside; the second went through.
    assert_eq!(server.requests().len(), 2);
    assert_eq!(server.accepted().len(), 1);
    assert!(text(&server.accepted()[0]).contains("Cao Bằng"));
}

/// A receiver that refuses everything (a revoked token, a chat that is gone) is held, not
/// skipped: when it is mended, what waited goes out, nothing set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_everything_holds_its_messages() {
    let (_env, _, server, a) = with_telegram(vec![
        Reply::Status(401),
        Reply::Described(400, "Bad Request: chat not found"),
        Reply::Status(403),
    ])
    .await;
    let e = a.evaluator().await;
    e.evaluate_once().await.unwrap();
    a.deliver_all().await;
    // Held through three refusals (1 + 2 + 4 s of backoff), then delivered: the same message.
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(server.accepted().len(), 1);
    assert!(requests.iter().all(|r| text(r) == text(&requests[0])));
    assert!(
        text(&requests[0]).contains("Tuyên Quang"),
        "{}",
        text(&requests[0])
    );
}

/// A reply to a chat that refuses it (a stranger who blocked the bot after a refusal) is set
/// aside: the replies after it, and the alerts, do not wait behind it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_chat_refuses_holds_up_nothing() {
    use tiendo::rules::ledger::{Digest, Kind, Recipient};
    let env = Env::start();
    let now = Utc::now();
    let server = ChatServer::start(vec![Reply::Described(
        403,
        "Forbidden: bot was blocked by the user",
    )])
    .await;
    let a = Alerting::new(
        &env,
        now,
        &[("tg", receiver(ReceiverKind::Telegram, &server.url()))],
    )
    .await;
    let reply = |id: &str, chat: &str| Digest {
        id: id.into(),
        at: now,
        kind: Kind::Reply,
        texts: vec![format!("trả lời {id}")],
        to: Some(Recipient {
            chat_id: chat.into(),
            reply_to: None,
        }),
        ..Digest::default()
    };
    let commit = Commit {
        digests: vec![
            ("tg".into(), reply("r1", "777")),
            ("tg".into(), reply("r2", "-100111")),
        ],
        ..Commit::default()
    };
    assert!(a.ledger.commit(0, &commit).await.unwrap());
    a.deliver_all().await;
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(server.accepted().len(), 1);
    assert_eq!(text(&server.accepted()[0]), "trả lời r2");
}

/// While a webhook is down, every replica's `tiendo_notifications_pending` is the outbox's
/// length, the one sending and the one waiting for the lock alike: the gauge the
/// pending-digests alert reads (it was set only when a digest went out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_reports_the_outbox_length_while_a_receiver_is_down() {
    use tiendo::rules::ledger::{Digest, Kind};
    let metrics = tiendo::telemetry::install_prometheus().unwrap();
    let env = Env::start();
    let now = Utc::now();
    let server = ChatServer::start(vec![Reply::Status(503); 100]).await;
    let a = Alerting::new(
        &env,
        now,
        &[("down-hook", receiver(ReceiverKind::Webhook, &server.url()))],
    )
    .await;
    let report = |id: &str| Digest {
        id: id.into(),
        at: now,
        kind: Kind::Report,
        texts: vec![format!("báo cáo {id}")],
        ..Digest::default()
    };
    let commit = Commit {
        digests: ["a", "b", "c"]
            .iter()
            .map(|id| ("down-hook".to_string(), report(id)))
            .collect(),
        ..Commit::default()
    };
    assert!(a.ledger.commit(0, &commit).await.unwrap());
    let stop = CancellationToken::new();
    let replicas: Vec<_> = (0..2)
        .map(|_| tokio::spawn(a.dispatcher("down-hook").run(stop.clone())))
        .collect();
    let line = "tiendo_notifications_pending{receiver=\"down-hook\"} 3";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(server.requests().len() >= 2 && metrics.render().contains(line)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} requests; metrics:\n{}",
            server.requests().len(),
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for r in replicas {
        r.await.unwrap();
    }
    assert!(server.accepted().is_empty());
}

/// A receiver's Retry-After holds for whichever replica sends next, after a restart too: the
/// replica that heard it stops (a rolling update) and the next one waits it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_outlives_the_replica_that_heard_it() {
    let (_env, _, server, a) = with_telegram(vec![Reply::TooManyHeader(3)]).await;
    let e = a.evaluator().await;
    e.evaluate_once().await.unwrap();
    let stop = CancellationToken::new();
    let first = tokio::spawn(a.dispatcher("tg").run(stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    first.await.unwrap();
    a.deliver_all().await;
    let r = server.requests();
    assert_eq!(r.len(), 2, "{r:?}");
    let gap = r[1].at - r[0].at;
    assert!(
        gap >= Duration::from_millis(2_900),
        "sent again after {gap:?}"
    );
}

/// A long digest with names full of markup characters, through real HTTP servers: Telegram
/// gets it split below 4,096 characters with balanced HTML and escaped names, in order, each
/// part once even when a part in the middle is rate-limited; Slack gets it split too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_digests_arrive_split_escaped_and_whole() {
    use tiendo::rules::ledger::Digest;
    use tiendo::rules::{Facts, Rule, Severity, Subject};

    let env = Env::start();
    let now = Utc::now();
    // The third request (a part in the middle) is rate-limited once.
    let telegram = ChatServer::start(vec![Reply::Ok, Reply::Ok, Reply::TooManyBody(1)]).await;
    let slack = ChatServer::start(vec![]).await;
    let a = Alerting::new(
        &env,
        now,
        &[
            ("tg", receiver(ReceiverKind::Telegram, &telegram.url())),
            ("sl", receiver(ReceiverKind::Slack, &slack.url())),
        ],
    )
    .await;
    // No two notices of one rule, dataset and change, so grouping cannot shorten it.
    let datasets = ["civil_status", "land", "health_book", "labor", "other"];
    let rules = [
        Rule::Silent,
        Rule::BehindPace,
        Rule::ProjectedMiss,
        Rule::OnlineShareLow,
        Rule::ProceduresSilent,
    ];
    let changes = [
        Change::Firing { previous: None },
        Change::Firing {
            previous: Some(Severity::Critical),
        },
        Change::Repeated,
        Change::Flapping,
        Change::Resolved,
        Change::Completed,
    ];
    let notices: Vec<Notice> = (0..150)
        .map(|i| {
            let subject = Subject {
                scheme: "34".into(),
                code: format!("{:02}", i % 34),
                name: format!("Tỉnh <b>{i}</b> & *đậm*"),
                dataset: datasets[i % 5].into(),
            };
            let rule = rules[(i / 5) % 5];
            Notice {
                id: format!("n{i}"),
                alert_key: format!("{}#{i}", subject.alert_key(rule)),
                rule,
                severity: Severity::Warning,
                change: changes[i / 25],
                subject,
                facts: Facts {
                    total: 100,
                    target: Some(1000),
                    percent: Some(10.0),
                    ..Facts::default()
                },
                at: now,
                silenced_by: None,
            }
        })
        .collect();
    let digest = |outbox: &str| Digest {
        id: format!("{outbox}-long"),
        at: now,
        notices: notices.clone(),
        summary: None,
        ..Digest::default()
    };
    let commit = Commit {
        digests: vec![("tg".into(), digest("tg")), ("sl".into(), digest("sl"))],
        ..Commit::default()
    };
    assert!(a.ledger.commit(0, &commit).await.unwrap());
    a.deliver_all().await;

    let parts: Vec<String> = telegram.accepted().iter().map(text).collect();
    assert!(parts.len() >= 4, "{} parts", parts.len());
    assert_eq!(
        telegram.requests().len(),
        parts.len() + 1,
        "one retry, no part twice"
    );
    let mut seen = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        assert!(p.encode_utf16().count() <= 4096, "part {i}: {}", p.len());
        assert_eq!(p.matches("<b>").count(), p.matches("</b>").count(), "{p}");
        assert!(p
            .lines()
            .next()
            .unwrap()
            .ends_with(&format!("{}/{}</b>", i + 1, parts.len())));
        for line in p.lines().skip(1) {
            let n: usize = line
                .split("Tỉnh &lt;b&gt;")
                .nth(1)
                .and_then(|r| r.split("&lt;/b&gt;").next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("name not escaped: {line}"));
            assert!(line.contains("&amp; *đậm*"), "{line}");
            seen.push(n);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..150).collect::<Vec<_>>(),
        "every notice exactly once"
    );

    let slack_parts = slack.accepted();
    assert!(slack_parts.len() >= 4);
    assert!(slack_parts
        .iter()
        .all(|r| text(r).encode_utf16().count() <= 3500));
    assert!(text(&slack_parts[0]).contains("*Tỉnh &lt;b&gt;"));
}

/// A backlog is merged in Redis only while it is still the head of its outbox, nothing of its
/// first digest was sent, and the merging replica holds the outbox: a part sent is never
/// merged away (then sent again), and a replica that lost the lock changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_merged_only_whole_unsent_and_under_the_lock() {
    use tiendo::notify::backlog;
    use tiendo::rules::ledger::Digest;
    use tiendo::rules::{Facts, Rule, Severity, Subject};
    let env = Env::start();
    let now = Utc::now();
    let conn = store::connect(&env.settings.redis).await.unwrap();
    let ledger = Ledger::new(conn, &env.settings.redis.key_prefix);
    // A feed gone quiet, still so at each evaluation.
    let subject = Subject::source("hotich");
    let still_quiet = |at: DateTime<Utc>| Notice {
        id: format!("q@{}", at.timestamp_millis()),
        alert_key: subject.alert_key(Rule::SourceQuiet),
        rule: Rule::SourceQuiet,
        severity: Severity::Warning,
        change: Change::Repeated,
        subject: subject.clone(),
        facts: Facts::default(),
        at,
        silenced_by: None,
    };
    for (generation, id) in [(0, "d0"), (1, "d1"), (2, "d2")] {
        let at = now + Span::minutes(generation);
        let commit = Commit {
            meta: vec![(STARTED, Some(now.to_rfc3339()))],
            digests: vec![(
                "tg".into(),
                Digest {
                    id: id.into(),
                    at,
                    notices: vec![still_quiet(at)],
                    ..Digest::default()
                },
            )],
            ..Commit::default()
        };
        assert!(ledger.commit(generation, &commit).await.unwrap());
    }
    let lock = ledger.lock("tg", "mine", 30_000).await.unwrap().unwrap();
    let raws = ledger.waiting("tg", backlog::MAX_MERGED).await.unwrap();
    let digests: Vec<Digest> = raws
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    let (n, merged) = backlog::merge(&digests).unwrap();
    assert_eq!((n, merged.id.as_str()), (3, "d0+2"));

    // The lock passed to another replica, or a head read before it moved: nothing changes.
    ledger.unlock("tg", "mine").await.unwrap();
    let theirs = ledger.lock("tg", "theirs", 30_000).await.unwrap().unwrap();
    assert!(!ledger.merge_head(&lock, &raws, &merged).await.unwrap());
    ledger.unlock("tg", "theirs").await.unwrap();
    drop(theirs);
    let lock = ledger.lock("tg", "mine", 30_000).await.unwrap().unwrap();
    assert!(!ledger.merge_head(&lock, &raws[1..], &merged).await.unwrap());
    // The first digest partly sent: it goes on as it is.
    assert!(ledger.sent_parts(&lock, "d0", 1).await.unwrap());
    assert!(!ledger.merge_head(&lock, &raws, &merged).await.unwrap());
    assert_eq!(ledger.pending("tg").await.unwrap(), 3);
    assert!(ledger.delivered(&lock, "d0").await.unwrap());

    // The two left merge, once.
    let (n, rest) = backlog::merge(&digests[1..]).unwrap();
    assert!(ledger.merge_head(&lock, &raws[1..=n], &rest).await.unwrap());
    assert!(!ledger.merge_head(&lock, &raws[1..=n], &rest).await.unwrap());
    let head = ledger.head("tg").await.unwrap().unwrap();
    assert_eq!((head.digest.id.as_str(), head.parts_sent), ("d1+1", 0));
    assert_eq!(head.digest.since, Some(digests[1].at));
    assert_eq!(ledger.pending("tg").await.unwrap(), 1);
}

/// While a chat's receiver is down, an alert fires, is silenced, and resolves under the
/// silence. The merged backlog the chat gets once it is back leaves that alert out rather
/// than show it as new; a digest holding nothing but such a resolution is taken off unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_backlog_leaves_out_an_alert_a_silence_resolved() {
    use tiendo::rules::ledger::Digest;
    let (env, now, telegram, a) = with_telegram(vec![]).await;
    let e = a.evaluator().await;
    // No dispatcher runs until the end: the receiver is down meanwhile.
    e.evaluate_once().await.unwrap();
    a.clock.advance(Span::minutes(16));
    let fired = e.evaluate_once().await.unwrap().notices;
    assert!(fired
        .iter()
        .any(|n| n.alert_key == "34:01:civil_status:silent"));
    a.silence("01", "silent", now).await;
    let resolved = hanoi_reports_again(&env, &a, &e).await;
    assert!(resolved.silenced_by.is_some());
    assert_eq!(a.ledger.pending("tg").await.unwrap(), 3);

    a.deliver_all().await;
    let tg = telegram.accepted();
    assert_eq!(tg.len(), 1, "{tg:?}");
    let merged = text(&tg[0]);
    assert!(merged.starts_with(&merged_header(3, now)), "{merged}");
    assert!(
        merged.contains("<b>Cao Bằng</b> · Hộ tịch — chậm tiến độ [mới]"),
        "{merged}"
    );
    assert!(merged.contains("<b>Tuyên Quang</b>"), "{merged}");
    assert!(
        !merged.contains("Hà Nội"),
        "resolved under a silence: {merged}"
    );

    // A resolution under a silence with no backlog to merge into is not queued at all.
    let caobang = fired
        .into_iter()
        .find(|n| n.alert_key == "34:04:civil_status:behind_pace")
        .unwrap();
    let key = caobang.alert_key.clone();
    let quiet = |id: &str| Digest {
        id: id.into(),
        at: a.clock.now(),
        resolved_silently: vec![key.clone()],
        ..Digest::default()
    };
    let commit = |digests: Vec<Digest>| Commit {
        digests: digests.into_iter().map(|d| ("tg".to_string(), d)).collect(),
        ..Commit::default()
    };
    let read = a.ledger.read().await.unwrap();
    let alone = commit(vec![quiet("tg-q1")]);
    assert!(a.ledger.commit(read.generation, &alone).await.unwrap());
    assert_eq!(a.ledger.pending("tg").await.unwrap(), 0);
    // Behind a digest it resolves, it is; the two merge into nothing, taken off unsent.
    let fires = Digest {
        id: "tg-f".into(),
        at: a.clock.now(),
        notices: vec![caobang],
        ..Digest::default()
    };
    let both = commit(vec![fires, quiet("tg-q2")]);
    assert!(a.ledger.commit(read.generation + 1, &both).await.unwrap());
    assert_eq!(a.ledger.pending("tg").await.unwrap(), 2);
    a.deliver_all().await;
    assert_eq!(telegram.requests().len(), 1, "nothing more sent");
}

/// A digest this version cannot read (a newer version's, met after a rollback) is set aside
/// to the outbox's failed list with its reason, and the digests behind it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_this_version_cannot_read_does_not_block_the_outbox() {
    let (env, now, server, a) = with_telegram(vec![]).await;
    let keys = store::Keys::new(&a.settings.redis.key_prefix);
    let client = redis::Client::open(env.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let newer = serde_json::json!({"id": "tg-newer", "at": now, "notices": [], "kind": "forecast"});
    let _: () = redis::cmd("RPUSH")
        .arg(keys.alerts("outbox:tg"))
        .arg(newer.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    // The completed target, announced behind it.
    a.evaluator().await.evaluate_once().await.unwrap();
    assert_eq!(a.ledger.pending("tg").await.unwrap(), 2);
    // For a while it is left to a replica that can read it (a newer one, in a rolling
    // update): the outbox is let go, and nothing is set aside yet.
    let step = a.dispatcher("tg").deliver_one(Duration::from_secs(1)).await;
    assert!(matches!(step, Ok(Step::Pause(_))), "{step:?}");
    assert!(a
        .ledger
        .lock("tg", "newer", 30_000)
        .await
        .unwrap()
        .is_some());
    a.ledger.unlock("tg", "newer").await.unwrap();
    assert_eq!(a.ledger.pending("tg").await.unwrap(), 2);

    a.deliver_all().await;
    let got = server.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        text(&got[0]).contains("<b>Tuyên Quang</b>"),
        "{}",
        text(&got[0])
    );
    let failed: Vec<String> = redis::cmd("LRANGE")
        .arg(keys.alerts("failed:tg"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let failed: serde_json::Value = serde_json::from_str(&failed[0]).unwrap();
    assert_eq!(failed["digest"], newer, "kept as it was written");
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("unknown variant `forecast`"), "{reason}");
}

/// Records in the ledger that evaluations were held since `at`, as a replica whose figures are
/// not current does.
async fn hold_since(ledger: &Ledger, at: DateTime<Utc>) {
    let read = ledger.read().await.unwrap();
    let commit = Commit {
        meta: vec![(HELD, Some(at.to_rfc3339()))],
        ..Commit::default()
    };
    assert!(ledger.commit(read.generation, &commit).await.unwrap());
}

/// Only a hold of two evaluation intervals or more is summed up after: a replica just started
/// is not current for a moment, and a rolling update must not turn the next alerts into a
/// "figures complete again" summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_hold_that_lasted_is_summed_up_after() {
    let env = Env::start();
    let now = Utc::now().duration_trunc(Span::minutes(1)).unwrap();
    seed_stalls(&env, now).await;
    let a = Alerting::new(&env, now, &[]).await;
    a.started().await;
    let e = a.evaluator().await;
    let interval = Span::from_std(a.settings.alerts.interval).unwrap();

    // Held for one interval: the completed target is told on its own line.
    hold_since(&a.ledger, now - interval).await;
    let chat = e.evaluate_once().await.unwrap().chat.expect("news");
    assert!(chat.summary.is_none(), "{chat:?}");
    let keys: Vec<&str> = chat.notices.iter().map(|n| n.alert_key.as_str()).collect();
    assert_eq!(keys, vec!["34:08:civil_status:completed"]);
    assert_eq!(a.ledger.read().await.unwrap().held_since, None);

    // Held for two: the next news (the stalls, past `pending_for`) is summed up.
    a.clock.advance(Span::minutes(16));
    hold_since(&a.ledger, a.clock.now() - interval * 2).await;
    let chat = e.evaluate_once().await.unwrap().chat.expect("news");
    assert_eq!(
        chat.summary.map(|s| s.occasion),
        Some(Occasion::Resumed),
        "{:?}",
        chat.notices
    );
    assert_eq!(a.ledger.read().await.unwrap().held_since, None);
}
