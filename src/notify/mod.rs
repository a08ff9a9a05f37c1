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

use crate::rules::ledger::{Ledger, LedgerError, Lock};
use crate::telemetry;
pub use receivers::{SendError, Sink};

/// How long a delivery lock lasts unless extended; extended before every request, and
/// longer than the HTTP timeout and the alerts producer's message timeout, so a request never
/// runs without the lock.
const LOCK_TTL_MS: u64 = 30_000;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How often a lock is extended while waiting out a Retry-After.
const LOCK_RENEW: Duration = Duration::from_secs(10);

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A digest left the outbox (delivered, or refused for good).
    Delivered,
    /// Nothing to send here now: the outbox is empty or another replica holds it.
    Idle,
    /// The receiver failed; try again after this long.
    Retry(Duration),
}

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
            let wait = match self.deliver_one(backoff).await {
                Ok(Step::Delivered) => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Ok(Step::Idle) => self.poll,
                Ok(Step::Retry(wait)) => {
                    backoff = (backoff * 2).min(self.max_backoff);
                    // Keep the outbox meanwhile, so other replicas do not hammer a receiver
                    // that asked us to wait; whoever sends next re-reads what was sent.
                    self.hold(wait, shutdown).await;
                    continue;
                }
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

    /// Waits `wait`, extending the outbox lock as it goes.
    async fn hold(&self, wait: Duration, shutdown: &CancellationToken) {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(left.min(LOCK_RENEW)) => {}
            }
            if !matches!(
                self.ledger
                    .lock(&self.outbox, &self.token, LOCK_TTL_MS)
                    .await,
                Ok(Some(_))
            ) {
                return;
            }
        }
    }

    /// Sends what is left of the oldest waiting digest, reading afresh how much of it was
    /// sent (by this replica or another). Stops at the first failure: a retry starts over.
    pub async fn deliver_one(&self, backoff: Duration) -> Result<Step, LedgerError> {
        let name = self.outbox.as_str();
        let Some(lock) = self.ledger.lock(name, &self.token, LOCK_TTL_MS).await? else {
            return Ok(Step::Idle);
        };
        let Some(pending) = self.ledger.head(name).await? else {
            metrics::gauge!(telemetry::NOTIFICATIONS_PENDING, "receiver" => self.outbox.clone())
                .set(0.0);
            return Ok(Step::Idle);
        };
        let id = pending.digest.id.as_str();
        let requests = self.sink.prepare(&pending.digest);
        for (part, request) in requests.iter().enumerate().skip(pending.parts_sent) {
            // Between parts the lock must have stayed ours all along; if it lapsed, start over
            // from what the ledger says was sent.
            if part > pending.parts_sent {
                let kept = self.ledger.lock(name, &self.token, LOCK_TTL_MS).await?;
                if kept.is_none_or(|l| l.fresh) {
                    return Ok(Step::Idle);
                }
            }
            match self.sink.send(request, id).await {
                Ok(()) => {
                    metrics::counter!(telemetry::NOTIFICATIONS_SENT, "receiver" => self.outbox.clone())
                        .increment(1);
                    if !self.record_sent(&lock, id, part + 1).await? {
                        return Ok(Step::Idle);
                    }
                }
                Err(SendError::Retry { after, reason }) => {
                    metrics::counter!(
                        telemetry::NOTIFICATIONS_FAILED,
                        "receiver" => self.outbox.clone(),
                        "outcome" => "retried"
                    )
                    .increment(1);
                    let wait = after.unwrap_or(backoff).max(FIRST_BACKOFF);
                    tracing::warn!(
                        outbox = name,
                        digest = id,
                        reason,
                        retry_in = ?wait,
                        "notification not delivered; will retry"
                    );
                    return Ok(Step::Retry(wait));
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
                    return Ok(Step::Delivered);
                }
            }
        }
        self.ledger.delivered(&lock, id).await?;
        self.gauge_pending().await?;
        Ok(Step::Delivered)
    }

    /// Records a sent part, retrying a failed write a few times first: giving up here would
    /// resend a part the receiver already has.
    async fn record_sent(&self, lock: &Lock, id: &str, parts: usize) -> Result<bool, LedgerError> {
        let mut attempt = 0;
        loop {
            match self.ledger.sent_parts(lock, id, parts).await {
                Ok(ok) => return Ok(ok),
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(outbox = self.outbox, %error, "cannot record a sent part; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn gauge_pending(&self) -> Result<(), LedgerError> {
        let n = self.ledger.pending(&self.outbox).await?;
        metrics::gauge!(telemetry::NOTIFICATIONS_PENDING, "receiver" => self.outbox.clone())
            .set(n as f64);
        Ok(())
    }
}
