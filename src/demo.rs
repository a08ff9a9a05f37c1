//! `tiendo demo`: the whole service on one machine with nothing installed by hand but
//! `redis-server`, replaying a time-compressed autumn 2024 across the 63 provinces of the
//! time ([`crate::scenario`]): an in-process Kafka (librdkafka's mock cluster), a private
//! Redis, the real pipeline on a simulated clock, stall alerts printed as chat would get them
//! (and sent to any chat receiver configured), the status page and metrics, and at the end
//! the task force's report, a check of the counts against what was published, and how much
//! the chat was told ([`Noise`]).
//!
//! Simulated time moves in steps of `speed` × 250 ms, and waits whenever the counted figures
//! lag it by more than 6 simulated hours: a machine too slow for the speed runs the same
//! season more slowly, instead of judging provinces on figures days behind the clock.
//!
//! It starts cold, as a new deployment does: the history is in Kafka before anything is
//! counted, and the rules start at once, held until the figures are current.
//!
//! The chat runs both ways against a Telegram stand-in ([`BotApi`]): the weekly report is
//! scheduled for Monday 08:00 and printed as it arrives, and a task-force member asks a few
//! questions from chat (`/tinh`, `/canhbao`, `/imlang`) whose answers are printed too.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{vn_offset, ManualClock, SharedClock};
use crate::config::{Language, Settings};
use crate::embedded::telegram::{BotApi, Sent};
use crate::embedded::{MockKafka, RedisServer};
use crate::generator::{publish, Generated, Generator, LogEnds};
use crate::notify::message::{render, Markup, Style};
use crate::notify::receivers::TELEGRAM_MAX;
use crate::pipeline::Pipeline;
use crate::report::Report;
use crate::rules::ledger::{Digest, Notice};
use crate::rules::state::Change;
use crate::scenario::Scenario;
use crate::status::{Status, View};
use crate::store::{self, Store};
use crate::targets::Targets;
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated seconds per real second, at most (21,600: a day every 4 s, the autumn in
    /// 6 min); time waits while the pipeline counts.
    pub speed: f64,
    /// Stop after this long (real time); `None` runs to 1 January 2025 or Ctrl-C.
    pub duration: Option<Duration>,
    /// Stop after this many simulated days (whichever of the two comes first).
    pub days: Option<f64>,
    /// Units of the progress line and the final report.
    pub view: View,
    /// Status page, API and metrics; empty for none.
    pub http_listen: String,
    /// Print progress and alerts (tests turn it off).
    pub verbose: bool,
}

/// What a demo run saw, for the caller (and the tests) to check.
#[derive(Debug)]
pub struct DemoSummary {
    /// Every transition committed.
    pub notices: Vec<Notice>,
    /// What chat receivers were sent, one digest per evaluation with news.
    pub digests: Vec<Digest>,
    /// Firing notices from the cold start that the caught-up figures did not support.
    pub false_alerts: Vec<String>,
    /// Simulated days the season ran.
    pub days: f64,
    pub published_records: i64,
    pub counted_records: i64,
    pub published_procedures: i64,
    pub counted_procedures: i64,
    pub report: Report,
    pub group_at: usize,
    /// The weekly reports the chat received (plain text), one per Monday.
    pub weekly_reports: Vec<String>,
    /// Questions asked from chat and their answers (plain text).
    pub answers: Vec<(String, String)>,
}

/// The demo's chat, its task-force member, and what they ask on which day of the season.
const DEMO_RECEIVER: &str = "demo-bot";
const DEMO_CHAT: i64 = -1_000_000_000_006;
const DEMO_USER: i64 = 606;
const ASKS: [(i64, &str); 3] = [
    (8, "/tinh ninh thuan"),
    (15, "/canhbao"),
    (
        22,
        "/imlang quang nam 3d đang đối soát số liệu với Sở Tư pháp",
    ),
];

/// How much the chat was told, and how much of it was noise.
#[derive(Debug, Clone, PartialEq)]
pub struct Noise {
    pub notices: usize,
    pub notices_per_day: f64,
    /// Telegram messages sent (a digest split in parts counts each), and their lines.
    pub messages: usize,
    pub messages_per_day: f64,
    pub lines: usize,
    /// Alerts that fired, resolved and fired again within 7 days.
    pub flaps: usize,
    /// The largest digest: lines, and Telegram messages.
    pub largest_lines: usize,
    pub largest_messages: usize,
    pub false_alerts: usize,
}

impl DemoSummary {
    pub fn exact(&self) -> bool {
        self.published_records == self.counted_records
            && self.published_procedures == self.counted_procedures
    }

    pub fn noise(&self) -> Noise {
        let telegram = Style {
            language: Language::Vi,
            markup: Markup::TelegramHtml,
            max_chars: TELEGRAM_MAX,
            group_at: self.group_at,
            link: None,
        };
        let rendered: Vec<Vec<String>> =
            self.digests.iter().map(|d| render(d, &telegram)).collect();
        let lines = |parts: &Vec<String>| -> usize {
            parts
                .iter()
                .map(|p| p.lines().count().saturating_sub(1))
                .sum()
        };
        let messages: usize = rendered.iter().map(Vec::len).sum();
        let days = self.days.max(1.0);
        Noise {
            notices: self.notices.len(),
            notices_per_day: self.notices.len() as f64 / days,
            messages,
            messages_per_day: messages as f64 / days,
            lines: rendered.iter().map(lines).sum(),
            flaps: flaps(&self.notices, chrono::Duration::days(7)),
            largest_lines: rendered.iter().map(lines).max().unwrap_or(0),
            largest_messages: rendered.iter().map(Vec::len).max().unwrap_or(0),
            false_alerts: self.false_alerts.len(),
        }
    }
}

impl std::fmt::Display for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "notices: {} ({:.1} a day) · chat: {} Telegram messages ({:.1} a day), {} lines · \
             flaps: {} · largest digest: {} lines in {} message(s) · \
             false alerts after the cold start: {}",
            self.notices,
            self.notices_per_day,
            self.messages,
            self.messages_per_day,
            self.lines,
            self.flaps,
            self.largest_lines,
            self.largest_messages,
            self.false_alerts
        )
    }
}

/// Alerts that fired again within `window` of resolving.
pub fn flaps(notices: &[Notice], window: chrono::Duration) -> usize {
    let mut resolved: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> =
        Default::default();
    let mut n = 0;
    for notice in notices {
        match notice.change {
            Change::Resolved => {
                resolved.insert(&notice.alert_key, notice.at);
            }
            Change::Firing { previous: None }
                if resolved
                    .get(notice.alert_key.as_str())
                    .is_some_and(|at| notice.at - *at <= window) =>
            {
                n += 1;
            }
            _ => {}
        }
    }
    n
}

/// How often simulated time moves a step (of `speed` times this).
const TICK: Duration = Duration::from_millis(250);

/// How far in simulated time the counted figures may lag the clock before time waits: well
/// within the rules' pending and clear times, and more than the pipeline's latency at the
/// default speed, which then never waits.
const LAG: chrono::Duration = chrono::Duration::hours(6);

/// Whether Redis has counted every message before `ends`.
async fn counted(reader: &Store, ends: &LogEnds) -> Result<bool, crate::store::StoreError> {
    let parts: Vec<(&str, i32)> = ends.keys().map(|(t, p)| (t.as_str(), *p)).collect();
    let stored = reader.offsets(&parts).await?;
    Ok(ends
        .values()
        .zip(stored)
        .all(|(end, at)| at.is_some_and(|at| at >= *end)))
}

/// Runs the demo. `base` brings the operator's settings that matter here: chat receivers and
/// the alerts language.
pub async fn demo(
    options: DemoOptions,
    base: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<DemoSummary> {
    let say = |s: String| {
        if options.verbose {
            println!("{s}");
        }
    };
    let redis = RedisServer::start()?;
    let mut settings = Settings::default();
    let topics = settings.kafka.topics.clone();
    let kafka = MockKafka::start(&[
        (&topics.records, 6),
        (&topics.procedures, 3),
        (&topics.dead_letter, 1),
        (&topics.alerts, 1),
    ])?;
    settings.kafka.brokers = kafka.bootstrap_servers();
    settings.redis.url = crate::config::Secret::new(redis.url());
    settings.pipeline.batch_linger = Duration::from_millis(50);
    // A batch judges event times against the clock when its first message came. Steps of
    // simulated time are published before the steps before them are counted (up to LAG), so
    // a batch may meet events several steps newer than its clock: in real time, seconds.
    let step = chrono::Duration::milliseconds((options.speed * TICK.as_secs_f64() * 1e3) as i64);
    settings.validation.max_future_skew = settings
        .validation
        .max_future_skew
        .max((LAG + step * 2).to_std().unwrap_or_default());
    // Alerts on simulated time: a rule must hold half a day, be clear a day; figures lag the
    // simulated clock by at most 6 hours and a step (`speed` × 250 ms), so silence needs 2 days.
    settings.alerts.view = View::Legacy63;
    settings.alerts.language = base.alerts.language;
    settings.alerts.receivers = base.alerts.receivers.clone();
    settings.alerts.interval = Duration::from_secs(1);
    settings.alerts.rules.pending_for = Duration::from_secs(12 * 3600);
    settings.alerts.rules.clear_for = Duration::from_secs(24 * 3600);
    settings.alerts.repeat_interval = Duration::from_secs(30 * 86_400);
    settings.alerts.rules.online_min_dossiers = 5;
    // The chat, both ways, against a Telegram stand-in.
    let bot = BotApi::start().await?;
    settings.alerts.receivers.insert(
        DEMO_RECEIVER.into(),
        crate::config::ReceiverSettings {
            kind: crate::config::ReceiverKind::Telegram,
            url: crate::config::Secret::new(bot.url()),
            token: crate::config::Secret::new("606:demo"),
            chat_id: DEMO_CHAT.to_string(),
            language: None,
            max_chars: None,
            routes: vec![crate::rules::Route::Taskforce],
        },
    );
    settings.report.schedule = vec!["Mon 08:00".into()];
    settings.report.receivers = vec![DEMO_RECEIVER.into()];
    // The schedule is looked at every real second, hours of simulated time.
    settings.report.late_after = Duration::from_secs(2 * 86_400);
    settings.commands.telegram = DEMO_RECEIVER.into();
    settings.commands.chats = vec![DEMO_CHAT.to_string()];
    settings.commands.silencers = vec![DEMO_USER.to_string()];
    settings.commands.poll_timeout = Duration::from_secs(1);
    let settings = settings.validated()?;
    let metrics = telemetry::install_prometheus().ok();

    let mut scenario = Scenario::autumn_2024(0.01);
    let datasets = settings.validation.datasets.clone();
    let targets = Targets::parse(&scenario.targets_csv(), &datasets)?;
    // Time stands at the start of the season until the cold start is over.
    let simulated = ManualClock::new(scenario.start);
    let clock: SharedClock = simulated.clone();
    say(format!(
        "tiendo demo: autumn 2024, 63 provinces, {:.0}× real time. Kafka (in-process) at {}, Redis at {}. Ctrl-C stops.",
        options.speed,
        settings.kafka.brokers,
        redis.url()
    ));

    let pipeline = Pipeline::new(&settings, clock.clone()).await?;
    let watch = crate::run::watch(&settings).await?;
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    if !options.http_listen.is_empty() {
        let state = crate::run::app_state(
            &settings,
            targets.clone(),
            clock.clone(),
            metrics,
            Some(pipeline.assignment()),
            Some(watch.clone()),
        )
        .await?;
        let (addr, task) = crate::serve::serve(&options.http_listen, state, stop.clone()).await?;
        say(format!(
            "status page: http://{addr}/?view=63   metrics: http://{addr}/metrics"
        ));
        tasks.push(task);
    }
    tasks.extend(crate::run::spawn_dispatchers(&settings, stop.clone()).await?);
    tasks.extend(
        crate::run::spawn_chat(
            &settings,
            targets.clone(),
            clock.clone(),
            Some(watch.clone()),
            stop.clone(),
        )
        .await?,
    );
    let bot = Arc::new(bot);
    let asked: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let heard: Heard = Arc::default();
    tasks.push(tokio::spawn(listen(
        bot.clone(),
        asked.clone(),
        heard.clone(),
        options.verbose,
        stop.clone(),
    )));
    let consumer = tokio::spawn(pipeline.run(stop.clone()));

    let producer = crate::source::producer(&settings.kafka, "demo producer")?;
    let reader = Store::new(
        store::connect(&settings.redis).await?,
        &settings.redis.key_prefix,
        datasets.clone(),
        1,
    );
    let mut generator = Generator::new(7, &format!("demo{}", std::process::id()), &datasets);
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut records, mut procedures) = (0i64, 0i64);
    let history = scenario.history(&mut generator);
    tally(&history, &mut records, &mut procedures);
    // Where the log ends after everything published so far; the same after each step, oldest
    // first; and the ends the figures must have reached before time moves on.
    let mut published = publish(&producer, &settings.kafka.topics, &history).await?;
    let mut sent: std::collections::VecDeque<(chrono::DateTime<chrono::Utc>, LogEnds)> =
        Default::default();
    let mut required = published.clone();
    // A cold start: the rules run from now on, held by the evaluator until the figures are
    // current. The demo notes what the rules say once the history is counted, to tell false
    // alerts from true ones.
    let digests: Committed = Arc::default();
    let evaluator =
        crate::run::evaluator(&settings, targets.clone(), clock.clone(), watch.clone()).await?;
    let evaluating = tokio::spawn(evaluate(
        evaluator,
        digests.clone(),
        settings.alerts.language,
        options.verbose,
        stop.clone(),
    ));
    let loaded = tokio::time::Instant::now() + Duration::from_secs(120);
    let reference = loop {
        let now = clock.now();
        let snap = reader.snapshot(now).await?;
        let counted: i64 = snap
            .counts
            .iter()
            .filter(|(k, _)| k.contains("|r."))
            .map(|(_, c)| c.total)
            .sum();
        if counted >= records || tokio::time::Instant::now() > loaded {
            let status = Status::build(&snap, &targets, &datasets, settings.alerts.view);
            let eval = crate::rules::evaluate(&status, now, &settings.alerts.rules);
            break eval
                .findings
                .into_iter()
                .map(|f| f.key)
                .collect::<std::collections::BTreeSet<String>>();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The season starts once the rules have spoken on the history.
    while digests.lock().expect("digests").is_empty() && tokio::time::Instant::now() < loaded {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = options
        .days
        .map(|d| scenario.start + chrono::Duration::seconds((d * 86_400.0) as i64))
        .map_or(scenario.end, |e| e.min(scenario.end));

    let started = tokio::time::Instant::now();
    let over =
        || shutdown.is_cancelled() || options.duration.is_some_and(|d| started.elapsed() >= d);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = scenario.start;
    let mut last_line = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if over() || last >= end {
            break;
        }
        // Time moves on only while the figures are at most LAG behind it: the season never
        // outruns the counting, so the rules judge current figures, and a slow machine shows
        // the same alerts and reports, later.
        while sent.front().is_some_and(|(at, _)| *at <= last - LAG) {
            required = sent.pop_front().expect("looked at").1;
        }
        while !counted(&reader, &required).await? && !over() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if over() {
            break;
        }
        let now = (last + step).min(end);
        simulated.set(now);
        for (day, question) in ASKS {
            let when = scenario.start + chrono::Duration::days(day);
            if last < when && now >= when {
                let id = bot.say(DEMO_CHAT, DEMO_USER, "thanh_vien_to_cong_tac", question);
                asked
                    .lock()
                    .expect("asked")
                    .push((id, question.to_string()));
            }
        }
        let batch = scenario.between(&mut generator, &mut rng, last, now);
        last = now;
        tally(&batch, &mut records, &mut procedures);
        published.extend(publish(&producer, &settings.kafka.topics, &batch).await?);
        sent.push_back((now, published.clone()));
        if options.verbose && last_line.elapsed() >= Duration::from_secs(3) {
            last_line = tokio::time::Instant::now();
            if let Ok(snap) = reader.snapshot(now).await {
                let status = Status::build(&snap, &targets, &datasets, options.view);
                let told: usize = digests
                    .lock()
                    .expect("digests")
                    .iter()
                    .map(|(_, n)| n.len())
                    .sum();
                println!("{}", progress_line(&status, told));
            }
        }
    }

    say("stopping: waiting for the pipeline to count everything published…".into());
    // Answers to the last questions, and the last report, still on their way.
    let quiet = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < quiet
        && heard.lock().expect("heard").answers.len() < asked.lock().expect("asked").len()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle = tokio::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        let snap = reader.snapshot(clock.now()).await?;
        let status = Status::build(&snap, &targets, &datasets, View::Legacy63);
        let counted: i64 = status.national.datasets.values().map(|d| d.total).sum();
        if (counted == records && status.national.procedures.completed == procedures)
            || tokio::time::Instant::now() > settle
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop.cancel();
    let _ = consumer.await;
    let _ = evaluating.await;
    for task in tasks {
        let _ = task.await;
    }
    let now = clock.now();
    let view_status = Status::build(
        &reader.snapshot(now).await?,
        &targets,
        &datasets,
        options.view,
    );
    let eval = crate::rules::evaluate(&view_status, now, &settings.alerts.rules);
    let report = Report::build(
        &view_status,
        &eval,
        settings.report.basically_done,
        settings.alerts.language,
    );
    let committed = std::mem::take(&mut *digests.lock().expect("digests"));
    // The cold start's alerts: the first evaluation's, held until the figures were current.
    let false_alerts = committed
        .iter()
        .take(1)
        .flat_map(|(_, notices)| notices)
        .filter(|n| matches!(n.change, Change::Firing { .. }) && !reference.contains(&n.alert_key))
        .map(|n| n.alert_key.clone())
        .collect();
    let chat = std::mem::take(&mut *heard.lock().expect("heard"));
    let summary = DemoSummary {
        notices: committed.iter().flat_map(|(_, n)| n.clone()).collect(),
        digests: committed
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| !d.id.is_empty())
            .collect(),
        false_alerts,
        days: (now.min(end) - scenario.start).num_seconds() as f64 / 86_400.0,
        group_at: settings.alerts.group_at,
        published_records: records,
        counted_records: status.national.datasets.values().map(|d| d.total).sum(),
        published_procedures: procedures,
        counted_procedures: status.national.procedures.completed,
        report,
        weekly_reports: chat.reports,
        answers: chat.answers,
    };
    say(summary.report.table());
    say(format!("what the chat was told: {}", summary.noise()));
    say(format!(
        "published {} records and {} dossiers; counted {} and {}: {}",
        summary.published_records,
        summary.published_procedures,
        summary.counted_records,
        summary.counted_procedures,
        if summary.exact() {
            "exact"
        } else {
            "NOT EXACT"
        }
    ));
    // The catch-up probe's Kafka client goes before the broker, or its last act is to log
    // every broker as down at the end of a clean run.
    drop(watch);
    drop(producer);
    drop(kafka);
    drop(redis);
    Ok(summary)
}

/// What the demo's chat received besides alerts: weekly reports, and answers to questions.
#[derive(Default)]
struct Chat {
    reports: Vec<String>,
    answers: Vec<(String, String)>,
}

type Heard = Arc<Mutex<Chat>>;

/// Prints what the Telegram stand-in receives besides alert digests (printed as they are
/// committed): the weekly reports and the answers to questions, as plain text.
async fn listen(
    bot: Arc<BotApi>,
    asked: Arc<Mutex<Vec<(i64, String)>>>,
    heard: Heard,
    verbose: bool,
    stop: CancellationToken,
) {
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let sent: Vec<Sent> = bot.sent();
        for m in &sent[seen..] {
            let text = untag(&m.text);
            let mut chat = heard.lock().expect("heard");
            if let Some(reply_to) = m.reply_to {
                let question = asked
                    .lock()
                    .expect("asked")
                    .iter()
                    .find(|(id, _)| id * 10 == reply_to)
                    .map(|(_, q)| q.clone())
                    .unwrap_or_default();
                if verbose {
                    println!("  💬 {question}");
                    for line in text.lines() {
                        println!("     {line}");
                    }
                }
                chat.answers.push((question, text));
            } else if m.method == "sendDocument" {
                if verbose {
                    let size = m.document.as_ref().map_or(0, String::len);
                    let name = m.file_name.as_deref().unwrap_or("");
                    println!("  📎 {name} ({} kB)", size / 1024);
                }
            } else if !m.text.starts_with("<b>tiendo") {
                // A report, or the next part of a long one.
                if verbose {
                    for line in text.lines() {
                        println!("  │ {line}");
                    }
                }
                if m.text.starts_with("<b>Báo cáo tuần") || m.text.starts_with("<b>Weekly") {
                    chat.reports.push(text);
                } else if let Some(last) = chat.reports.last_mut() {
                    last.push('\n');
                    last.push_str(&text);
                }
            }
        }
        seen = sent.len();
    }
}

/// Telegram HTML as plain text.
fn untag(html: &str) -> String {
    html.replace("<b>", "")
        .replace("</b>", "")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn tally(ms: &[Generated], records: &mut i64, procedures: &mut i64) {
    for m in ms {
        match m {
            Generated::Record(r) => *records += r.record_count as i64,
            Generated::Procedure(_) => *procedures += 1,
            Generated::Poison { .. } => {}
        }
    }
}

/// Each committed evaluation: its chat digest (an empty id: none) and its notices.
type Committed = Arc<Mutex<Vec<(Digest, Vec<Notice>)>>>;

/// Evaluates every second of real time and prints what chat receivers get, as they get it.
/// Each evaluation's notices are kept, with its chat digest (an empty id: none).
async fn evaluate(
    evaluator: crate::rules::evaluator::Evaluator,
    digests: Committed,
    lang: Language,
    verbose: bool,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut held = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(out) = evaluator.evaluate_once().await else {
            continue;
        };
        if let Some(c) = &out.held {
            if verbose && !held {
                println!(
                    "  (alerts held: figures catching up, {} messages behind)",
                    c.behind
                );
            }
            held = true;
            continue;
        }
        held = false;
        if out.notices.is_empty() && out.chat.is_none() {
            continue;
        }
        let chat = match out.chat {
            Some(d) => {
                if verbose {
                    for line in render(&d, &Style::plain(lang)).join("\n").lines() {
                        println!("  {line}");
                    }
                }
                Digest {
                    id: "chat".into(),
                    ..d
                }
            }
            None => Digest {
                id: String::new(),
                at: out.notices[0].at,
                notices: Vec::new(),
                summary: None,
                ..Digest::default()
            },
        };
        digests.lock().expect("digests").push((chat, out.notices));
    }
}

fn progress_line(status: &Status, notices: usize) -> String {
    let day = status.as_of.with_timezone(&vn_offset()).format("%d/%m/%Y");
    let parts: Vec<String> = status
        .national
        .datasets
        .iter()
        .filter_map(|(name, d)| {
            d.percent.map(|p| {
                format!(
                    "{} {:.1}%",
                    crate::notify::message::dataset_name(name, Language::Vi),
                    p
                )
            })
        })
        .collect();
    let line = format!("── {day} · {} · {notices} thay đổi", parts.join(" · "));
    if std::io::stdout().is_terminal() {
        format!("\x1b[1m{line}\x1b[0m")
    } else {
        line
    }
}
