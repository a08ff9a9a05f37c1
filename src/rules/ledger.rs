//! The alert ledger in Redis: every alert's state, a generation number, one outbox per
//! receiver, the history of transitions and the silences. All keys share the hash tag
//! `{alerts}`, so the few scripts below touch one slot, on Redis Cluster too.
//!
//! Exactly-once notification across replicas rests on two things. An evaluation commits its
//! new states *and* the digests it wants sent in one script, which refuses if the generation
//! moved since the states were read: of two replicas evaluating at once, one commits and the
//! other re-reads and finds nothing left to announce. Delivery then drains each outbox under
//! a per-receiver lock, recording which parts of a digest went out, so a retry or a second
//! replica does not send them again. The one gap left is a crash between a receiver accepting
//! a part and the ledger recording it; that part is sent again after the restart (receivers
//! that can deduplicate get a stable id: the digest id).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::state::{AlertState, Change};
use super::{Facts, Rule, Severity, Subject};
use crate::store::{Keys, RedisConn, StoreError};

/// Transitions kept in the history list.
const HISTORY: usize = 10_000;

/// One announced transition of one alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Unique id of this transition: `<alert key>@<unix ms>`.
    pub id: String,
    pub alert_key: String,
    pub rule: Rule,
    pub severity: Severity,
    pub change: Change,
    pub subject: Subject,
    pub facts: Facts,
    pub at: DateTime<Utc>,
    /// The silence that held it back from chat, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
}

/// What one receiver is sent in one go: an evaluation's notices, or text rendered ahead (a
/// scheduled report, a reply to a chat command).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// Stable across retries and replicas; webhooks may deduplicate on it.
    pub id: String,
    pub at: DateTime<Utc>,
    /// A backlog merged into one digest (see [`crate::notify::backlog`]): its first digest's
    /// time; `at` is its last's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    pub notices: Vec<Notice>,
    /// Alerts a silenced notice resolved in this evaluation (chat digests only). Chat is not
    /// told, but a merged backlog must not go on showing them as firing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_silently: Vec<String>,
    /// Chat shows this instead of a line per notice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    #[serde(default, skip_serializing_if = "Kind::is_changes")]
    pub kind: Kind,
    /// Messages already rendered for this receiver's markup; sent as they are, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<String>,
    /// Another chat than the receiver's (a reply), and the message replied to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Recipient>,
    /// A file sent after the texts (Telegram `sendDocument`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<Document>,
}

/// What a digest carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An evaluation's transitions.
    #[default]
    Changes,
    /// The alerts firing now, as `/canhbao` lists them.
    Firing,
    /// A scheduled report.
    Report,
    /// The answer to a chat command.
    Reply,
}

impl Digest {
    /// An evaluation's plain changes: not a summary (its tallies hold at its own time), not
    /// text rendered ahead (a report, a reply).
    pub fn plain_changes(&self) -> bool {
        self.kind == Kind::Changes
            && self.summary.is_none()
            && self.texts.is_empty()
            && self.document.is_none()
            && self.to.is_none()
    }

    /// Changes with nothing to show: only alerts resolved under a silence (queued only behind
    /// another digest), or a merged backlog whose alerts all were. Taken off unsent.
    pub fn tells_nothing(&self) -> bool {
        self.plain_changes() && self.notices.is_empty()
    }
}

impl Kind {
    fn is_changes(&self) -> bool {
        *self == Kind::Changes
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub chat_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub file_name: String,
    pub caption: String,
    /// The file's text (an HTML report).
    pub content: String,
}

/// Why a digest is a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Occasion {
    /// The first evaluation of this deployment (or since Redis lost the ledger).
    Started,
    /// The first evaluation after the figures were catching up.
    Resumed,
}

/// How many alerts of one rule, dataset and severity are active.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tally {
    pub rule: Rule,
    /// Empty for procedure rules.
    pub dataset: String,
    pub severity: Severity,
    pub count: usize,
}

/// The picture as a whole, for the moments when a line per notice would flood the chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub occasion: Occasion,
    /// Provinces with at least one alert firing.
    pub provinces: usize,
    /// Alerts firing after this evaluation, most severe first; targets reached as
    /// `completed`.
    pub tallies: Vec<Tally>,
}

/// A rule held back from chat for a while. Empty `dataset` or `rule` match any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// "34" or "63", and the province code in that table; or "src" and a source system.
    pub scheme: String,
    pub province: String,
    #[serde(default)]
    pub dataset: String,
    #[serde(default)]
    pub rule: Option<Rule>,
    pub until: DateTime<Utc>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// Why a silence cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error("unknown province {0} in the {1}-unit table")]
    Province(String, &'static str),
    #[error("unknown dataset {0}")]
    Dataset(String),
    #[error("unknown rule {0}; rules are {1}")]
    Rule(String, String),
    #[error("a silence must end in the future")]
    Past,
    #[error("unknown source {0}; sources are those of sources.known, and `other`")]
    Source(String),
    #[error("rule {0} is no source rule; those are source_quiet and source_rejecting")]
    NotSourceRule(String),
    #[error("rule {0} judges a province's procedures, not a dataset: name no dataset")]
    NoDataset(String),
}

impl Silence {
    /// A silence of `province` (a code in `view`'s table, or in the 34-unit view a code of
    /// the 63 units, as upstream still sends them, meaning the unit it is now part of),
    /// checked against what exists.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        view: crate::provinces::View,
        province: &str,
        dataset: Option<&str>,
        rule: Option<&str>,
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
        datasets: &[String],
    ) -> Result<Silence, SilenceError> {
        use crate::provinces::{provinces, Scheme, Unit, View};
        let tag = view.tag();
        let code = format!("{province:0>2}");
        let unit = provinces()
            .resolve(view.scheme(), &code)
            .or_else(|| match view {
                View::Current34 => provinces().resolve(Scheme::Legacy63, &code).map(|u| Unit {
                    scheme: Scheme::Current34,
                    code: u.current_code(),
                }),
                View::Legacy63 => None,
            })
            .ok_or_else(|| SilenceError::Province(province.to_string(), tag))?;
        let dataset = dataset.unwrap_or_default();
        if !dataset.is_empty() && !datasets.iter().any(|d| d == dataset) {
            return Err(SilenceError::Dataset(dataset.to_string()));
        }
        let rule = match rule {
            None => None,
            Some(r) => Some(
                Rule::parse(r)
                    .filter(|r| r.route() == super::Route::Taskforce)
                    .ok_or_else(|| {
                        let all: Vec<&str> = Rule::ALL
                            .iter()
                            .filter(|r| r.route() == super::Route::Taskforce)
                            .map(|r| r.as_str())
                            .collect();
                        SilenceError::Rule(r.to_string(), all.join(", "))
                    })?,
            ),
        };
        // Procedure alerts carry no dataset: a silence naming one would never hold.
        if let Some(r) = rule.filter(|r| !r.per_dataset() && !dataset.is_empty()) {
            return Err(SilenceError::NoDataset(r.as_str().to_string()));
        }
        if until <= now {
            return Err(SilenceError::Past);
        }
        Ok(Silence {
            id: format!("s{}-{:04x}", now.timestamp(), fastrand::u16(..)),
            scheme: tag.to_string(),
            province: format!("{:02}", unit.code),
            dataset: dataset.to_string(),
            rule,
            until,
            reason: reason.to_string(),
            created_at: now,
        })
    }

    /// A silence of a source system's alerts (`known` names, or `other`).
    pub fn of_source(
        source: &str,
        known: &[String],
        rule: Option<&str>,
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Silence, SilenceError> {
        if source != crate::sources::OTHER && !known.iter().any(|k| k == source) {
            return Err(SilenceError::Source(source.to_string()));
        }
        let rule = match rule {
            None => None,
            Some(r) => match Rule::parse(r) {
                Some(rule) if rule.route() == super::Route::Ops => Some(rule),
                _ => return Err(SilenceError::NotSourceRule(r.to_string())),
            },
        };
        if until <= now {
            return Err(SilenceError::Past);
        }
        Ok(Silence {
            id: format!("s{}-{:04x}", now.timestamp(), fastrand::u16(..)),
            scheme: super::SOURCE_SCHEME.to_string(),
            province: source.to_string(),
            dataset: String::new(),
            rule,
            until,
            reason: reason.to_string(),
            created_at: now,
        })
    }

    pub fn matches(&self, n: &Notice, now: DateTime<Utc>) -> bool {
        self.covers(
            &n.subject.scheme,
            &n.subject.code,
            &n.subject.dataset,
            n.rule,
            now,
        )
    }

    /// Whether this silence holds back `rule` on that subject at `now`.
    pub fn covers(
        &self,
        scheme: &str,
        code: &str,
        dataset: &str,
        rule: Rule,
        now: DateTime<Utc>,
    ) -> bool {
        now < self.until
            && self.scheme == scheme
            && self.province == code
            && (self.dataset.is_empty() || self.dataset == dataset)
            && self.rule.is_none_or(|r| r == rule)
    }
}

/// The states as read, with the generation to commit against.
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub generation: i64,
    pub states: BTreeMap<String, AlertState>,
    pub silences: Vec<Silence>,
    /// An evaluation has committed in this ledger (the deployment has started).
    pub started: bool,
    /// Since when evaluations are held because the figures are catching up.
    pub held_since: Option<DateTime<Utc>>,
    /// The whole `meta` hash.
    pub meta: BTreeMap<String, String>,
}

/// Fields of the ledger's `meta` hash.
pub const STARTED: &str = "started";
pub const HELD: &str = "held";

/// An evaluation's outcome, ready to commit.
#[derive(Debug, Default)]
pub struct Commit {
    /// New state by alert key; `None` deletes.
    pub states: BTreeMap<String, Option<AlertState>>,
    pub notices: Vec<Notice>,
    /// Digests by outbox name.
    pub digests: Vec<(String, Digest)>,
    /// Fields of the `meta` hash to set (`Some`) or delete (`None`).
    pub meta: Vec<(&'static str, Option<String>)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.notices.is_empty() && self.meta.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ledger entry is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A digest at the head of an outbox that this version cannot read: written by a newer
    /// one, before a rollback.
    #[error("digest {id} cannot be read by this version: {error}")]
    Unreadable {
        id: String,
        error: serde_json::Error,
    },
}

impl From<redis::RedisError> for LedgerError {
    fn from(e: redis::RedisError) -> Self {
        LedgerError::Store(e.into())
    }
}

/// What a commit requires of the ledger as it finds it.
enum Guard<'a> {
    /// Nobody committed since this generation was read.
    Generation(i64),
    /// A field of `meta` still holds this (`None`: absent).
    Meta(&'a str, Option<&'a str>),
}

/// A held delivery lock.
#[derive(Debug, Clone)]
pub struct Lock {
    pub outbox: String,
    token: String,
    /// Taken now rather than extended: someone else may have held it since we last did, so
    /// what we knew of the outbox is stale.
    pub fresh: bool,
}

/// The head of an outbox: a digest and how many of its parts were already sent.
#[derive(Debug, Clone)]
pub struct Pending {
    pub digest: Digest,
    pub parts_sent: usize,
    /// What is left of the wait the receiver asked for (its Retry-After), kept for every
    /// replica and across restarts: see [`Ledger::wait_outbox`].
    pub wait: Option<std::time::Duration>,
    /// Digests waiting in the outbox, this one included.
    pub queued: u64,
}

#[derive(Clone)]
pub struct Ledger {
    conn: RedisConn,
    keys: Keys,
}

const COMMIT: &str = r"
-- KEYS: generation, states, history, meta, outbox...
-- ARGV: expected generation, or '' to require instead that meta field ARGV[2] still holds
--       ARGV[3] ('' for absent); #states, (field, json or '' to delete)..., #notices,
--       notice..., history length, #meta, (field, value or '' to delete)..., then one
--       digest (or '') per outbox; a digest marked '?' is queued only behind another
if ARGV[1] ~= '' then
  if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return -1 end
elseif (redis.call('HGET', KEYS[4], ARGV[2]) or '') ~= ARGV[3] then return -1 end
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[2], ARGV[i])
  else redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('LPUSH', KEYS[3], ARGV[i]); i = i + 1 end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[i]) - 1); i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  if ARGV[i + 2] == '' then redis.call('HDEL', KEYS[4], ARGV[i + 1])
  else redis.call('HSET', KEYS[4], ARGV[i + 1], ARGV[i + 2]) end
  i = i + 2
end
i = i + 1
for k = 5, #KEYS do
  local digest = ARGV[i]
  if string.sub(digest, 1, 1) == '?' then
    if redis.call('LLEN', KEYS[k]) > 0 then redis.call('RPUSH', KEYS[k], string.sub(digest, 2)) end
  elseif digest ~= '' then redis.call('RPUSH', KEYS[k], digest) end
  i = i + 1
end
return redis.call('INCR', KEYS[1])
";

const PROGRESS: &str = r"
-- KEYS: lock, outbox, progress. ARGV: token, outbox name, digest id, parts sent or 'done'.
-- Only for the digest at the head, and progress only ever grows: a stale dispatcher can
-- neither pop another digest nor make parts look unsent.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head or cjson.decode(head).id ~= ARGV[3] then return 0 end
if ARGV[4] == 'done' then
  redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 1
end
local p = redis.call('HGET', KEYS[3], ARGV[2])
if p then
  local id, n = string.match(p, '^(.*) (%d+)$')
  if id == ARGV[3] and tonumber(n) >= tonumber(ARGV[4]) then return 1 end
end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ' ' .. ARGV[4])
return 1
";

const LOCK: &str = r"
-- KEYS: lock. ARGV: token, ttl ms. Extends our own lock (1) or takes a free one (2).
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
";

const UNLOCK: &str = r"
-- KEYS: lock. ARGV: token.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

const MERGE: &str = r"
-- KEYS: lock, outbox, progress. ARGV: token, outbox name, merged digest, then the digests
-- it replaces, as read from the head. Replaces them only if they are still the head and
-- none of the first was sent yet: a part sent is never merged away, nor sent twice.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = #ARGV - 3
local head = redis.call('LRANGE', KEYS[2], 0, n - 1)
if #head ~= n then return 0 end
for i = 1, n do
  if head[i] ~= ARGV[i + 3] then return 0 end
end
local p = redis.call('HGET', KEYS[3], ARGV[2])
if p and string.match(p, '^(.*) %d+$') == cjson.decode(head[1]).id then return 0 end
redis.call('LTRIM', KEYS[2], n, -1)
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
";

const FAIL: &str = r#"
-- KEYS: lock, outbox, progress, failed. ARGV: token, outbox name, digest id, reason.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local head = redis.call('LINDEX', KEYS[2], 0)
if head and cjson.decode(head).id == ARGV[3] then
  redis.call('LPOP', KEYS[2])
  -- The digest as it was written: a newer version's may hold what cjson would not keep.
  redis.call('RPUSH', KEYS[4], '{"reason":' .. cjson.encode(ARGV[4]) .. ',"digest":' .. head .. '}')
  redis.call('LTRIM', KEYS[4], -1000, -1)
end
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"#;

const ANSWERED: &str = r"
-- KEYS: lock, poll offsets, reply outbox, silences, the poller's answered ids.
-- ARGV: token, poller name, next offset, reply or '', silence op ('', 'add', 'del'), silence
--       id, silence json, lock ttl ms, bot id, now (unix s), '1' if ids were read afresh.
-- Moves the offset past one update together with what answering it did, once: a replica
-- that lost the lock, or an update already answered, changes nothing. Extends the lock.
-- Beside the offset: when it moved and for which bot (see PollOffset). Ids read afresh may
-- lie below the offset, so an update counts as answered if its id was in the last day's; the
-- offset still moves past it, or Telegram would hand it out again and again.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
local id = tonumber(ARGV[3]) - 1
local now = tonumber(ARGV[10])
local function moved()
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3], ARGV[2] .. '@', ARGV[10], ARGV[2] .. '#', ARGV[9])
end
if ARGV[11] == '1' then
  local at = redis.call('ZSCORE', KEYS[5], id)
  if at and now - tonumber(at) < 86400 then
    moved()
    return 0
  end
else
  local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
  if cur >= tonumber(ARGV[3]) then return 0 end
end
moved()
redis.call('ZADD', KEYS[5], now, id)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 86400)
if ARGV[4] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[4]) end
if ARGV[5] == 'add' then redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
elseif ARGV[5] == 'del' then redis.call('HDEL', KEYS[4], ARGV[6]) end
return 1
";

/// Where a Telegram poller stands: the next update id to ask for, when it last moved (unix
/// seconds) and for which bot; `None` where written by a version that did not keep them.
/// Beside it, the ids answered in the last day, which ids read afresh are checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollOffset {
    pub next: i64,
    pub moved_at: Option<i64>,
    pub bot: Option<i64>,
}

/// How an update was answered (see [`Ledger::answered`]).
#[derive(Debug, Clone, Copy)]
pub struct AnsweredBy {
    /// The bot's id, and when (unix seconds).
    pub bot: i64,
    pub at: i64,
    /// The ids were read without the stored offset (see [`PollOffset`]), so one lower than it
    /// is new, not answered before.
    pub afresh: bool,
    /// How long the poll lock is extended.
    pub lock_ttl_ms: u64,
}

/// A change to the silences that answering a chat command makes.
#[derive(Debug, Clone, PartialEq)]
pub enum SilenceChange {
    Add(Silence),
    Remove(String),
}

/// Whether an update's answer was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Recorded,
    /// Already answered (by this replica before a restart, or another).
    Before,
    /// The poll lock was lost: stop and let the holder answer.
    LockLost,
}

impl Ledger {
    pub fn new(conn: RedisConn, prefix: &str) -> Ledger {
        Ledger {
            conn,
            keys: Keys::new(prefix),
        }
    }

    fn key(&self, name: &str) -> String {
        self.keys.alerts(name)
    }

    fn outbox_key(&self, outbox: &str) -> String {
        self.key(&format!("outbox:{outbox}"))
    }

    /// Generation, states, silences and meta, in one round trip.
    pub async fn read(&self) -> Result<Read, LedgerError> {
        let mut conn = self.conn.clone();
        type Hash = BTreeMap<String, String>;
        let (generation, states, silences, meta): (Option<i64>, Hash, Hash, Hash) = redis::pipe()
            .get(self.key("generation"))
            .hgetall(self.key("states"))
            .hgetall(self.key("silences"))
            .hgetall(self.key("meta"))
            .query_async(&mut conn)
            .await?;
        Ok(Read {
            generation: generation.unwrap_or(0),
            started: meta.contains_key(STARTED),
            // A hold recorded without a readable time is taken to have begun long ago.
            held_since: meta.get(HELD).map(|at| {
                DateTime::parse_from_rfc3339(at).map_or(DateTime::<Utc>::MIN_UTC, |t| t.to_utc())
            }),
            states: states
                .into_iter()
                .map(|(k, v)| Ok((k, serde_json::from_str(&v)?)))
                .collect::<Result<_, serde_json::Error>>()?,
            silences: silences
                .values()
                .map(|v| serde_json::from_str(v))
                .collect::<Result<_, _>>()?,
            meta,
        })
    }

    /// Removes silences that have ended; returns how many.
    pub async fn prune_silences(&self, now: DateTime<Utc>) -> Result<usize, LedgerError> {
        let ended: Vec<String> = self
            .silences()
            .await?
            .into_iter()
            .filter(|s| s.until <= now)
            .map(|s| s.id)
            .collect();
        if !ended.is_empty() {
            let mut conn = self.conn.clone();
            let _: i64 = conn.hdel(self.key("silences"), &ended).await?;
        }
        Ok(ended.len())
    }

    /// Commits `c` if nobody committed since generation `expected` was read. `Ok(false)` when
    /// someone did: read again and re-evaluate.
    pub async fn commit(&self, expected: i64, c: &Commit) -> Result<bool, LedgerError> {
        self.commit_guarded(Guard::Generation(expected), c).await
    }

    /// Commits `c` if the `meta` field `field` still holds `value` (`None`: absent), whatever
    /// else was committed since: for a commit that touches no alert state, which evaluations
    /// committing all the time must not hold up. `Ok(false)` when the field moved.
    pub async fn commit_if(
        &self,
        field: &str,
        value: Option<&str>,
        c: &Commit,
    ) -> Result<bool, LedgerError> {
        self.commit_guarded(Guard::Meta(field, value), c).await
    }

    async fn commit_guarded(&self, guard: Guard<'_>, c: &Commit) -> Result<bool, LedgerError> {
        let script = Script::new(COMMIT);
        let mut inv = script.prepare_invoke();
        inv.key(self.key("generation"))
            .key(self.key("states"))
            .key(self.key("history"))
            .key(self.key("meta"));
        match guard {
            Guard::Generation(expected) => inv.arg(expected).arg("").arg(""),
            Guard::Meta(field, value) => inv.arg("").arg(field).arg(value.unwrap_or("")),
        };
        inv.arg(c.states.len());
        for (k, v) in &c.states {
            let json = match v {
                Some(s) => serde_json::to_string(s)?,
                None => String::new(),
            };
            inv.arg(k).arg(json);
        }
        inv.arg(c.notices.len());
        for n in &c.notices {
            inv.arg(serde_json::to_string(n)?);
        }
        inv.arg(HISTORY);
        inv.arg(c.meta.len());
        for (field, value) in &c.meta {
            inv.arg(*field).arg(value.as_deref().unwrap_or(""));
        }
        for (outbox, digest) in &c.digests {
            inv.key(self.outbox_key(outbox));
            let json = serde_json::to_string(digest)?;
            // Nothing to show matters only to a backlog it may be merged into.
            inv.arg(if digest.tells_nothing() {
                format!("?{json}")
            } else {
                json
            });
        }
        let mut conn = self.conn.clone();
        let generation: i64 = inv.invoke_async(&mut conn).await?;
        Ok(generation >= 0)
    }

    /// Takes (or extends) the delivery lock of `outbox`.
    pub async fn lock(
        &self,
        outbox: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<Option<Lock>, LedgerError> {
        let mut conn = self.conn.clone();
        let got: i64 = Script::new(LOCK)
            .key(self.key(&format!("lock:{outbox}")))
            .arg(token)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok((got > 0).then(|| Lock {
            outbox: outbox.to_string(),
            token: token.to_string(),
            fresh: got == 2,
        }))
    }

    /// Releases the delivery lock of `outbox` if this token holds it (on a clean stop, so
    /// another replica need not wait for it to expire).
    pub async fn unlock(&self, outbox: &str, token: &str) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(UNLOCK)
            .key(self.key(&format!("lock:{outbox}")))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The oldest digest waiting in `outbox`, and how far its sending got.
    pub async fn head(&self, outbox: &str) -> Result<Option<Pending>, LedgerError> {
        let mut conn = self.conn.clone();
        let (raw, progress, wait, queued): (Option<String>, Option<String>, i64, u64) =
            redis::pipe()
                .lindex(self.outbox_key(outbox), 0)
                .hget(self.key("progress"), outbox)
                .pttl(self.wait_key(outbox))
                .llen(self.outbox_key(outbox))
                .query_async(&mut conn)
                .await?;
        let Some(raw) = raw else { return Ok(None) };
        let digest: Digest = serde_json::from_str(&raw).map_err(|error| {
            let id = serde_json::from_str::<serde_json::Value>(&raw)
                .ok()
                .and_then(|v| Some(v.get("id")?.as_str()?.to_string()));
            match id {
                Some(id) => LedgerError::Unreadable { id, error },
                None => error.into(),
            }
        })?;
        let parts_sent = progress
            .and_then(|p| {
                let (id, n) = p.split_once(' ')?;
                (id == digest.id).then(|| n.parse().ok())?
            })
            .unwrap_or(0);
        let wait = u64::try_from(wait)
            .ok()
            .filter(|ms| *ms > 0)
            .map(std::time::Duration::from_millis);
        Ok(Some(Pending {
            digest,
            parts_sent,
            wait,
            queued,
        }))
    }

    /// Leaves `outbox`'s receiver alone for `wait`, as it asked (429 or 503 with Retry-After):
    /// whichever replica sends next, after a restart too, waits it out.
    pub async fn wait_outbox(
        &self,
        outbox: &str,
        wait: std::time::Duration,
    ) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: () = redis::cmd("SET")
            .arg(self.wait_key(outbox))
            .arg(1)
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    fn wait_key(&self, outbox: &str) -> String {
        self.key(&format!("wait:{outbox}"))
    }

    async fn progress(&self, lock: &Lock, digest: &str, parts: &str) -> Result<bool, LedgerError> {
        let mut conn = self.conn.clone();
        let ok: i64 = Script::new(PROGRESS)
            .key(self.key(&format!("lock:{}", lock.outbox)))
            .key(self.outbox_key(&lock.outbox))
            .key(self.key("progress"))
            .arg(&lock.token)
            .arg(&lock.outbox)
            .arg(digest)
            .arg(parts)
            .invoke_async(&mut conn)
            .await?;
        Ok(ok == 1)
    }

    /// Records that `parts` parts of `digest` were sent. `false`: the lock was lost.
    pub async fn sent_parts(
        &self,
        lock: &Lock,
        digest: &str,
        parts: usize,
    ) -> Result<bool, LedgerError> {
        self.progress(lock, digest, &parts.to_string()).await
    }

    /// Removes a fully sent digest from the outbox.
    pub async fn delivered(&self, lock: &Lock, digest: &str) -> Result<bool, LedgerError> {
        self.progress(lock, digest, "done").await
    }

    /// Moves a digest the receiver refuses for good to the outbox's failed list.
    pub async fn failed(
        &self,
        lock: &Lock,
        digest: &str,
        reason: &str,
    ) -> Result<bool, LedgerError> {
        let mut conn = self.conn.clone();
        let ok: i64 = Script::new(FAIL)
            .key(self.key(&format!("lock:{}", lock.outbox)))
            .key(self.outbox_key(&lock.outbox))
            .key(self.key("progress"))
            .key(self.key(&format!("failed:{}", lock.outbox)))
            .arg(&lock.token)
            .arg(&lock.outbox)
            .arg(digest)
            .arg(reason)
            .invoke_async(&mut conn)
            .await?;
        Ok(ok == 1)
    }

    /// The first `n` digests waiting in `outbox`, as stored.
    pub async fn waiting(&self, outbox: &str, n: usize) -> Result<Vec<String>, LedgerError> {
        let mut conn = self.conn.clone();
        Ok(conn
            .lrange(self.outbox_key(outbox), 0, n as isize - 1)
            .await?)
    }

    /// Replaces the digests `raws` at the head of the outbox with `merged`, if they are still
    /// its head and nothing of them was sent. `false`: the lock was lost, or they changed.
    pub async fn merge_head(
        &self,
        lock: &Lock,
        raws: &[String],
        merged: &Digest,
    ) -> Result<bool, LedgerError> {
        let script = Script::new(MERGE);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&format!("lock:{}", lock.outbox)))
            .key(self.outbox_key(&lock.outbox))
            .key(self.key("progress"))
            .arg(&lock.token)
            .arg(&lock.outbox)
            .arg(serde_json::to_string(merged)?);
        for raw in raws {
            inv.arg(raw);
        }
        let mut conn = self.conn.clone();
        let ok: i64 = inv.invoke_async(&mut conn).await?;
        Ok(ok == 1)
    }

    /// Digests waiting in `outbox`.
    pub async fn pending(&self, outbox: &str) -> Result<u64, LedgerError> {
        let mut conn = self.conn.clone();
        Ok(conn.llen(self.outbox_key(outbox)).await?)
    }

    /// Newest transitions first, at most `limit`.
    pub async fn history(&self, limit: usize) -> Result<Vec<Notice>, LedgerError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = conn
            .lrange(self.key("history"), 0, limit as isize - 1)
            .await?;
        Ok(raw
            .iter()
            .map(|r| serde_json::from_str(r))
            .collect::<Result<_, _>>()?)
    }

    /// Whether `chat`, not one tiendo answers, may be told so now: `true` at most once in
    /// `every`.
    pub async fn refusal_due(
        &self,
        chat: &str,
        every: std::time::Duration,
    ) -> Result<bool, LedgerError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(&format!("refused:{chat}")))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(every.as_secs().max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Where poller `name` stands (next 0: no update seen yet).
    pub async fn poll_offset(&self, name: &str) -> Result<PollOffset, LedgerError> {
        let mut conn = self.conn.clone();
        let (next, moved_at, bot): (Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.key("poll"))
            .arg(name)
            .arg(format!("{name}@"))
            .arg(format!("{name}#"))
            .query_async(&mut conn)
            .await?;
        Ok(PollOffset {
            next: next.unwrap_or(0),
            moved_at,
            bot,
        })
    }

    /// Records that poller `name` (holding `lock`) answered every update before `next`: the
    /// reply goes to `reply_outbox` and the silence change is made, in the same step, and the
    /// lock is extended.
    pub async fn answered(
        &self,
        lock: &Lock,
        name: &str,
        next: i64,
        reply: Option<(&str, &Digest)>,
        change: Option<&SilenceChange>,
        by: &AnsweredBy,
    ) -> Result<Answered, LedgerError> {
        let script = Script::new(ANSWERED);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&format!("lock:{}", lock.outbox)))
            .key(self.key("poll"))
            .key(self.outbox_key(reply.map_or("none", |(o, _)| o)))
            .key(self.key("silences"))
            .key(self.key(&format!("answered:{name}")));
        inv.arg(&lock.token).arg(name).arg(next);
        match reply {
            Some((_, d)) => inv.arg(serde_json::to_string(d)?),
            None => inv.arg(""),
        };
        match change {
            None => inv.arg("").arg("").arg(""),
            Some(SilenceChange::Add(s)) => inv.arg("add").arg(&s.id).arg(serde_json::to_string(s)?),
            Some(SilenceChange::Remove(id)) => inv.arg("del").arg(id).arg(""),
        };
        inv.arg(by.lock_ttl_ms)
            .arg(by.bot)
            .arg(by.at)
            .arg(if by.afresh { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let got: i64 = inv.invoke_async(&mut conn).await?;
        Ok(match got {
            1 => Answered::Recorded,
            0 => Answered::Before,
            _ => Answered::LockLost,
        })
    }

    pub async fn add_silence(&self, s: &Silence) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: () = conn
            .hset(self.key("silences"), &s.id, serde_json::to_string(s)?)
            .await?;
        Ok(())
    }

    /// Removes a silence; `false` if there was none with that id.
    pub async fn remove_silence(&self, id: &str) -> Result<bool, LedgerError> {
        let mut conn = self.conn.clone();
        let removed: i64 = conn.hdel(self.key("silences"), id).await?;
        Ok(removed == 1)
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, LedgerError> {
        Ok(self.read().await?.silences)
    }
}
