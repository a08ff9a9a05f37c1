//! Stage 6: delivery. One dispatcher per outbox (each chat receiver, and the Kafka alerts
//! topic) drains the digests the evaluator committed to the ledger, oldest first: under the
//! outbox's lock, part by part, recording each sent part, retrying with backoff that honours
//! 429 and Retry-After for as long as the receiver is down. A digest survives restarts
//! because it lives in Redis until it is delivered, or refused for good (then it moves to the
//! outbox's failed list, is logged and counted). A chat outbox's backlog (a receiver down for
//! a while) goes as one digest, not a flood: see [`backlog`].

pub mod backlog;
pub mod message;
pub mod receivers;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::rules::ledger::{Digest, Ledger, LedgerError, Lock, Pending};
use crate::telemetry;
pub use receivers::{SendError, Sink};

/// How long a delivery lock lasts unless extended; extended before every request, and
/// longer than the HTTP timeout and the alerts producer's message timeout, so a request never
/// runs without the lock.
const LOCK_TTL_MS: u64 = 30_000;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How often a lock is extended while waiting out a Retry-After.
const LOCK_RENEW: Duration = Duration::from_secs(10);
/// How long a digest this version cannot read is left to a replica that can (a newer one, in
/// a rolling update) before it is set aside: after a rollback, no replica ever will.
const UNREADABLE_GRACE: Duration = Duration::from_secs(600);
/// How often a replica looks at such a digest again meanwhile, having let go of the outbox.
const UNREADABLE_RECHECK: Duration = Duration::from_secs(10);

/// What one delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A digest left the outbox (delivered, or refused for good).
    Delivered,
    /// Nothing to send here now: the outbox is empty or another replica holds it.
    Idle,
    /// The receiver failed; try again after this long.
    Retry(Duration),
    /// The outbox was let go for another replica to take; look again after this long.
    Pause(Duration),
}

/// What merging a backlog came to.
enum Merged {
    /// Fewer than two digests to merge: send the head as it is.
    Nothing,
    /// The new head.
    Into(Box<Pending>),
    /// The lock was lost or the head moved meanwhile: look again.
    Refused,
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
    unreadable_grace: Duration,
    /// The unreadable digest at the head, and when this replica first met it.
    unreadable: std::sync::Mutex<Option<(String, tokio::time::Instant)>>,
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
            unreadable_grace: UNREADABLE_GRACE,
            unreadable: std::sync::Mutex::new(None),
        }
    }

    pub fn with_unreadable_grace(mut self, grace: Duration) -> Dispatcher {
        self.unreadable_grace = grace;
        self
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
                Ok(Step::Pause(wait)) => wait,
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
            // Another replica sends; this one still says how many wait, so that every
            // replica's gauge is the outbox's length, not what it last saw when it sent.
            self.gauge_pending().await?;
            return Ok(Step::Idle);
        };
        let mut pending = match self.ledger.head(name).await {
            Ok(Some(pending)) => pending,
            Ok(None) => {
                metrics::gauge!(telemetry::NOTIFICATIONS_PENDING, "receiver" => self.outbox.clone())
                    .set(0.0);
                return Ok(Step::Idle);
            }
            Err(LedgerError::Unreadable { id, error }) => {
                return self.unreadable(&lock, &id, &error).await;
            }
            Err(error) => return Err(error),
        };
        metrics::gauge!(telemetry::NOTIFICATIONS_PENDING, "receiver" => self.outbox.clone())
            .set(pending.queued as f64);
        if let Some(wait) = pending.wait {
            return Ok(Step::Pause(wait));
        }
        if pending.parts_sent == 0 && self.sink.merges_backlog() {
            match self.merge_backlog(&lock).await? {
                Merged::Nothing => {}
                Merged::Into(head) => pending = *head,
                Merged::Refused => return Ok(Step::Idle),
            }
        }
        let id = pending.digest.id.as_str();
        if pending.digest.tells_nothing() {
            // Only alerts a silence resolved, kept for a merge that did not come.
            self.ledger.delivered(&lock, id).await?;
            self.gauge_pending().await?;
            return Ok(Step::Delivered);
        }
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
                    let why = "notification not delivered; will retry";
                    return Ok(self.retry(name, id, after, backoff, &reason, why).await);
                }
                // The receiver's own chat refusing everything: held, not set aside, as every
                // message would be refused until someone mends the token, URL and chat; then
                // the backlog goes out, merged.
                Err(SendError::Refused(reason)) if pending.digest.to.is_none() => {
                    let why =
                        "receiver refuses every message: check its token, URL and chat; will retry";
                    return Ok(self.retry(name, id, None, backoff, &reason, why).await);
                }
                // A message refused for good, or a reply to a chat that will not take it (one
                // that blocked the bot, or is gone): nothing after it should wait behind it.
                Err(SendError::Refused(reason) | SendError::Rejected(reason)) => {
                    tracing::error!(
                        outbox = name,
                        digest = id,
                        reason,
                        "receiver refused a notification; moved to its failed list"
                    );
                    return self.set_aside(&lock, id, "rejected", &reason).await;
                }
            }
        }
        self.ledger.delivered(&lock, id).await?;
        self.gauge_pending().await?;
        Ok(Step::Delivered)
    }

    /// Holds the head digest `id` for `after` (the receiver's Retry-After, kept in Redis for
    /// every replica) or else `backoff`, counted as `retried`, logged with `why`.
    async fn retry(
        &self,
        name: &str,
        id: &str,
        after: Option<Duration>,
        backoff: Duration,
        reason: &str,
        why: &str,
    ) -> Step {
        metrics::counter!(
            telemetry::NOTIFICATIONS_FAILED,
            "receiver" => self.outbox.clone(),
            "outcome" => "retried"
        )
        .increment(1);
        let wait = after.unwrap_or(backoff).max(FIRST_BACKOFF);
        if after.is_some() {
            // If Redis cannot keep it, this replica still waits.
            if let Err(error) = self.ledger.wait_outbox(name, wait).await {
                tracing::warn!(outbox = name, %error, "receiver's wait not kept in Redis");
            }
        }
        tracing::warn!(outbox = name, digest = id, reason, retry_in = ?wait, "{why}");
        Step::Retry(wait)
    }

    /// Moves the head digest `id` to the outbox's failed list, counted by `outcome`.
    async fn set_aside(
        &self,
        lock: &Lock,
        id: &str,
        outcome: &'static str,
        reason: &str,
    ) -> Result<Step, LedgerError> {
        if !self.ledger.failed(lock, id, reason).await? {
            return Ok(Step::Idle); // the lock lapsed: whoever holds it now decides
        }
        metrics::counter!(
            telemetry::NOTIFICATIONS_FAILED,
            "receiver" => self.outbox.clone(),
            "outcome" => outcome
        )
        .increment(1);
        self.gauge_pending().await?;
        Ok(Step::Delivered)
    }

    /// A head this version cannot read: left to other replicas (a newer one can) for
    /// `unreadable_grace`, then set aside rather than block every digest behind it.
    async fn unreadable(
        &self,
        lock: &Lock,
        id: &str,
        error: &serde_json::Error,
    ) -> Result<Step, LedgerError> {
        let first_met = {
            let mut met = self.unreadable.lock().expect("unreadable");
            match &*met {
                Some((head, at)) if head == id => *at,
                _ => {
                    tracing::warn!(
                        outbox = self.outbox,
                        digest = id,
                        %error,
                        "a digest this version cannot read; left to a newer replica for now"
                    );
                    let now = tokio::time::Instant::now();
                    *met = Some((id.to_string(), now));
                    now
                }
            }
        };
        if first_met.elapsed() < self.unreadable_grace {
            self.ledger.unlock(&self.outbox, &self.token).await?;
            return Ok(Step::Pause(UNREADABLE_RECHECK.min(self.unreadable_grace)));
        }
        tracing::error!(
            outbox = self.outbox,
            digest = id,
            %error,
            "a digest this version cannot read; moved to its failed list"
        );
        let reason = format!("unreadable by this version: {error}");
        self.set_aside(lock, id, "unreadable", &reason).await
    }

    /// Merges the digests waiting at the head of a chat outbox into one (see [`backlog`]).
    async fn merge_backlog(&self, lock: &Lock) -> Result<Merged, LedgerError> {
        let raws = self
            .ledger
            .waiting(&self.outbox, backlog::MAX_MERGED)
            .await?;
        // A digest that does not read stops the run; it fails on its own when its turn comes.
        let digests: Vec<Digest> = raws
            .iter()
            .map_while(|r| serde_json::from_str(r).ok())
            .collect();
        let Some((n, merged)) = backlog::merge(&digests) else {
            return Ok(Merged::Nothing);
        };
        if !self.ledger.merge_head(lock, &raws[..n], &merged).await? {
            return Ok(Merged::Refused);
        }
        metrics::counter!(telemetry::NOTIFICATIONS_MERGED, "receiver" => self.outbox.clone())
            .increment(n as u64 - 1);
        tracing::info!(
            outbox = self.outbox,
            digests = n,
            notices = merged.notices.len(),
            "a backlog of digests merged into one"
        );
        self.gauge_pending().await?;
        Ok(Merged::Into(Box::new(Pending {
            digest: merged,
            parts_sent: 0,
            wait: None,
            queued: 1,
        })))
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
