//! Stage 6: delivery. One dispatcher per outbox (each chat receiver, and the Kafka alerts
//! topic) drains the digests the evaluator committed to the ledger, oldest first: under the
//! outbox's lock, part by part, recording each sent part, retrying with backoff that honours
//! 429 and Retry-After for as long as the receiver is down. A digest survives restarts
//! because it lives in Redis until it is delivered, or refused for good (then it moves to the
//! outbox's failed list, is logged and counted).

pub mod message;
pub mod receivers;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::rules::ledger::{Ledger, LedgerError};
use crate::telemetry;
pub use receivers::{SendError, Sink};

/// How long a delivery lock lasts unless extended; extended before every request, and
/// longer than the HTTP timeout, so a request never runs without the lock.
const LOCK_TTL_MS: u64 = 30_000;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

pub struct Dispatcher {
    ledger: Ledger,
    outbox: String,
    sink: Sink,
    max_backoff: Duration,
    /// How often an empty outbox is looked at again.
    poll: Duration,
    /// This replica's lock token.
    token: String,
}

impl Dispatcher {
    pub fn new(ledger: Ledger, outbox: &str, sink: Sink, max_backoff: Duration) -> Dispatcher {
        Dispatcher {
            ledger,
            outbox: outbox.to_string(),
            sink,
            max_backoff,
            poll: Duration::from_millis(500),
            token: format!("{}-{}-{}", std::process::id(), outbox, fastrand::u64(..)),
        }
    }

    pub fn with_poll(mut self, poll: Duration) -> Dispatcher {
        self.poll = poll;
        self
    }

    /// Delivers until `shutdown`, then lets go of the outbox.
    pub async fn run(self, shutdown: CancellationToken) {
        self.deliver(&shutdown).await;
        if let Err(error) = self.ledger.unlock(&self.outbox, &self.token).await {
            tracing::debug!(outbox = self.outbox, %error, "lock left to expire");
        }
    }

    async fn deliver(&self, shutdown: &CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match self.deliver_one(shutdown).await {
                Ok(true) => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Ok(false) => self.poll,
                Err(error) => {
                    tracing::warn!(outbox = self.outbox, %error, "alert ledger unreachable; retrying");
                    backoff = (backoff * 2).min(self.max_backoff);
                    backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Delivers the oldest waiting digest. `Ok(false)` when there was none, or another
    /// replica holds the outbox.
    pub async fn deliver_one(&self, shutdown: &CancellationToken) -> Result<bool, LedgerError> {
        let name = self.outbox.as_str();
        let Some(lock) = self.ledger.lock(name, &self.token, LOCK_TTL_MS).await? else {
            return Ok(false);
        };
        let Some(pending) = self.ledger.head(name).await? else {
            metrics::gauge!(telemetry::NOTIFICATIONS_PENDING, "receiver" => self.outbox.clone())
                .set(0.0);
            return Ok(false);
        };
        let id = pending.digest.id.as_str();
        let requests = self.sink.prepare(&pending.digest);
        let mut part = pending.parts_sent;
        let mut backoff = FIRST_BACKOFF;
        while part < requests.len() {
            if self
                .ledger
                .lock(name, &self.token, LOCK_TTL_MS)
                .await?
                .is_none()
            {
                return Ok(false);
            }
            match self.sink.send(&requests[part], id).await {
                Ok(()) => {
                    metrics::counter!(telemetry::NOTIFICATIONS_SENT, "receiver" => self.outbox.clone())
                        .increment(1);
                    part += 1;
                    backoff = FIRST_BACKOFF;
                    if !self.ledger.sent_parts(&lock, id, part).await? {
                        return Ok(false);
                    }
                }
                Err(SendError::Retry { after, reason }) => {
                    metrics::counter!(
                        telemetry::NOTIFICATIONS_FAILED,
                        "receiver" => self.outbox.clone(),
                        "outcome" => "retried"
                    )
                    .increment(1);
                    let wait = after.unwrap_or(backoff);
                    tracing::warn!(
                        outbox = name,
                        digest = id,
                        reason,
                        retry_in = ?wait,
                        "notification not delivered; will retry"
                    );
                    backoff = (backoff * 2).min(self.max_backoff);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(SendError::Rejected(reason)) => {
                    metrics::counter!(
                        telemetry::NOTIFICATIONS_FAILED,
                        "receiver" => self.outbox.clone(),
                        "outcome" => "rejected"
                    )
                    .increment(1);
                    tracing::error!(
                        outbox = name,
                        digest = id,
                        reason,
                        "receiver refused a notification; moved to its failed list"
                    );
                    self.ledger.failed(&lock, id, &reason).await?;
                    self.gauge_pending().await?;
                    return Ok(true);
                }
            }
        }
        self.ledger.delivered(&lock, id).await?;
        self.gauge_pending().await?;
        Ok(true)
    }

    async fn gauge_pending(&self) -> Result<(), LedgerError> {
        let n = self.ledger.pending(&self.outbox).await?;
        metrics::gauge!(telemetry::NOTIFICATIONS_PENDING, "receiver" => self.outbox.clone())
            .set(n as f64);
        Ok(())
    }
}
