//! `tiendo run`: the service. Wires settings, telemetry and the pipeline, and turns SIGTERM or
//! Ctrl-C into a graceful stop (the batch in hand is stored, then the group is left).

use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Settings;
use crate::pipeline::Pipeline;
use crate::telemetry;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::install_prometheus(&settings.metrics.listen)?;
    tracing::info!(
        brokers = settings.kafka.brokers,
        redis = settings.redis_display(),
        group = settings.kafka.group_id,
        "tiendo starting"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let clock: SharedClock = std::sync::Arc::new(SystemClock);
    let pipeline = Pipeline::new(&settings, clock).await?;
    pipeline.run(shutdown).await;
    Ok(())
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: stopping"),
        _ = term => tracing::info!("SIGTERM: stopping"),
        _ = token.cancelled() => {}
    }
    token.cancel();
}
