//! The `tiendo` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use tiendo::config::{Language, Settings};
use tiendo::publish::{FileFormat, FileKind};
use tiendo::rules::ledger::{Ledger, Silence};
use tiendo::status::{Status, View};
use tiendo::{demo, run, store, telemetry};

#[derive(Parser)]
#[command(
    name = "tiendo",
    version,
    about = "Live, exact progress of Vietnam's provinces on Đề án 06"
)]
struct Cli {
    /// TOML configuration file; every key can also come from TIENDO_<SECTION>__<KEY>.
    #[arg(long, short, global = true, env = "TIENDO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: consume events from Kafka into Redis counters.
    Run,
    /// Replay autumn 2024 across the 63 provinces on this machine (in-process Kafka, private
    /// Redis, simulated clock): alerts as they fire, status page, and the report at the end.
    Demo {
        /// Simulated seconds per real second, at most: time waits while the pipeline counts
        /// (21600: a day every 4 s, the season in ~6 min).
        #[arg(long, default_value_t = 21_600.0)]
        speed: f64,
        /// Stop after this many real seconds (default: at 1 January 2025, or Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Stop after this many simulated days (whichever of this and --duration comes first).
        #[arg(long)]
        days: Option<f64>,
        /// Unit table of the progress line and the report.
        #[arg(long, value_enum, default_value = "63")]
        view: View,
        /// Status page, API and metrics of the demo (empty to disable).
        #[arg(long, default_value = "127.0.0.1:9464")]
        http_listen: String,
    },
    /// Publish events from CSV or JSON Lines files (for registries without a Kafka producer).
    /// Every row is validated first; a file with a bad row publishes nothing.
    Publish {
        /// What the files hold.
        #[arg(long, value_enum)]
        kind: FileKind,
        /// File format (default: from the extension, .jsonl/.ndjson/.json or CSV).
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
        /// Validate only; publish nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The task force's classification per dataset: completed, basically completed, on track,
    /// at risk (with percent and projected date, or not started); from live figures.
    Report {
        #[arg(long, value_enum, default_value = "34")]
        view: View,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// vi or en.
        #[arg(long, default_value = "vi", value_parser = parse_language)]
        lang: Language,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check the configuration and targets, and print the settings in effect (secrets
    /// redacted). Exits non-zero with the reason when something is wrong.
    Check,
    /// Hold alerts back from chat for a while (they are still recorded).
    Silence {
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// Recent alert transitions, newest first.
    Alerts {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Print current figures from Redis.
    Status {
        #[arg(long, value_enum, default_value = "34")]
        view: View,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Each upstream system's feed: last message, events and records over 24 h and 7 d,
    /// rejects by reason with recent examples, and whether it has gone quiet.
    Sources {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum SilenceAction {
    /// Silence a province's alerts (all of them, or one dataset's, or one rule's), or a
    /// source system's.
    Add {
        /// Province code, in the table of `alerts.view` (34 units by default).
        #[arg(long, required_unless_present = "source", conflicts_with = "source")]
        province: Option<String>,
        /// A source system (`sources.known`, or `other`): its `source_quiet` and
        /// `source_rejecting` alerts.
        #[arg(long, conflicts_with = "dataset")]
        source: Option<String>,
        #[arg(long)]
        dataset: Option<String>,
        /// silent, behind_pace, projected_miss, completed, online_share_low, procedures_silent,
        /// source_quiet, source_rejecting.
        #[arg(long)]
        rule: Option<String>,
        /// How long, e.g. `3d` or `12h`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long)]
        reason: String,
    },
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    Remove {
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Table,
    Markdown,
    Html,
    Json,
}

fn parse_language(s: &str) -> Result<Language, String> {
    match s {
        "vi" => Ok(Language::Vi),
        "en" => Ok(Language::En),
        other => Err(format!("language is vi or en, not {other}")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> anyhow::Result<()> {
    // Before the runtime's threads exist (see the module).
    tiendo::malloc::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(start())
}

async fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before anything else, so that a stop asked during start-up is graceful too.
    let shutdown = match cli.command {
        Command::Run | Command::Demo { .. } => run::stop_on_signal()?,
        _ => CancellationToken::new(),
    };
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init_logs(&settings.log);
    match cli.command {
        Command::Run => run::run(settings, shutdown).await,
        Command::Demo {
            speed,
            duration,
            days,
            view,
            http_listen,
        } => {
            let options = demo::DemoOptions {
                speed,
                duration: duration.map(Duration::from_secs),
                days,
                view,
                http_listen,
                verbose: true,
            };
            let summary = demo::demo(options, &settings, shutdown).await?;
            anyhow::ensure!(
                summary.exact(),
                "the counts do not match what was published"
            );
            Ok(())
        }
        Command::Status { view, format } => status(&settings, view, format).await,
        Command::Sources { format } => sources(&settings, format).await,
        Command::Publish {
            kind,
            format,
            dry_run,
            files,
        } => publish(&settings, kind, format, dry_run, &files).await,
        Command::Report {
            view,
            format,
            lang,
            output,
        } => report(&settings, view, format, lang, output).await,
        Command::Check => {
            let targets = run::load_targets(&settings)?;
            // What `run` would refuse when it starts, found without connecting.
            store::check(&settings.redis).context("redis settings")?;
            tiendo::source::check(&settings.kafka).context("kafka settings")?;
            let env = tiendo::config::env::EnvOverrides::from_env()?;
            println!("{settings:#?}");
            println!(
                "file: {}",
                cli.config
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none (defaults)".into())
            );
            println!("environment: {}", names(&env.applied));
            println!("not configuration (ignored): {}", names(&env.ignored));
            println!(
                "configuration ok: {} targets, {} receivers",
                targets.by_unit.len(),
                settings.alerts.receivers.len()
            );
            Ok(())
        }
        Command::Silence { action } => silence(&settings, action).await,
        Command::Alerts { limit, format } => alerts(&settings, limit, format).await,
    }
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(" ")
    }
}

async fn publish(
    settings: &Settings,
    kind: FileKind,
    format: Option<FileFormat>,
    dry_run: bool,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let validator = tiendo::decode::Validator::new(&settings.validation);
    let now = chrono::Utc::now();
    let mut read = Vec::new();
    for file in files {
        let format = format.unwrap_or_else(|| FileFormat::guess(file));
        let events = tiendo::publish::read(file, kind, format, &validator, now)?;
        eprintln!("{}: {} events, all valid", file.display(), events.len());
        read.push((file.display().to_string(), events));
    }
    tiendo::publish::given_twice(&read)?;
    let events: Vec<_> = read.into_iter().flat_map(|(_, e)| e).collect();
    if dry_run {
        return Ok(());
    }
    let producer = tiendo::source::producer(&settings.kafka, "publish producer")?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tiendo::publish::send(&producer, &settings.kafka.topics, &events, tty).await?;
    eprintln!(
        "published {} events to {}",
        events.len(),
        settings.kafka.brokers
    );
    Ok(())
}

async fn report(
    settings: &Settings,
    view: View,
    format: ReportFormat,
    lang: Language,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let report = tiendo::report::read(settings, view, lang, chrono::Utc::now()).await?;
    let text = match format {
        ReportFormat::Table => report.table(),
        ReportFormat::Markdown => report.markdown(),
        ReportFormat::Html => report.html(),
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    match output {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn ledger(conn: store::RedisConn, settings: &Settings) -> Ledger {
    Ledger::new(conn, &settings.redis.key_prefix)
}

async fn silence(settings: &Settings, action: SilenceAction) -> anyhow::Result<()> {
    let ledger = ledger(store::connect(&settings.redis).await?, settings);
    let now = chrono::Utc::now();
    match action {
        SilenceAction::Add {
            province,
            source,
            dataset,
            rule,
            duration,
            reason,
        } => {
            let until = now + chrono::Duration::from_std(duration)?;
            let s = match (province, source) {
                (_, Some(source)) => Silence::of_source(
                    &source,
                    &settings.sources.known,
                    rule.as_deref(),
                    until,
                    &reason,
                    now,
                )?,
                (Some(province), None) => Silence::build(
                    settings.alerts.view,
                    &province,
                    dataset.as_deref(),
                    rule.as_deref(),
                    until,
                    &reason,
                    now,
                    &settings.validation.datasets,
                )?,
                (None, None) => anyhow::bail!("--province or --source is needed"),
            };
            ledger.add_silence(&s).await?;
            println!("{} until {} ({})", s.id, vn(s.until), silenced(&s));
        }
        SilenceAction::List { format } => {
            let list = ledger.silences().await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Format::Table => {
                    for s in list {
                        println!(
                            "{}\t{}:{}\t{}\t{}\tuntil {}\t{}",
                            s.id,
                            s.scheme,
                            s.province,
                            if s.dataset.is_empty() {
                                "*"
                            } else {
                                &s.dataset
                            },
                            s.rule.map(|r| r.as_str()).unwrap_or("*"),
                            vn(s.until),
                            s.reason
                        );
                    }
                }
            }
        }
        SilenceAction::Remove { id } => {
            if !ledger.remove_silence(&id).await? {
                anyhow::bail!("no silence {id}");
            }
            println!("removed {id}");
        }
    }
    Ok(())
}

/// A time as the operator reads it: in Vietnam's, as the chat and `status` show it.
fn vn(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&tiendo::clock::vn_offset()).to_rfc3339()
}

/// What a silence holds, named: `34:56 Khánh Hòa`, or `source dat-dai`.
fn silenced(s: &Silence) -> String {
    use tiendo::provinces::{provinces, Scheme};
    let scheme = match s.scheme.as_str() {
        "34" => Scheme::Current34,
        "63" => Scheme::Legacy63,
        _ => return format!("source {}", s.province),
    };
    let name = s
        .province
        .parse()
        .ok()
        .and_then(|code| provinces().get(scheme, code))
        .map_or("", |p| p.name_vi.as_str());
    format!("{}:{} {name}", s.scheme, s.province)
}

async fn alerts(settings: &Settings, limit: usize, format: Format) -> anyhow::Result<()> {
    let ledger = ledger(store::connect(&settings.redis).await?, settings);
    let history = ledger.history(limit).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&history)?),
        Format::Table => {
            for n in history {
                println!(
                    "{}\t{}\t{}\t{}{}",
                    vn(n.at),
                    n.change.as_str(),
                    n.severity.as_str(),
                    n.alert_key,
                    if n.silenced_by.is_some() {
                        "\t(silenced)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

async fn sources(settings: &Settings, format: Format) -> anyhow::Result<()> {
    let conn = store::connect(&settings.redis).await?;
    let reader = store::Store::new(conn, &settings.redis.key_prefix, Vec::new(), 1);
    let now = chrono::Utc::now();
    let stored = reader
        .sources(now)
        .await
        .with_context(|| format!("reading sources from {}", settings.redis_display()))?;
    let s = &settings.sources;
    let views = tiendo::sources::view(&s.known, &stored, s.quiet_after, now);
    match format {
        Format::Table => print!("{}", tiendo::sources::table(&views, now)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
    }
    Ok(())
}

async fn status(settings: &Settings, view: View, format: Format) -> anyhow::Result<()> {
    let datasets = settings.validation.datasets.clone();
    let targets = run::load_targets(settings)?;
    let conn = store::connect(&settings.redis).await?;
    let reader = store::Store::new(conn, &settings.redis.key_prefix, datasets.clone(), 1);
    let snap = reader
        .snapshot(chrono::Utc::now())
        .await
        .with_context(|| format!("reading figures from {}", settings.redis_display()))?;
    let status = Status::build(&snap, &targets, &datasets, view);
    match format {
        Format::Table => print!("{}", status.table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(())
}
