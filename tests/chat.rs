//! The chat, both ways: Telegram commands read by long polling from a Bot API stand-in (two
//! users in two chats, one chat not allowed, one user not allowed to silence), a silence made
//! from chat honoured by the next evaluation, a poller crashing mid-stream without losing or
//! repeating an update, and Slack and Mattermost slash commands with signatures checked.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use common::{receiver, seed_stalls, stall_targets, store_and_ledger, Env};
use tiendo::clock::{ManualClock, SharedClock};
use tiendo::config::{ReceiverKind, ReceiverSettings, Secret, Settings};
use tiendo::embedded::telegram::{BotApi, Sent};
use tiendo::rules::evaluator::Evaluator;
use tiendo::rules::ledger::{Commit, Ledger, STARTED};
use tiendo::status::View;
use tiendo::store;

const TASKFORCE: i64 = -100_111;
const PROVINCES: i64 = -100_222;
const STRANGERS: i64 = -100_333;
const LAN: i64 = 501; // may silence
const MINH: i64 = 502; // may not

fn settings(env: &Env, bot: &BotApi) -> Settings {
    let mut s = env.settings.clone();
    s.alerts.view = View::Current34;
    s.alerts.receivers.insert(
        "tg".into(),
        ReceiverSettings {
            chat_id: TASKFORCE.to_string(),
            ..receiver(ReceiverKind::Telegram, &bot.url())
        },
    );
    s.alerts.rules.pending_for = Duration::ZERO;
    s.commands.telegram = "tg".into();
    s.commands.chats = vec![TASKFORCE.to_string(), PROVINCES.to_string()];
    s.commands.silencers = vec![LAN.to_string()];
    s.commands.poll_timeout = Duration::from_secs(1);
    s.validated().unwrap()
}

async fn evaluator(s: &Settings, clock: SharedClock, now: DateTime<Utc>) -> Evaluator {
    let (store, ledger) = store_and_ledger(s).await;
    Evaluator::new(
        store,
        ledger,
        stall_targets(now, &s.validation.datasets),
        s.validation.datasets.clone(),
        s.alerts.clone(),
        clock,
        false,
    )
}

/// The reply to the message of update `id`.
fn reply_to(sent: &[Sent], id: i64) -> &Sent {
    let found: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.reply_to == Some(id * 10))
        .collect();
    assert_eq!(found.len(), 1, "one reply to update {id}: {sent:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_two_users_in_two_chats_are_answered_and_strangers_refused() {
    let env = Env::start();
    let now = Utc::now();
    seed_stalls(&env, now).await;
    let bot = BotApi::start().await.unwrap();
    let s = settings(&env, &bot);
    let clock: SharedClock = ManualClock::new(now);
    let targets = stall_targets(now, &s.validation.datasets);
    let stop = CancellationToken::new();
    let tasks = tiendo::run::spawn_chat(&s, targets, clock.clone(), None, stop.clone())
        .await
        .unwrap();
    let conn = store::connect(&s.redis).await.unwrap();
    let ledger = Ledger::new(conn, &s.redis.key_prefix);
    // The deployment has run before: its first evaluation is behind it.
    let commit = Commit {
        meta: vec![(STARTED, Some(now.to_rfc3339()))],
        ..Commit::default()
    };
    assert!(ledger.commit(0, &commit).await.unwrap());

    // Lan silences Cao Bằng's civil-status alerts from chat, before the evaluation.
    let silence = bot.say(
        TASKFORCE,
        LAN,
        "lan",
        "/imlang cao bang civil_status 2d đang đối soát số liệu",
    );
    let sent = bot.wait_sent(1, Duration::from_secs(30)).await;
    let r = reply_to(&sent, silence);
    assert_eq!(r.chat_id, TASKFORCE.to_string());
    let stored = ledger.silences().await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let id = stored[0].id.clone();
    assert_eq!(
        (stored[0].scheme.as_str(), stored[0].province.as_str()),
        ("34", "04")
    );
    assert_eq!(stored[0].dataset, "civil_status");
    assert_eq!(stored[0].reason, "đang đối soát số liệu — @lan (501)");
    assert!(
        r.text
            .starts_with("🔕 Đã tạm im cảnh báo về Hộ tịch của <b>Cao Bằng</b> đến ")
            && r.text
                .ends_with(&format!("(giờ VN). Mã: {id}. Bỏ im: /boimlang {id}")),
        "{}",
        r.text
    );

    // The next evaluation honours it: Cao Bằng's alerts fire, silenced, and chat is not told.
    let out = evaluator(&s, clock.clone(), now)
        .await
        .evaluate_once()
        .await
        .unwrap();
    let cao_bang: Vec<_> = out
        .notices
        .iter()
        .filter(|n| n.subject.code == "04")
        .collect();
    assert!(!cao_bang.is_empty(), "{:?}", out.notices);
    assert!(cao_bang
        .iter()
        .all(|n| n.silenced_by.as_deref() == Some(id.as_str())));
    let chat = out.chat.expect("a digest for chat");
    assert!(
        chat.notices.iter().all(|n| n.subject.code != "04"),
        "{chat:?}"
    );
    assert!(chat.notices.iter().any(|n| n.subject.code == "01"));

    // Everyone else.
    let asks = [
        (PROVINCES, MINH, "minh", "/tinh Hà Nội"),
        (TASKFORCE, LAN, "lan", "/province ha noi"),
        (PROVINCES, MINH, "minh", "/canhbao"),
        (STRANGERS, 777, "khach", "/tinh 01"),
        (PROVINCES, MINH, "minh", "/imlang ha noi 2d thử"),
        (PROVINCES, MINH, "minh", "/tinh <b>Hà</b> & co"),
        (TASKFORCE, LAN, "lan", "/imlang"),
        (TASKFORCE, LAN, "lan", "/xoa"),
        (TASKFORCE, LAN, "lan", "/trogiup"),
        (TASKFORCE, LAN, "lan", "/baocao"),
        (TASKFORCE, LAN, "lan", "/tinh ninh thuan"),
        (TASKFORCE, LAN, "lan", "chào cả nhà"),
        (TASKFORCE, LAN, "lan", "/tinh@other_bot 01"),
        (TASKFORCE, LAN, "lan", &format!("/boimlang {id}")),
        (TASKFORCE, LAN, "lan", "/boimlang s1-0000"),
    ];
    let ids: Vec<i64> = asks
        .iter()
        .map(|(chat, user, name, text)| bot.say(*chat, *user, name, text))
        .collect();
    // Two messages are not for the bot; every other one gets exactly one reply.
    let sent = bot
        .wait_sent(1 + asks.len() - 2, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = {
        let again = bot.sent();
        assert_eq!(again.len(), sent.len(), "no reply to chatter: {again:#?}");
        again
    };
    let text = |i: usize| reply_to(&sent, ids[i]).text.clone();

    // /tinh from the provinces' chat, and its English alias in the task force's.
    for i in [0, 1] {
        let t = text(i);
        assert_eq!(reply_to(&sent, ids[i]).chat_id, asks[i].0.to_string());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "<b>Hà Nội</b>", "{t}");
        assert!(
            lines[1].starts_with("mã 01 (bảng 34 tỉnh) · số liệu lúc "),
            "{t}"
        );
        // Hà Nội began five days ago (just before): a rate over its own whole days.
        let first = now - chrono::Duration::days(5) - chrono::Duration::minutes(4);
        let day = |t: DateTime<Utc>| tiendo::buckets::Tier::Day.bucket(t.timestamp());
        let head = format!(
            "<b>Hộ tịch</b>: 50,0% (500.000/1.000.000) · 7 ngày: {}/ngày, cần ",
            thousands(500_000.0 / (day(now) - day(first)) as f64).replace(',', ".")
        );
        assert!(lines[2].starts_with(&head), "{t}\nwanted {head}");
        assert!(
            t.contains("\n<b>Cảnh báo</b>\n🟠 Hộ tịch: không có dữ liệu mới (cảnh báo) từ "),
            "{t}"
        );
    }
    // /canhbao: grouped like a digest, the silenced alert marked, the silence listed.
    let t = text(2);
    assert!(t.starts_with("<b>tiendo · "), "{t}");
    assert!(t.contains(" cảnh báo đang bật · "), "{t}");
    assert!(t.contains("Hà Nội"), "{t}");
    assert!(
        t.contains("Cao Bằng") && t.contains("(đang tạm tắt)"),
        "{t}"
    );
    assert!(t.contains("<b>Đang tạm im</b>") && t.contains(&id), "{t}");
    // A chat that is not configured.
    let r = reply_to(&sent, ids[3]);
    assert_eq!(r.chat_id, STRANGERS.to_string());
    assert_eq!(
        r.text,
        "Xin lỗi, tiendo chỉ trả lời các nhóm đã được cấu hình. Nhờ quản trị viên thêm nhóm này (mã -100333) vào commands.chats."
    );
    // A user who may not silence.
    assert_eq!(
        text(4),
        "Xin lỗi, bạn chưa có quyền tạm im hay bỏ im cảnh báo. Nhờ quản trị viên thêm mã người dùng của bạn vào commands.silencers."
    );
    // Markup in a name is escaped.
    assert_eq!(
        text(5),
        "Không tìm thấy tỉnh “&lt;b&gt;Hà&lt;/b&gt; &amp; co”. Gõ tên (có hoặc không dấu) hoặc mã, ví dụ /tinh ninh thuan hoặc /tinh 58."
    );
    // Usage, unknown commands, help.
    assert!(
        text(6).starts_with(
            "/imlang &lt;tỉnh&gt; [dữ liệu] [quy tắc] &lt;thời hạn&gt; &lt;lý do&gt; (/silence): "
        ),
        "{}",
        text(6)
    );
    assert_eq!(text(7), "Lệnh không có. Gõ /trogiup để xem các lệnh.");
    let help = text(8);
    assert!(
        help.starts_with("<b>tiendo · các lệnh</b>\n/tinh &lt;tên hoặc mã&gt; (/province): "),
        "{help}"
    );
    for c in [
        "/canhbao",
        "/baocao",
        "/imlang",
        "/boimlang",
        "/trogiup",
        "/alerts",
        "/unsilence",
    ] {
        assert!(help.contains(c), "{c}: {help}");
    }
    // The classification.
    let t = text(9);
    assert!(t.starts_with("<b>Báo cáo tuần · "), "{t}");
    assert!(
        t.contains("<b>Hộ tịch</b>: ") && t.contains("Đã hoàn thành 1"),
        "{t}"
    );
    // A 63-unit name in the 34-unit view: shown as it was, and where it went.
    let t = text(10);
    assert!(
        t.starts_with("<b>Ninh Thuận</b>\nmã 58 (bảng 63 tỉnh), nay thuộc Khánh Hòa (56) · "),
        "{t}"
    );
    // Lifting the silence, and one that does not exist.
    assert_eq!(text(13), format!("🔔 Đã bỏ im lặng {id}."));
    assert!(ledger.silences().await.unwrap().is_empty());
    assert_eq!(
        text(14),
        "Không có im lặng mã s1-0000. Xem các mã bằng /canhbao."
    );
    assert_eq!(bot.most_polling(), 1);
    assert_eq!(bot.unconfirmed(), 0);

    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_crashing_mid_stream_loses_and_repeats_no_update() {
    let env = Env::start();
    let bot = BotApi::start().await.unwrap();
    let s = settings(&env, &bot);
    let now = Utc::now();
    let clock: SharedClock = ManualClock::new(now);
    let targets = stall_targets(now, &s.validation.datasets);
    let spawn = || {
        tiendo::run::spawn_chat(
            &s,
            targets.clone(),
            clock.clone(),
            None,
            CancellationToken::new(),
        )
    };
    // Two replicas: the first takes the poll lock and answers, the other stands by.
    let a = spawn().await.unwrap();
    let polling = Instant::now() + Duration::from_secs(30);
    while bot.most_polling() == 0 {
        assert!(Instant::now() < polling, "the first replica never polled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = spawn().await.unwrap();
    let codes: Vec<String> = (1..=40)
        .map(|i| format!("{:02}", [1, 4, 8, 11, 12, 14, 15, 19][i % 8]))
        .collect();
    let mut ids = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        ids.push(bot.say(TASKFORCE, LAN, "lan", &format!("/tinh {code}")));
        if i == 15 {
            // Crash both tasks of the first replica mid-stream; the other takes over once
            // its lock lapses.
            for t in &a {
                t.abort();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replies_to = |sent: &[Sent]| {
        let mut replies: BTreeMap<i64, usize> = BTreeMap::new();
        for r in sent {
            *replies.entry(r.reply_to.unwrap() / 10).or_default() += 1;
        }
        replies
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while replies_to(&bot.sent()).len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = bot.sent();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_after = bot.sent();
    assert_eq!(
        sent_after.len(),
        sent.len(),
        "nothing more after the last answer"
    );
    let replies = replies_to(&sent_after);
    let answered: Vec<i64> = replies.keys().copied().collect();
    let mut asked = ids.clone();
    asked.sort_unstable();
    assert_eq!(answered, asked, "every update answered");
    // Once each, but for a reply the crash caught on its way to Telegram, which takes no
    // idempotency key: that one may go again, never more.
    let repeated: Vec<(&i64, &usize)> = replies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.len() <= 1 && repeated.iter().all(|(_, n)| **n == 2),
        "answered more than once beyond the reply in flight at the crash: {repeated:?}"
    );
    assert_eq!(bot.unconfirmed(), 0);
    // Never two pollers at once, not even for a refused call: the lock is the only way in.
    assert_eq!(bot.most_polling(), 1);
    for t in b {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_mattermost_slash_commands_are_verified_and_answered() {
    let env = Env::start();
    let now = Utc::now();
    seed_stalls(&env, now).await;
    let mut s = env.settings.clone();
    s.commands.chats = vec!["C123".into()];
    s.commands.silencers = vec!["U1".into()];
    s.commands.slack_signing_secret = Secret::new("slack-s3cret");
    s.commands.mattermost_token = Secret::new("mm-token");
    let s = s.validated().unwrap();
    let clock: SharedClock = ManualClock::new(now);
    let targets = stall_targets(now, &s.validation.datasets);
    let state = tiendo::run::app_state(&s, targets, clock, None, None, None)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let (addr, _) = tiendo::serve::serve("127.0.0.1:0", state, stop.clone())
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let post = |body: String, headers: Vec<(&'static str, String)>| {
        let client = client.clone();
        async move {
            let mut r = client
                .post(format!("http://{addr}/slack/commands"))
                .header("content-type", "application/x-www-form-urlencoded");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            let r = r.body(body).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.text().await.unwrap())
        }
    };
    let form = |user: &str, channel: &str, command: &str, text: &str| {
        serde_urlencoded::to_string([
            ("token", "mm-token"),
            ("channel_id", channel),
            ("user_id", user),
            ("user_name", "lan"),
            ("command", command),
            ("text", text),
        ])
        .unwrap()
    };
    let unix = Utc::now().timestamp();
    let signed = |body: &str, at: i64| {
        vec![
            ("x-slack-request-timestamp", at.to_string()),
            (
                "x-slack-signature",
                tiendo::serve::slack::sign("slack-s3cret", at, body.as_bytes()),
            ),
        ]
    };
    let json = |t: &str| -> serde_json::Value { serde_json::from_str(t).unwrap() };

    // Slack, signed: `/tinh` itself, and one `/tiendo` command for all.
    let body = form("U2", "C123", "/tinh", "ha noi");
    let (code, text) = post(body.clone(), signed(&body, unix)).await;
    assert_eq!(code, 200, "{text}");
    let v = json(&text);
    assert_eq!(v["response_type"], "in_channel");
    let t = v["text"].as_str().unwrap();
    assert!(t.starts_with("*Hà Nội*\nmã 01 (bảng 34 tỉnh)"), "{t}");
    let body = form("U2", "C123", "/tiendo", "canhbao");
    let (_, text) = post(body.clone(), signed(&body, unix)).await;
    assert_eq!(json(&text)["text"], "Không có cảnh báo nào đang bật.");
    // A bad signature, a replayed old request, a missing secret: 401.
    let body = form("U2", "C123", "/tinh", "01");
    let mut bad = signed(&body, unix);
    bad[1].1 = tiendo::serve::slack::sign("guess", unix, body.as_bytes());
    assert_eq!(post(body.clone(), bad).await.0, 401);
    assert_eq!(post(body.clone(), signed(&body, unix - 301)).await.0, 401);
    let tampered = form("U2", "C123", "/imlang", "01 2d x");
    assert_eq!(post(tampered, signed(&body, unix)).await.0, 401);
    // A channel that is not configured: refused, to the asker only.
    let body = form("U2", "C999", "/tinh", "01");
    let v = json(&post(body.clone(), signed(&body, unix)).await.1);
    assert_eq!(v["response_type"], "ephemeral");
    assert!(v["text"]
        .as_str()
        .unwrap()
        .starts_with("Xin lỗi, tiendo chỉ trả lời"));
    // Mattermost, by its token; a silence by an allowed user is stored.
    let (code, text) = post(
        form("U1", "C123", "/imlang", "dien bien 1d kiểm tra"),
        vec![],
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(
        json(&text)["text"]
            .as_str()
            .unwrap()
            .starts_with("🔕 Đã tạm im mọi cảnh báo của *Điện Biên* đến "),
        "{text}"
    );
    let conn = store::connect(&s.redis).await.unwrap();
    let silences = Ledger::new(conn, &s.redis.key_prefix)
        .silences()
        .await
        .unwrap();
    assert_eq!(silences.len(), 1);
    assert_eq!(silences[0].province, "11");
    let wrong = form("U1", "C123", "/tinh", "01").replace("mm-token", "nope");
    assert_eq!(post(wrong, vec![]).await.0, 401);
    // Redis stalls for 4 s: Slack, which waits 3 s, hears in time that it should try again,
    // as a 200 (Slack shows no body of another status).
    let mut pauser = store::connect(&s.redis).await.unwrap();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4_000)
        .query_async::<()>(&mut pauser)
        .await
        .unwrap();
    let body = form("U2", "C123", "/tinh", "ha noi");
    let (code, text) = post(body.clone(), signed(&body, unix)).await;
    assert_eq!(code, 200, "{text}");
    let v = json(&text);
    assert_eq!(v["response_type"], "ephemeral");
    assert!(
        v["text"].as_str().unwrap().contains("số liệu đang chậm"),
        "{text}"
    );
    stop.cancel();
}

/// A message written long before it is read (tiendo was down, or a new bot's backlog) is not
/// answered; one written now is, and both are confirmed to Telegram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_hours_old_when_read_is_not_answered() {
    let env = Env::start();
    let bot = BotApi::start().await.unwrap();
    let s = settings(&env, &bot);
    let now = Utc::now();
    let clock: SharedClock = ManualClock::new(now);
    let old = bot.say_at(
        TASKFORCE,
        LAN,
        "lan",
        "/imlang cao bang civil_status 2d đối soát",
        (now - chrono::Duration::hours(3)).timestamp(),
    );
    let fresh = bot.say(TASKFORCE, LAN, "lan", "/tinh ninh thuan");
    let stop = CancellationToken::new();
    let tasks = tiendo::run::spawn_chat(
        &s,
        stall_targets(now, &s.validation.datasets),
        clock,
        None,
        stop.clone(),
    )
    .await
    .unwrap();
    let sent = bot.wait_sent(1, Duration::from_secs(30)).await;
    reply_to(&sent, fresh);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = bot.sent();
    assert!(
        sent.iter().all(|m| m.reply_to != Some(old * 10)),
        "{sent:#?}"
    );
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(bot.unconfirmed(), 0);
    let conn = store::connect(&s.redis).await.unwrap();
    let silences = Ledger::new(conn, &s.redis.key_prefix)
        .silences()
        .await
        .unwrap();
    assert!(silences.is_empty(), "{silences:?}");
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Telegram numbers updates afresh after a week without any, possibly below the offset tiendo
/// stored; asked with that offset it would take every new update as confirmed, and the bot
/// would answer nothing again. An offset over a day old is not asked with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_quiet_for_a_week_hears_commands_numbered_afresh() {
    let env = Env::start();
    let bot = BotApi::start().await.unwrap();
    let s = settings(&env, &bot);
    let now = Utc::now();
    let chat = |stop: &CancellationToken| {
        tiendo::run::spawn_chat(
            &s,
            stall_targets(now, &s.validation.datasets),
            ManualClock::new(now),
            None,
            stop.clone(),
        )
    };
    let before = bot.say(TASKFORCE, LAN, "lan", "/tinh ninh thuan");
    let stop = CancellationToken::new();
    let tasks = chat(&stop).await.unwrap();
    reply_to(&bot.wait_sent(1, Duration::from_secs(30)).await, before);
    // Confirmed by the next poll, as a week of polls would have.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bot.unconfirmed() > 0 {
        assert!(Instant::now() < deadline, "not confirmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }

    // A week on: the offset stored then is old, and Telegram's next id is lower.
    let mut conn = store::connect(&s.redis).await.unwrap();
    let poll = format!("{}:{{alerts}}:poll", s.redis.key_prefix);
    let week_ago = (now - chrono::Duration::days(7)).timestamp();
    let _: () = redis::AsyncCommands::hset(&mut conn, &poll, "tg@", week_ago)
        .await
        .unwrap();
    bot.renumber(5);
    let after = bot.say(TASKFORCE, LAN, "lan", "/tinh cao bang");
    assert!(after < before);
    let stop = CancellationToken::new();
    let tasks = chat(&stop).await.unwrap();
    let sent = bot.wait_sent(2, Duration::from_secs(30)).await;
    reply_to(&sent, after);
    // The offset moved on from the new ids, dated now: the next poll asks with it.
    let stored = Ledger::new(conn.clone(), &s.redis.key_prefix)
        .poll_offset("tg")
        .await
        .unwrap();
    assert_eq!((stored.next, stored.bot), (after + 1, Some(1)));
    assert!(stored.moved_at.is_some_and(|t| t >= now.timestamp()));
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }

    // Read afresh again, an update whose id was answered within the day (one a poller
    // stopped before confirming, handed out again) is not answered twice.
    let _: () = redis::AsyncCommands::hset(&mut conn, &poll, "tg@", week_ago)
        .await
        .unwrap();
    bot.renumber(after);
    assert_eq!(bot.say(TASKFORCE, LAN, "lan", "/tinh cao bang"), after);
    let stop = CancellationToken::new();
    let tasks = chat(&stop).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bot.unconfirmed() > 0 {
        assert!(Instant::now() < deadline, "not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(bot.sent().len(), 2, "{:#?}", bot.sent());
}

/// In English by configuration: a province's every dataset with its percent, pace against
/// the pace needed, projected date and deadline; help and refusals in English too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn english_replies_show_every_dataset_with_its_projection() {
    use chrono::Duration as Span;
    use tiendo::events::CodeScheme;
    let env = Env::start();
    let now = Utc::now();
    // Điện Biên: civil status 100,000 a day and land 5,000 a day, on each of the 6 days
    // before today (which rates read).
    let mut g = env.generator(6);
    let mut events = Vec::new();
    for day in 1..=6 {
        let at = now - Span::days(day);
        events.push(g.record_for("11", CodeScheme::Provinces34, "civil_status", 100_000, at));
        events.push(g.record_for("11", CodeScheme::Provinces34, "land", 5_000, at));
    }
    env.publish(&events).await;
    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(60)).await;
    running.shutdown().await;

    let bot = BotApi::start().await.unwrap();
    let mut s = settings(&env, &bot);
    s.alerts.language = tiendo::config::Language::En;
    assert_eq!(s.alerts.rules.projection_window, "30d");
    let local = |t: DateTime<Utc>| t.with_timezone(&tiendo::clock::vn_offset()).date_naive();
    let deadline = local(now) + Span::days(40);
    let csv = format!(
        "province,dataset,target,deadline\n\
         11,civil_status,1000000,{deadline}\n\
         11,land,100000,{deadline}\n"
    );
    let targets = tiendo::targets::Targets::parse(&csv, &s.validation.datasets).unwrap();
    let clock: SharedClock = ManualClock::new(now);
    let stop = CancellationToken::new();
    let _tasks = tiendo::run::spawn_chat(&s, targets, clock, None, stop.clone())
        .await
        .unwrap();
    let asks = [
        (TASKFORCE, LAN, "lan", "/province dien bien"),
        (TASKFORCE, LAN, "lan", "/help"),
        (STRANGERS, 777, "guest", "/alerts"),
        (PROVINCES, MINH, "minh", "/unsilence s1-0000"),
    ];
    let ids: Vec<i64> = asks
        .iter()
        .map(|(chat, user, name, text)| bot.say(*chat, *user, name, text))
        .collect();
    let sent = bot.wait_sent(asks.len(), Duration::from_secs(60)).await;
    let text = |i: usize| reply_to(&sent, ids[i]).text.clone();

    let t = text(0);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "<b>Điện Biên</b>", "{t}");
    assert!(
        lines[1].starts_with("code 11 (34-unit table) · figures at "),
        "{t}"
    );
    // A feed six days old: its rates divide by its six whole days, not by the window's.
    let check = |line: &str, name: &str, total: f64, target: f64| {
        let week = total / 6.0;
        let head = format!(
            "<b>{name}</b>: {:.1}% ({}/{}) · 7 days: {}/day, needs ",
            100.0 * total / target,
            thousands(total),
            thousands(target),
            thousands(week)
        );
        assert!(line.starts_with(&head), "{line}\nwanted {head}");
        // Projected at the rate of the projection window (30 days, all of these events).
        let rate = total / 6.0;
        let projected = local(now + Span::seconds(((target - total) / rate * 86_400.0) as i64));
        let projected = format!(" · projected {} · ", projected.format("%d/%m/%Y"));
        assert!(line.contains(&projected), "{line}\nwanted {projected}");
        assert!(
            line.ends_with(&format!(" · deadline {}", deadline.format("%d/%m/%Y"))),
            "{line}"
        );
    };
    check(lines[2], "Civil status", 600_000.0, 1_000_000.0);
    check(lines[3], "Land", 30_000.0, 100_000.0);
    assert_eq!(lines[4], "No alerts.", "{t}");

    let help = text(1);
    assert!(
        help.contains("/province") && help.contains("/alerts"),
        "{help}"
    );
    assert!(!help.contains("Xin lỗi"), "{help}");
    assert_eq!(
        text(2),
        "Sorry, tiendo only answers configured chats. Ask an administrator to add this chat (id -100333) to commands.chats."
    );
    assert_eq!(
        text(3),
        "Sorry, you may not silence or unsilence alerts. Ask an administrator to add your user id to commands.silencers."
    );
    stop.cancel();
}

/// `1234567.8` as English text shows it: `1,234,568`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The running binary, as a replica answers: a command from a chat not configured gets its
/// refusal, a warning in the log naming the chat, and a count in
/// `tiendo_chat_commands_total{outcome="refused"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_logged_and_counted_by_the_running_binary() {
    use std::process::Stdio;
    let env = Env::start();
    let bot = BotApi::start().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = env
        .process_command()
        .env("TIENDO_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("TIENDO_ALERTS__RECEIVERS__TG__KIND", "telegram")
        .env("TIENDO_ALERTS__RECEIVERS__TG__URL", bot.url())
        .env("TIENDO_ALERTS__RECEIVERS__TG__TOKEN", "123:secret")
        .env(
            "TIENDO_ALERTS__RECEIVERS__TG__CHAT_ID",
            TASKFORCE.to_string(),
        )
        .env("TIENDO_COMMANDS__TELEGRAM", "tg")
        .env("TIENDO_COMMANDS__CHATS", TASKFORCE.to_string())
        .env("TIENDO_COMMANDS__POLL_TIMEOUT", "1s")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = common::Killed(child);
    let asked = bot.say(STRANGERS, 777, "khach", "/tinh 01");
    let deadline = Instant::now() + Duration::from_secs(60);
    let reply = loop {
        if let Some(r) = bot
            .sent()
            .into_iter()
            .find(|s| s.reply_to == Some(asked * 10))
        {
            break r;
        }
        assert!(Instant::now() < deadline, "no reply: {:#?}", bot.sent());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(reply.chat_id, STRANGERS.to_string());
    assert!(
        reply.text.starts_with("Xin lỗi, tiendo chỉ trả lời"),
        "{}",
        reply.text
    );
    // More from the same stranger: read and counted, but refused once an hour only, so a
    // flood cannot hold up the task force's answers in the reply outbox.
    for _ in 0..3 {
        bot.say(STRANGERS, 777, "khach", "/tinh 01");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while bot.unconfirmed() > 0 {
        assert!(Instant::now() < deadline, "not read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refusals = bot
        .sent()
        .into_iter()
        .filter(|s| s.chat_id == STRANGERS.to_string())
        .count();
    assert_eq!(refusals, 1, "{:#?}", bot.sent());

    let metrics = common::metrics_page(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tiendo_chat_commands_total{") && l.contains("refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{metrics}");
    assert!(refused[0].contains("via=\"telegram\""), "{}", refused[0]);
    assert!(refused[0].ends_with(" 4"), "{}", refused[0]);

    common::signal(&child.0, "TERM");
    child.0.wait().unwrap();
    let log = common::stderr_of(&mut child.0);
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("chat command from a chat not in commands.chats: refused"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("-100333"), "{}", warned[0]);
    assert!(
        !log.contains("123:secret"),
        "the token stays out of the log"
    );
}
