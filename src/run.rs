//! `tiendo run`: the service. Wires settings, telemetry, the pipeline, the stall-rule
//! evaluator and the notification dispatchers, and turns SIGTERM or Ctrl-C into a graceful
//! stop (the batch in hand is stored, then the group is left).

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catchup::Watch;
use crate::chat::telegram::{reply_outbox, Poller};
use crate::chat::Conversation;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Settings, KAFKA_OUTBOX};
use crate::notify::{Dispatcher, Sink};
use crate::pipeline::Pipeline;
use crate::provinces::provinces;
use crate::report::schedule::Poster;
use crate::rules::evaluator::Evaluator;
use crate::rules::ledger::Ledger;
use crate::serve::{self, AppState};
use crate::store::{self, Store};
use crate::targets::Targets;
use crate::telemetry;

/// Runs until `shutdown` is cancelled (see [`stop_on_signal`]) or the pipeline stops.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = telemetry::install_prometheus()?;
    tracing::info!(
        brokers = settings.kafka.brokers,
        redis = settings.redis_display(),
        group = settings.kafka.group_id,
        "tiendo starting"
    );
    // Kubernetes adds `TIENDO_*` service links; a misspelt name (one underscore) looks the
    // same, so the names are told once, for whoever wonders why a setting did not take.
    if let Ok(env) = crate::config::env::EnvOverrides::from_env() {
        if !env.ignored.is_empty() {
            tracing::info!(
                names = env.ignored.join(" "),
                "TIENDO_ variables without a section (TIENDO_<SECTION>__<KEY>) are not configuration"
            );
        }
    }
    let clock: SharedClock = Arc::new(SystemClock);
    let targets = load_targets(&settings)?;
    let pipeline = Pipeline::new(&settings, clock.clone()).await?;
    let watch = watch(&settings).await?;
    let mut tasks = Vec::new();
    if !settings.http.listen.is_empty() {
        let state = app_state(
            &settings,
            targets.clone(),
            clock.clone(),
            Some(metrics),
            Some(pipeline.assignment()),
            Some(watch.clone()),
        )
        .await?;
        let sources = crate::sources::publish_every(
            state.store.clone(),
            settings.sources.clone(),
            clock.clone(),
            settings.alerts.interval,
            shutdown.clone(),
        );
        let (_, task) = serve::serve(&settings.http.listen, state, shutdown.clone()).await?;
        tasks.push(task);
        tasks.push(tokio::spawn(sources));
    }
    if settings.alerts.enabled {
        tasks.extend(spawn_alerting(&settings, targets, clock, watch, shutdown.clone()).await?);
    }
    pipeline.run(shutdown.clone()).await;
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("tiendo stopped");
    Ok(())
}

/// What the HTTP server reads from.
pub async fn app_state(
    settings: &Settings,
    targets: Targets,
    clock: SharedClock,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    assignment: Option<Arc<crate::source::Assignment>>,
    watch: Option<Watch>,
) -> anyhow::Result<AppState> {
    let conn = store::connect(&settings.redis).await?;
    let store = Store::new(
        conn.clone(),
        &settings.redis.key_prefix,
        settings.validation.datasets.clone(),
        1,
    );
    let chat = Arc::new(Conversation::new(
        store.clone(),
        Ledger::new(conn.clone(), &settings.redis.key_prefix),
        targets.clone(),
        Arc::new(settings.clone()),
        clock.clone(),
    ));
    Ok(AppState {
        store,
        ledger: Ledger::new(conn.clone(), &settings.redis.key_prefix),
        conn,
        targets,
        datasets: settings.validation.datasets.clone(),
        alerts: settings.alerts.clone(),
        clock,
        metrics,
        assignment,
        watch,
        chat: Some(chat),
        sources: settings.sources.clone(),
    })
}

/// Whether the figures are current: one per process, shared by the evaluator and the API.
pub async fn watch(settings: &Settings) -> anyhow::Result<Watch> {
    let conn = store::connect(&settings.redis).await?;
    let reader = Store::new(
        conn,
        &settings.redis.key_prefix,
        settings.validation.datasets.clone(),
        1,
    );
    Ok(Watch::new(settings, reader)?)
}

/// The configured targets (none without `targets.file`).
pub fn load_targets(settings: &Settings) -> anyhow::Result<Targets> {
    let targets = match &settings.targets.file {
        Some(path) => Targets::load(path, &settings.validation.datasets)?,
        None => Targets::default(),
    };
    for (unit, dataset) in targets.partial() {
        let name = provinces().get(unit.scheme, unit.code);
        tracing::warn!(
            unit = %format_args!("34:{:02}", unit.code),
            name = name.map_or("", |p| p.name_vi.as_str()),
            dataset,
            "the target sums those of only some of the former provinces merged into this unit, \
             while its figures count them all: it may read as reached early"
        );
    }
    // The 63-unit view measures old provinces against their own targets only: a 34-unit
    // target there measures nothing, and its alerts would never fire.
    let current = targets
        .by_unit
        .keys()
        .filter(|(u, _)| u.scheme == crate::provinces::Scheme::Current34)
        .count();
    if settings.alerts.view == crate::provinces::View::Legacy63 && current > 0 {
        tracing::warn!(
            targets = current,
            "alerts.view = 63 judges the 63 former provinces against targets given for them \
             (scheme 63); these targets of the 34-unit table judge nothing there"
        );
    }
    // Since the switch-over most events come with codes of the 34-unit table, and a code both
    // tables have, sent without `code_scheme`, is read in it: they count toward the new units,
    // so the former provinces' rows would fall behind and alert though their work goes on.
    if settings.alerts.view == crate::provinces::View::Legacy63
        && crate::provinces::Scheme::in_force_at(chrono::Utc::now())
            == crate::provinces::Scheme::Current34
    {
        tracing::warn!(
            "alerts.view = 63 after the switch-over to 34 units (1 July 2025): events sent with \
             the new codes count toward the 34 units, and the former provinces' rows fall \
             behind and alert; alerts.view = 34 judges the units in force (?view=63 still \
             shows the former provinces on the page)"
        );
    }
    Ok(targets)
}

/// Starts the evaluator, one dispatcher per receiver (and one for the Kafka alerts topic),
/// the scheduled report and the Telegram command poller when they are configured.
pub async fn spawn_alerting(
    settings: &Settings,
    targets: Targets,
    clock: SharedClock,
    watch: Watch,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let evaluator = evaluator(settings, targets.clone(), clock.clone(), watch.clone()).await?;
    let mut tasks = vec![tokio::spawn(evaluator.run(shutdown.clone()))];
    tasks.extend(spawn_dispatchers(settings, shutdown.clone()).await?);
    tasks.extend(spawn_chat(settings, targets, clock, Some(watch), shutdown).await?);
    Ok(tasks)
}

/// The scheduled report (with `report.schedule`) and the Telegram command poller (with
/// `commands.telegram`).
pub async fn spawn_chat(
    settings: &Settings,
    targets: Targets,
    clock: SharedClock,
    watch: Option<Watch>,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let conn = store::connect(&settings.redis).await?;
    let prefix = &settings.redis.key_prefix;
    let store = Store::new(
        conn.clone(),
        prefix,
        settings.validation.datasets.clone(),
        1,
    );
    let ledger = Ledger::new(conn, prefix);
    let shared = Arc::new(settings.clone());
    let mut tasks = Vec::new();
    if !settings.report.schedule.is_empty() {
        let mut poster = Poster::new(
            store.clone(),
            ledger.clone(),
            targets.clone(),
            shared.clone(),
            clock.clone(),
        );
        if let Some(w) = watch {
            poster = poster.with_watch(w);
        }
        // A few looks per evaluation: cheap (one ledger read), and on time within seconds.
        let every = (settings.alerts.interval / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(60),
        );
        tasks.push(tokio::spawn(poster.run(every, shutdown.clone())));
        tracing::info!(schedule = ?settings.report.schedule, "report schedule started");
    }
    let name = &settings.commands.telegram;
    if let Some(receiver) = settings.alerts.receivers.get(name) {
        let chat = Arc::new(Conversation::new(
            store,
            ledger.clone(),
            targets,
            shared,
            clock,
        ));
        let poller = Poller::new(ledger.clone(), chat, name, receiver);
        tasks.push(tokio::spawn(poller.run(shutdown.clone())));
        let sink = Sink::http(receiver, &settings.alerts, &settings.http.public_url);
        let replies = Dispatcher::new(
            ledger,
            &reply_outbox(name),
            sink,
            settings.alerts.max_backoff,
        )
        .with_poll(std::time::Duration::from_millis(200));
        tasks.push(tokio::spawn(replies.run(shutdown)));
        tracing::info!(receiver = name, "chat commands: polling Telegram");
    }
    Ok(tasks)
}

/// The stall-rule evaluator as configured, held while the figures are catching up.
pub async fn evaluator(
    settings: &Settings,
    targets: Targets,
    clock: SharedClock,
    watch: Watch,
) -> anyhow::Result<Evaluator> {
    let conn = store::connect(&settings.redis).await?;
    let reader = Store::new(
        conn.clone(),
        &settings.redis.key_prefix,
        settings.validation.datasets.clone(),
        1,
    );
    Ok(Evaluator::new(
        reader,
        Ledger::new(conn, &settings.redis.key_prefix),
        targets,
        settings.validation.datasets.clone(),
        settings.alerts.clone(),
        clock,
        !settings.kafka.topics.alerts.is_empty(),
    )
    .with_sources(settings.sources.clone())
    .with_watch(watch))
}

/// One dispatcher per chat receiver, and one for the Kafka alerts topic if it is set.
pub async fn spawn_dispatchers(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let alerts = &settings.alerts;
    let ledger = Ledger::new(
        store::connect(&settings.redis).await?,
        &settings.redis.key_prefix,
    );
    let kafka = !settings.kafka.topics.alerts.is_empty();
    let mut tasks = Vec::new();
    for (name, receiver) in &alerts.receivers {
        let sink = Sink::http(receiver, alerts, &settings.http.public_url);
        let d = Dispatcher::new(ledger.clone(), name, sink, alerts.max_backoff);
        tasks.push(tokio::spawn(d.run(shutdown.clone())));
    }
    if kafka {
        let sink = Sink::Kafka {
            producer: {
                // Give up on a send before the outbox lock (30 s) could lapse under it.
                let mut kafka = settings.kafka.clone();
                kafka
                    .producer_properties
                    .entry("message.timeout.ms".into())
                    .or_insert_with(|| crate::config::Secret::new("20000"));
                crate::source::producer(&kafka, "alerts producer")?
            },
            topic: settings.kafka.topics.alerts.clone(),
        };
        let d = Dispatcher::new(ledger, KAFKA_OUTBOX, sink, alerts.max_backoff);
        tasks.push(tokio::spawn(d.run(shutdown)));
    }
    tracing::info!(
        receivers = ?alerts.receivers.keys().collect::<Vec<_>>(),
        alerts_topic = settings.kafka.topics.alerts,
        every = ?alerts.interval,
        "alerting started"
    );
    Ok(tasks)
}

/// A token cancelled on Ctrl-C (SIGINT) or SIGTERM. The handlers are in place when this
/// returns, not when a task first runs: a signal that comes while the service is still
/// starting (Kubernetes may stop a pod at any moment) is then a graceful stop that exits 0,
/// not death by the default action.
pub fn stop_on_signal() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let cancel = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("Ctrl-C: stopping"),
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            }
            cancel.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        let cancel = token.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C: stopping");
                cancel.cancel();
            }
        });
    }
    Ok(token)
}
