//! The `tiendo` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use tiendo::config::Settings;
use tiendo::status::{Status, View};
use tiendo::{demo, run, store, targets::Targets, telemetry};

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
    /// Run everything on this machine (in-process Kafka, private Redis, generated events).
    Demo {
        /// Events published per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Unit table to show.
        #[arg(long, value_enum, default_value = "34")]
        view: View,
        /// Prometheus endpoint of the demo (empty to disable).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics_listen: String,
    },
    /// Print current figures from Redis.
    Status {
        #[arg(long, value_enum, default_value = "34")]
        view: View,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init_logs(&settings.log);
    match cli.command {
        Command::Run => run::run(settings).await,
        Command::Demo {
            rate,
            duration,
            view,
            metrics_listen,
        } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(run::cancel_on_signal(shutdown.clone()));
            let options = demo::DemoOptions {
                rate,
                duration: duration.map(Duration::from_secs),
                view,
                metrics_listen,
            };
            demo::demo(options, shutdown).await
        }
        Command::Status { view, format } => status(&settings, view, format).await,
    }
}

async fn status(settings: &Settings, view: View, format: Format) -> anyhow::Result<()> {
    let datasets = settings.validation.datasets.clone();
    let targets = match &settings.targets.file {
        Some(path) => Targets::load(path, &datasets)?,
        None => Targets::default(),
    };
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
