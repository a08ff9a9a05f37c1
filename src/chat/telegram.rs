//! Telegram commands by long polling `getUpdates`: no public endpoint needed.
//!
//! One replica polls at a time, under a lock in Redis like the outboxes' (Telegram itself
//! refuses two concurrent pollers of one bot). The next update id to ask for lives in Redis.
//! Each update is answered by one ledger step that moves that offset past it, queues the reply
//! in the bot's reply outbox and makes the silence change the command asked for: a crash
//! before the step leaves the update unconfirmed, so Telegram hands it out again and it is
//! answered then; a crash after it leaves the reply queued for the dispatcher. No update is
//! lost or handled twice, across restarts and failovers. Only a crash while a reply is on its
//! way to Telegram, which takes no idempotency key, may send that one reply again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{Asker, Conversation, Via};
use crate::config::ReceiverSettings;
use crate::notify::message::Markup;
use crate::rules::ledger::{
    Answered, AnsweredBy, Digest, Kind, Ledger, LedgerError, Lock, PollOffset, Recipient,
};
use crate::telemetry;

/// A message older than this when first read is not answered: it waited while tiendo was down,
/// or in the backlog of a bot just set up (Telegram keeps 24 hours), and an answer now, with
/// today's figures or a silence set hours late, would come out of context.
pub const STALE_AFTER_SECONDS: i64 = 600;

/// Whether a message written at `date` is too old to answer at `now` (0: date unknown).
fn stale(date: i64, now: i64) -> bool {
    date > 0 && now - date > STALE_AFTER_SECONDS
}

/// How long a stored offset is worth asking with. Telegram keeps an update 24 hours, and after
/// a week without any it numbers the next one afresh, possibly below the stored offset: asked
/// with that offset, Telegram would take every new update as confirmed, and the bot would hear
/// nothing for good. Past this, nothing the offset stands for is still held, so tiendo asks
/// without it.
const OFFSET_KEPT_SECONDS: i64 = 24 * 3600;

/// Whether `stored` still says where `bot` stands at `now`: not over a day old, and not of
/// another bot (a token changed to a new bot, which numbers its own updates). One an older
/// version wrote, without a time, may be any age: not asked with either. Ids read afresh are
/// checked against those answered in the last day instead (see the ANSWERED script).
fn offset_holds(stored: &PollOffset, bot: i64, now: i64) -> bool {
    stored.bot.is_none_or(|b| b == bot)
        && stored
            .moved_at
            .is_some_and(|t| now - t < OFFSET_KEPT_SECONDS)
}

/// Who the bot is (`getMe`).
#[derive(Debug, Clone, Deserialize)]
pub struct Me {
    pub id: i64,
    pub username: Option<String>,
}

/// The outbox replies of the bot of receiver `name` wait in; delivered like digests.
pub fn reply_outbox(name: &str) -> String {
    format!("replies:{name}")
}

#[derive(Debug, Deserialize)]
struct Response<T> {
    ok: bool,
    result: Option<T>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Update {
    pub update_id: i64,
    pub message: Option<Message>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub message_id: i64,
    /// When it was written (unix seconds; 0 if not said).
    #[serde(default)]
    pub date: i64,
    pub from: Option<User>,
    pub chat: Chat,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct User {
    pub id: i64,
    #[serde(default)]
    pub first_name: String,
    pub username: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Chat {
    pub id: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("getUpdates failed: {0}")]
    Telegram(String),
}

/// Reads the bot's updates and answers them, on whichever replica holds the poll lock.
pub struct Poller {
    ledger: Ledger,
    conversation: Arc<Conversation>,
    /// The receiver whose bot this is.
    name: String,
    /// `…/bot<token>`: never logged.
    api: String,
    client: reqwest::Client,
    timeout: Duration,
    language: crate::config::Language,
    token: String,
    /// Whether asking without the stored offset was logged (once, not every poll).
    told_afresh: AtomicBool,
}

impl Poller {
    pub fn new(
        ledger: Ledger,
        conversation: Arc<Conversation>,
        name: &str,
        receiver: &ReceiverSettings,
    ) -> Poller {
        let settings = conversation.settings();
        let timeout = settings.commands.poll_timeout;
        Poller {
            ledger,
            name: name.to_string(),
            api: crate::notify::receivers::telegram_bot(receiver),
            client: reqwest::Client::builder()
                .timeout(timeout + Duration::from_secs(10))
                .user_agent(concat!("tiendo/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("a TLS backend is compiled in"),
            timeout,
            language: receiver.language.unwrap_or(settings.alerts.language),
            token: format!("{}-poll-{}", std::process::id(), fastrand::u64(..)),
            told_afresh: AtomicBool::new(false),
            conversation,
        }
    }

    fn lock_name(&self) -> String {
        format!("poll:{}", self.name)
    }

    /// The lock outlives one long poll; each answer extends it. A crashed poller's lock
    /// lapses after this long and another replica takes over.
    fn lock_ttl_ms(&self) -> u64 {
        (self.timeout * 2 + Duration::from_secs(5)).as_millis() as u64
    }

    /// Polls until `shutdown`, then lets go of the lock.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(bot) = self.me(&shutdown).await else {
            return;
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let wait = match self.poll_once(&bot, &shutdown).await {
                Ok(true) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                // Another replica polls: stand by.
                Ok(false) => Duration::from_secs(2),
                Err(error) => {
                    metrics::counter!(telemetry::CHAT_POLLS, "outcome" => "error").increment(1);
                    tracing::warn!(receiver = self.name, %error, "chat commands: polling failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(error) = self.ledger.unlock(&self.lock_name(), &self.token).await {
            tracing::debug!(%error, "poll lock left to expire");
        }
    }

    /// The bot, asked until Telegram answers (`None`: shut down first). Its username tells
    /// commands addressed to other bots in a group, which must be left alone; its id which
    /// bot a stored offset belongs to. Polling without them would answer other bots' commands.
    async fn me(&self, shutdown: &CancellationToken) -> Option<Me> {
        let mut backoff = Duration::from_secs(1);
        loop {
            let asked = async {
                let r = self
                    .client
                    .get(format!("{}/getMe", self.api))
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                let status = r.status();
                let body: Response<Me> = r
                    .json()
                    .await
                    .map_err(|e| format!("HTTP {status}: {}", e.without_url()))?;
                body.result.ok_or_else(|| {
                    format!("HTTP {status}: {}", body.description.unwrap_or_default())
                })
            };
            match asked.await {
                Ok(me) => return Some(me),
                Err(error) => tracing::warn!(
                    receiver = self.name,
                    error,
                    retry_in = ?backoff,
                    "chat commands: the bot could not be named (getMe); not polling yet"
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    /// One long poll and the answers to what it brought, if this replica holds the lock.
    /// `Ok(false)`: another replica does.
    pub async fn poll_once(
        &self,
        bot: &Me,
        shutdown: &CancellationToken,
    ) -> Result<bool, PollError> {
        let Some(lock) = self
            .ledger
            .lock(&self.lock_name(), &self.token, self.lock_ttl_ms())
            .await?
        else {
            return Ok(false);
        };
        let stored = self.ledger.poll_offset(&self.name).await?;
        let now = chrono::Utc::now().timestamp();
        let afresh = !offset_holds(&stored, bot.id, now);
        if afresh && stored.next > 0 && !self.told_afresh.swap(true, Ordering::Relaxed) {
            tracing::info!(
                receiver = self.name,
                stored = stored.next,
                "chat commands: the stored update offset is over a day old or another bot's; asking without it"
            );
        }
        let offset = if afresh { 0 } else { stored.next };
        let by = AnsweredBy {
            bot: bot.id,
            at: now,
            afresh,
            lock_ttl_ms: self.lock_ttl_ms(),
        };
        let request = self
            .client
            .post(format!("{}/getUpdates", self.api))
            .json(&serde_json::json!({
                "offset": offset,
                "timeout": self.timeout.as_secs(),
                "allowed_updates": ["message"],
            }))
            .send();
        let response = tokio::select! {
            _ = shutdown.cancelled() => return Ok(true),
            r = request => r.map_err(|e| PollError::Telegram(e.without_url().to_string()))?,
        };
        let status = response.status();
        let body: Response<Vec<Update>> = response
            .json()
            .await
            .map_err(|e| PollError::Telegram(format!("HTTP {status}: {}", e.without_url())))?;
        let updates = match (body.ok, body.result) {
            (true, Some(u)) => u,
            _ => {
                return Err(PollError::Telegram(format!(
                    "HTTP {status}: {}",
                    body.description.unwrap_or_default()
                )))
            }
        };
        metrics::counter!(telemetry::CHAT_POLLS, "outcome" => "ok").increment(1);
        for update in updates {
            if update.update_id < offset {
                continue;
            }
            if !self.answer(&lock, &update, bot, &by).await? {
                break;
            }
        }
        Ok(true)
    }

    /// Answers one update and records it; `false` if the lock was lost meanwhile.
    async fn answer(
        &self,
        lock: &Lock,
        update: &Update,
        bot: &Me,
        by: &AnsweredBy,
    ) -> Result<bool, PollError> {
        let next = update.update_id + 1;
        let asked = update.message.as_ref().and_then(|m| {
            let text = m.text.as_deref()?;
            let from = m.from.as_ref()?;
            Some((m, text, from))
        });
        let answer = match asked {
            None => None,
            Some((m, _, _)) if stale(m.date, chrono::Utc::now().timestamp()) => {
                super::count(Via::Telegram, "any", super::Outcome::Stale);
                tracing::info!(
                    update = update.update_id,
                    written = m.date,
                    "chat message too old to answer: skipped"
                );
                None
            }
            Some((m, text, from)) => {
                let asker = Asker {
                    via: Via::Telegram,
                    chat: m.chat.id.to_string(),
                    user: from.id.to_string(),
                    name: from
                        .username
                        .clone()
                        .map(|u| format!("@{u}"))
                        .unwrap_or_else(|| from.first_name.clone()),
                };
                self.conversation
                    .answer(
                        text,
                        &asker,
                        bot.username.as_deref(),
                        self.language,
                        Markup::TelegramHtml,
                    )
                    .await?
                    .map(|a| (a, m.chat.id, m.message_id))
            }
        };
        let outbox = reply_outbox(&self.name);
        let reply = answer.as_ref().map(|(a, chat, message)| Digest {
            id: format!("{}-u{}", self.name, update.update_id),
            at: chrono::Utc::now(),
            kind: Kind::Reply,
            texts: a.texts.clone(),
            to: Some(Recipient {
                chat_id: chat.to_string(),
                reply_to: Some(*message),
            }),
            ..Digest::default()
        });
        let change = answer.as_ref().and_then(|(a, _, _)| a.change.as_ref());
        let recorded = self
            .ledger
            .answered(
                lock,
                &self.name,
                next,
                reply.as_ref().map(|d| (outbox.as_str(), d)),
                change,
                by,
            )
            .await?;
        Ok(recorded != Answered::LockLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_holds_for_a_day_and_for_its_own_bot() {
        let now = 1_800_000_000;
        let at = |moved_at, bot| PollOffset {
            next: 1001,
            moved_at,
            bot,
        };
        assert!(offset_holds(&at(Some(now - 60), Some(7)), 7, now));
        // Written by a version that kept neither: of any age.
        assert!(!offset_holds(&at(None, None), 7, now));
        assert!(!offset_holds(
            &at(Some(now - OFFSET_KEPT_SECONDS), Some(7)),
            7,
            now
        ));
        // The token now names another bot, which numbers its own updates.
        assert!(!offset_holds(&at(Some(now - 60), Some(8)), 7, now));
    }
}
