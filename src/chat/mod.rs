//! The task force's chat, answered: one province's figures (`/tinh`), the alerts firing now
//! (`/canhbao`), the classification (`/baocao`), silences made and removed (`/imlang`,
//! `/boimlang`) and help (`/trogiup`), with English aliases. [`Conversation`] turns a
//! message into an [`Answer`] for any chat; [`telegram`] reads Telegram by long polling, and
//! the HTTP server's `/slack/commands` takes Slack and Mattermost slash commands.
//!
//! Only configured chats are answered, and only configured users may silence; anyone else
//! gets a polite refusal, a log line and a count. Everything a person typed is escaped before
//! it is shown.

pub mod command;
pub mod lookup;
pub mod reply;
pub mod telegram;

use std::collections::BTreeSet;
use std::sync::Arc;

use command::{Command, Unparsed, Verb};
use lookup::Found;
use reply::{help, silence_line, unit_name, usage};

use crate::clock::SharedClock;
use crate::config::{Language, Settings};
use crate::notify::message::{self, Markup, Style};
use crate::provinces::{provinces, Scheme, Unit};
use crate::rules::ledger::{Digest, Kind, Ledger, LedgerError, Notice, Silence, SilenceChange};
use crate::rules::state::{AlertState, Change};
use crate::rules::{evaluate, Facts, Route, Rule, Subject};
use crate::status::{Status, View};
use crate::store::Store;
use crate::targets::Targets;
use crate::telemetry;

/// Where a command came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Telegram,
    Slack,
    Mattermost,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Telegram => "telegram",
            Via::Slack => "slack",
            Via::Mattermost => "mattermost",
        }
    }
}

/// Who asked, and where.
#[derive(Debug, Clone)]
pub struct Asker {
    pub via: Via,
    pub chat: String,
    pub user: String,
    /// A display name, for the silence's record.
    pub name: String,
}

/// What to say, and what to change with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Messages, in the asker's markup.
    pub texts: Vec<String>,
    pub change: Option<SilenceChange>,
    /// Only for the asker's eyes (Slack `ephemeral`): refusals and usage.
    pub private: bool,
}

/// How a command went, for the metric.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Answered,
    Usage,
    Refused,
    /// Read too late to answer (see `telegram::STALE_AFTER_SECONDS`).
    Stale,
}

pub struct Conversation {
    store: Store,
    ledger: Ledger,
    targets: Targets,
    settings: Arc<Settings>,
    clock: SharedClock,
    chats: BTreeSet<String>,
    silencers: BTreeSet<String>,
}

/// A Telegram chat not in `commands.chats` is told so at most once in this long.
const REFUSE_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

impl Conversation {
    pub fn new(
        store: Store,
        ledger: Ledger,
        targets: Targets,
        settings: Arc<Settings>,
        clock: SharedClock,
    ) -> Conversation {
        let c = &settings.commands;
        let mut chats: BTreeSet<String> = c.chats.iter().cloned().collect();
        if chats.is_empty() {
            if let Some(r) = settings.alerts.receivers.get(&c.telegram) {
                chats.insert(r.chat_id.clone());
            }
        }
        let silencers = c.silencers.iter().cloned().collect();
        Conversation {
            store,
            ledger,
            targets,
            settings,
            clock,
            chats,
            silencers,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The answer to `text` from `asker`, or `None` when the message is not for us. `bot` is
    /// the bot's own username, to ignore commands meant for another bot in a group.
    pub async fn answer(
        &self,
        text: &str,
        asker: &Asker,
        bot: Option<&str>,
        lang: Language,
        m: Markup,
    ) -> Result<Option<Answer>, LedgerError> {
        let parsed = command::parse(text, bot, &self.settings.validation.datasets);
        self.respond(parsed, asker, lang, m).await
    }

    /// The answer to a command already split into its name and arguments (a slash command).
    pub async fn answer_slash(
        &self,
        command: &str,
        args: &str,
        asker: &Asker,
        lang: Language,
        m: Markup,
    ) -> Result<Option<Answer>, LedgerError> {
        let datasets = &self.settings.validation.datasets;
        let word = command.trim().trim_start_matches('/').to_ascii_lowercase();
        let parsed = match command::parse(&format!("/{word}"), None, datasets) {
            // `/tinh ninh thuan`: the command itself is ours.
            Ok(_) | Err(Unparsed::Usage(..)) => {
                command::parse(&format!("/{word} {args}"), None, datasets)
            }
            // `/tiendo tinh ninh thuan`: one slash command for all; empty asks for help.
            _ if args.trim().is_empty() => Ok(Command::Help),
            _ => command::parse(&format!("/{}", args.trim()), None, datasets),
        };
        self.respond(parsed, asker, lang, m).await
    }

    async fn respond(
        &self,
        parsed: Result<Command, Unparsed>,
        asker: &Asker,
        lang: Language,
        m: Markup,
    ) -> Result<Option<Answer>, LedgerError> {
        let vi = lang == Language::Vi;
        let (verb, parsed) = match parsed {
            Err(Unparsed::NotForUs) => return Ok(None),
            Ok(c) => (verb_of(&c), Ok(c)),
            Err(Unparsed::Usage(v, why)) => (Some(v), Err(Unparsed::Usage(v, why))),
            Err(e) => (None, Err(e)),
        };
        let name = verb.map_or("unknown", Verb::as_str);
        if !self.chats.contains(&asker.chat) {
            count(asker.via, name, Outcome::Refused);
            // Telegram's refusals wait in the reply outbox with the task force's answers: a
            // stranger sending a command a second must not hold those up, so one an hour.
            if asker.via == Via::Telegram
                && !self
                    .ledger
                    .refusal_due(&asker.chat, REFUSE_AGAIN_AFTER)
                    .await?
            {
                tracing::debug!(
                    chat = asker.chat,
                    command = name,
                    "refused again: not answered"
                );
                return Ok(None);
            }
            tracing::warn!(
                via = asker.via.as_str(),
                chat = asker.chat,
                user = asker.user,
                command = name,
                "chat command from a chat not in commands.chats: refused"
            );
            let text = if vi {
                format!(
                    "Xin lỗi, tiendo chỉ trả lời các nhóm đã được cấu hình. Nhờ quản trị viên thêm nhóm này (mã {}) vào commands.chats.",
                    m.escape(&asker.chat)
                )
            } else {
                format!(
                    "Sorry, tiendo only answers configured chats. Ask an administrator to add this chat (id {}) to commands.chats.",
                    m.escape(&asker.chat)
                )
            };
            return Ok(Some(private(text)));
        }
        let command = match parsed {
            Ok(c) => c,
            Err(Unparsed::Usage(v, _)) => {
                count(asker.via, name, Outcome::Usage);
                return Ok(Some(private(usage(v, lang, m, &self.settings))));
            }
            Err(_) => {
                count(asker.via, name, Outcome::Usage);
                let text = if vi {
                    "Lệnh không có. Gõ /trogiup để xem các lệnh."
                } else {
                    "Unknown command. Send /help for the list."
                };
                return Ok(Some(private(text.into())));
            }
        };
        if matches!(command, Command::Silence { .. } | Command::Unsilence(_))
            && !self.silencers.contains(&asker.user)
        {
            tracing::warn!(
                via = asker.via.as_str(),
                chat = asker.chat,
                user = asker.user,
                command = name,
                "silence from a user not in commands.silencers: refused"
            );
            count(asker.via, name, Outcome::Refused);
            let text = if vi {
                "Xin lỗi, bạn chưa có quyền tạm im hay bỏ im cảnh báo. Nhờ quản trị viên thêm mã người dùng của bạn vào commands.silencers."
            } else {
                "Sorry, you may not silence or unsilence alerts. Ask an administrator to add your user id to commands.silencers."
            };
            return Ok(Some(private(text.into())));
        }
        let answer = match command {
            Command::Help => plain(help(lang, m, &self.settings)),
            Command::Province(q) => Answer {
                texts: message::split(&self.province(&q, lang, m).await?, max(m)),
                change: None,
                private: false,
            },
            Command::Alerts => Answer {
                texts: self.alerts(lang, m).await?,
                change: None,
                private: false,
            },
            Command::Report => {
                let now = self.clock.now();
                let s = &self.settings;
                let report =
                    crate::report::build(&self.store, &self.targets, s, s.alerts.view, lang, now)
                        .await?;
                plain(report.chat(m, None))
            }
            Command::Silence {
                province,
                dataset,
                rule,
                duration,
                reason,
            } => {
                self.silence(&province, dataset, rule, duration, &reason, asker, lang, m)
                    .await?
            }
            Command::Unsilence(id) => self.unsilence(&id, lang, m).await?,
        };
        count(asker.via, name, Outcome::Answered);
        Ok(Some(answer))
    }

    /// One province: every dataset's figures against its target, procedures, and its alerts.
    async fn province(
        &self,
        query: &str,
        lang: Language,
        m: Markup,
    ) -> Result<String, LedgerError> {
        let view = self.settings.alerts.view;
        let unit = match lookup::find(query, view.scheme()) {
            Found::One(u) => u,
            Found::None => return Ok(reply::not_found(query, lang, m)),
            Found::Several(units) => return Ok(reply::several(query, &units, lang, m)),
        };
        let now = self.clock.now();
        let uview = View::from(unit.scheme);
        let s = &self.settings;
        let snap = self.store.snapshot(now).await?;
        let status = Status::build(&snap, &self.targets, &s.validation.datasets, uview);
        let eval = evaluate(&status, now, &s.alerts.rules);
        let code = format!("{:02}", unit.code);
        let Some(row) = status.provinces.iter().find(|p| p.code == code) else {
            return Ok(m.escape(&unit_name(unit)));
        };
        // Its alerts and silences, in the table alerts are kept in.
        let read = self.ledger.read().await?;
        let units = alert_units(unit, view);
        let mut alerts: Vec<(&String, &AlertState)> = read
            .states
            .iter()
            .filter(|(k, s)| {
                s.phase.active() && units.iter().any(|u| k.starts_with(&format!("{u}:")))
            })
            .collect();
        alerts.sort_by_key(|(k, s)| (std::cmp::Reverse(s.severity), (*k).clone()));
        let silences: Vec<&Silence> = read
            .silences
            .iter()
            .filter(|x| x.until > now && units.contains(&format!("{}:{}", x.scheme, x.province)))
            .collect();
        let shown = reply::Province {
            unit,
            row,
            facts: &eval.facts,
            datasets: &s.validation.datasets,
            alerts: &alerts,
            silences: &silences,
            now,
        };
        Ok(reply::province(&shown, lang, m))
    }

    /// The alerts firing now, grouped as digests group them, and the silences in force.
    async fn alerts(&self, lang: Language, m: Markup) -> Result<Vec<String>, LedgerError> {
        let vi = lang == Language::Vi;
        let now = self.clock.now();
        let s = &self.settings;
        let read = self.ledger.read().await?;
        let snap = self.store.snapshot(now).await?;
        let status = Status::build(&snap, &self.targets, &s.validation.datasets, s.alerts.view);
        let eval = evaluate(&status, now, &s.alerts.rules);
        let notices: Vec<Notice> = read
            .states
            .iter()
            .filter(|(_, st)| st.phase.active())
            .filter_map(|(key, st)| {
                let rule = Rule::parse(key.rsplit(':').next()?)?;
                if rule.route() != Route::Taskforce {
                    return None; // feeds are ops' business, not the task force's
                }
                let (subject, facts) = eval.about(key).cloned().or_else(|| subject_of(key))?;
                Some(Notice {
                    id: key.clone(),
                    alert_key: key.clone(),
                    rule,
                    severity: st.severity,
                    change: Change::Repeated,
                    silenced_by: read
                        .silences
                        .iter()
                        .find(|x| {
                            x.covers(&subject.scheme, &subject.code, &subject.dataset, rule, now)
                        })
                        .map(|x| x.id.clone()),
                    subject,
                    facts,
                    at: st.since,
                })
            })
            .collect();
        let mut texts = if notices.is_empty() {
            vec![if vi {
                "Không có cảnh báo nào đang bật.".to_string()
            } else {
                "No alerts are firing.".to_string()
            }]
        } else {
            let digest = Digest {
                id: "firing".into(),
                at: now,
                notices,
                kind: Kind::Firing,
                ..Digest::default()
            };
            let style = Style {
                language: lang,
                markup: m,
                max_chars: max(m),
                group_at: s.alerts.group_at,
                link: (!s.http.public_url.is_empty()).then(|| s.http.public_url.clone()),
            };
            message::render(&digest, &style)
        };
        let silences: Vec<String> = read
            .silences
            .iter()
            .filter(|x| x.until > now && x.scheme != crate::rules::SOURCE_SCHEME)
            .map(|x| silence_line(x, lang, m))
            .collect();
        if !silences.is_empty() {
            let mut block = vec![m.bold(if vi { "Đang tạm im" } else { "Silenced" })];
            block.extend(silences);
            let block = block.join("\n");
            // In the last message when it fits, else in messages of its own.
            match texts.last_mut() {
                Some(last) if message::length(last) + 2 + message::length(&block) <= max(m) => {
                    last.push_str("\n\n");
                    last.push_str(&block);
                }
                _ => texts.extend(message::split(&block, max(m))),
            }
        }
        Ok(texts)
    }

    #[allow(clippy::too_many_arguments)]
    async fn silence(
        &self,
        query: &str,
        dataset: Option<String>,
        rule: Option<Rule>,
        duration: std::time::Duration,
        reason: &str,
        asker: &Asker,
        lang: Language,
        m: Markup,
    ) -> Result<Answer, LedgerError> {
        let vi = lang == Language::Vi;
        let view = self.settings.alerts.view;
        let unit = match lookup::find(query, view.scheme()) {
            Found::One(u) => u,
            _ => {
                return Ok(private(if vi {
                    format!("Không tìm thấy một tỉnh “{}”.", m.escape(query))
                } else {
                    format!("No single province “{}”.", m.escape(query))
                }))
            }
        };
        let units = alert_units(unit, view);
        let [target] = units.as_slice() else {
            let list: Vec<String> = units
                .iter()
                .filter_map(|u| Unit::parse_tagged(&tagged(u)))
                .map(unit_name)
                .collect();
            return Ok(private(if vi {
                format!(
                    "Cảnh báo được theo dõi theo bảng {} tỉnh; hãy chọn một: {}",
                    view.tag(),
                    m.escape(&list.join(", "))
                )
            } else {
                format!(
                    "Alerts are kept in the {}-unit table; pick one of: {}",
                    view.tag(),
                    m.escape(&list.join(", "))
                )
            }));
        };
        let code = target.rsplit(':').next().unwrap_or_default();
        let now = self.clock.now();
        let until = now + chrono::Duration::from_std(duration).unwrap_or_default();
        let by = if asker.name.is_empty() {
            asker.user.clone()
        } else {
            format!("{} ({})", asker.name, asker.user)
        };
        let silence = match Silence::build(
            view,
            code,
            dataset.as_deref(),
            rule.map(Rule::as_str),
            until,
            &format!("{reason} — {by}"),
            now,
            &self.settings.validation.datasets,
        ) {
            Ok(s) => s,
            Err(e) => return Ok(private(m.escape(&e.to_string()))),
        };
        let name = provinces()
            .get(view.scheme(), code.parse().unwrap_or(0))
            .map(|p| p.name_vi.clone())
            .unwrap_or_default();
        Ok(Answer {
            texts: vec![reply::silenced(&silence, &name, lang, m)],
            change: Some(SilenceChange::Add(silence)),
            private: false,
        })
    }

    async fn unsilence(&self, id: &str, lang: Language, m: Markup) -> Result<Answer, LedgerError> {
        let exists = self.ledger.silences().await?.iter().any(|s| s.id == id);
        if !exists {
            return Ok(private(reply::no_silence(id, lang, m)));
        }
        Ok(Answer {
            texts: vec![reply::lifted(id, lang, m)],
            change: Some(SilenceChange::Remove(id.to_string())),
            private: false,
        })
    }
}

fn verb_of(c: &Command) -> Option<Verb> {
    Some(match c {
        Command::Province(_) => Verb::Province,
        Command::Alerts => Verb::Alerts,
        Command::Report => Verb::Report,
        Command::Silence { .. } => Verb::Silence,
        Command::Unsilence(_) => Verb::Unsilence,
        Command::Help => Verb::Help,
    })
}

fn count(via: Via, command: &'static str, outcome: Outcome) {
    let outcome = match outcome {
        Outcome::Answered => "answered",
        Outcome::Usage => "usage",
        Outcome::Refused => "refused",
        Outcome::Stale => "stale",
    };
    metrics::counter!(
        telemetry::CHAT_COMMANDS,
        "via" => via.as_str(),
        "command" => command,
        "outcome" => outcome
    )
    .increment(1);
}

fn plain(text: String) -> Answer {
    Answer {
        texts: vec![text],
        change: None,
        private: false,
    }
}

fn private(text: String) -> Answer {
    Answer {
        texts: vec![text],
        change: None,
        private: true,
    }
}

/// Longest message for a markup: Telegram's limit, Slack's comfortable one.
fn max(m: Markup) -> usize {
    match m {
        Markup::TelegramHtml => crate::notify::receivers::TELEGRAM_MAX,
        Markup::Slack => crate::notify::receivers::SLACK_MAX,
        Markup::Plain => usize::MAX / 2,
    }
}

/// `34:56` → `n56`.
fn tagged(unit: &str) -> String {
    match unit.split_once(':') {
        Some(("34", c)) => format!("n{c}"),
        Some((_, c)) => format!("o{c}"),
        None => unit.to_string(),
    }
}

/// The units (`scheme:code`) of `view`'s table whose alerts concern `unit`: itself, the unit
/// that absorbed it, or the units it absorbed.
fn alert_units(unit: Unit, view: View) -> Vec<String> {
    let tag = view.tag();
    let table = provinces();
    match (unit.scheme, view.scheme()) {
        (a, b) if a == b => vec![format!("{tag}:{:02}", unit.code)],
        (Scheme::Legacy63, Scheme::Current34) => table
            .get(Scheme::Legacy63, unit.code)
            .map(|p| vec![format!("{tag}:{:02}", p.current_code)])
            .unwrap_or_default(),
        _ => table
            .members(unit.code)
            .map(|c| format!("{tag}:{c:02}"))
            .collect(),
    }
}

/// Subject and empty facts from an alert key, for an alert the current figures do not
/// mention.
fn subject_of(key: &str) -> Option<(Subject, Facts)> {
    let mut parts = key.split(':');
    let (scheme, code, what) = (parts.next()?, parts.next()?, parts.next()?);
    let s = if scheme == "34" {
        Scheme::Current34
    } else {
        Scheme::Legacy63
    };
    let name = provinces().get(s, code.parse().ok()?)?.name_vi.clone();
    Some((
        Subject {
            scheme: scheme.into(),
            code: code.into(),
            name,
            dataset: if what == "procedures" {
                String::new()
            } else {
                what.into()
            },
        },
        Facts::default(),
    ))
}
