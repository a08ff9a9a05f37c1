//! What a chat message asks, parsed without trusting it: Vietnamese commands and their English
//! aliases, Telegram's `/cmd@bot` form, Slack's `/tiendo cmd …` form. Anything that does not
//! parse comes back as the usage of the command it tried, never as a failure.

use std::time::Duration;

use crate::rules::Rule;

/// Longest silence a chat command may set: a forgotten one must not hide a province for good.
pub const MAX_SILENCE: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `/tinh <name or code>`.
    Province(String),
    /// `/canhbao`.
    Alerts,
    /// `/baocao`.
    Report,
    /// `/imlang <province> [dataset] [rule] <duration> <reason>`.
    Silence {
        province: String,
        dataset: Option<String>,
        rule: Option<Rule>,
        duration: Duration,
        reason: String,
    },
    /// `/boimlang <id>`.
    Unsilence(String),
    /// `/trogiup`, `/start`.
    Help,
}

/// Which command, for usage texts and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Province,
    Alerts,
    Report,
    Silence,
    Unsilence,
    Help,
}

impl Verb {
    /// Vietnamese name first, then the English alias.
    pub const ALL: [(Verb, &'static str, &'static str); 6] = [
        (Verb::Province, "tinh", "province"),
        (Verb::Alerts, "canhbao", "alerts"),
        (Verb::Report, "baocao", "report"),
        (Verb::Silence, "imlang", "silence"),
        (Verb::Unsilence, "boimlang", "unsilence"),
        (Verb::Help, "trogiup", "help"),
    ];

    fn parse(word: &str) -> Option<Verb> {
        if word == "start" {
            return Some(Verb::Help);
        }
        Verb::ALL
            .iter()
            .find(|(_, vi, en)| *vi == word || *en == word)
            .map(|(v, _, _)| *v)
    }

    pub fn as_str(self) -> &'static str {
        Verb::ALL
            .iter()
            .find(|(v, _, _)| *v == self)
            .map(|(_, _, en)| *en)
            .expect("every verb is listed")
    }
}

/// Why a message is not a command to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Unparsed {
    /// Not addressed to us at all (plain chatter, or a command for another bot): stay quiet.
    NotForUs,
    /// A command we do not know.
    Unknown(String),
    /// A known command with arguments that do not fit: answer with its usage.
    Usage(Verb, String),
}

/// Parses one message. `bot` is the bot's username (without `@`) when known, so commands
/// addressed to another bot in a group are left alone. `prefixed` says the text comes
/// without the leading slash (a Slack slash command's arguments).
pub fn parse(text: &str, bot: Option<&str>, datasets: &[String]) -> Result<Command, Unparsed> {
    let text = text.trim();
    let Some(rest) = text.strip_prefix('/') else {
        return Err(Unparsed::NotForUs);
    };
    let (head, args) = rest
        .split_once(char::is_whitespace)
        .map_or((rest, ""), |(h, a)| (h, a.trim()));
    let (word, to) = head
        .split_once('@')
        .map_or((head, None), |(w, b)| (w, Some(b)));
    if let (Some(to), Some(bot)) = (to, bot) {
        if !to.eq_ignore_ascii_case(bot) {
            return Err(Unparsed::NotForUs);
        }
    }
    let word = word.to_ascii_lowercase();
    let verb = Verb::parse(&word).ok_or_else(|| Unparsed::Unknown(clip(&word, 32)))?;
    arguments(verb, args, datasets)
}

/// The command `verb` with `args`.
pub fn arguments(verb: Verb, args: &str, datasets: &[String]) -> Result<Command, Unparsed> {
    let usage = |why: &str| Err(Unparsed::Usage(verb, why.to_string()));
    match verb {
        Verb::Province if args.is_empty() => usage("missing province"),
        Verb::Province => Ok(Command::Province(clip(args, 64))),
        Verb::Alerts => Ok(Command::Alerts),
        Verb::Report => Ok(Command::Report),
        Verb::Help => Ok(Command::Help),
        Verb::Unsilence => {
            let mut words = args.split_whitespace();
            match (words.next(), words.next()) {
                (Some(id), None) if id.len() <= 40 => Ok(Command::Unsilence(id.to_string())),
                _ => usage("one silence id"),
            }
        }
        Verb::Silence => {
            let words: Vec<&str> = args.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| duration(w).is_some()) else {
                return usage("missing duration");
            };
            let duration = duration(words[at]).expect("found above");
            if duration > MAX_SILENCE {
                return usage("duration over 30 days");
            }
            let reason = words[at + 1..].join(" ");
            if reason.is_empty() {
                return usage("missing reason");
            }
            let mut before = &words[..at];
            let mut rule = None;
            if let Some(r) = before.last().and_then(|w| Rule::parse(w)) {
                rule = Some(r);
                before = &before[..before.len() - 1];
            }
            let mut dataset = None;
            if let Some(d) = before.last().filter(|w| datasets.iter().any(|d| d == *w)) {
                dataset = Some(d.to_string());
                before = &before[..before.len() - 1];
            }
            if before.is_empty() {
                return usage("missing province");
            }
            Ok(Command::Silence {
                province: clip(&before.join(" "), 64),
                dataset,
                rule,
                duration,
                reason: clip(&reason, 200),
            })
        }
    }
}

/// `2d`, `12h`, `90m`, `1w`: a positive duration, or nothing.
fn duration(word: &str) -> Option<Duration> {
    if !word.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(word)
        .ok()
        .filter(|d| !d.is_zero())
}

/// At most `max` characters of `s`.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Vec<String> {
        vec!["civil_status".into(), "land".into()]
    }

    #[test]
    fn commands_and_aliases() {
        let p = |t: &str| parse(t, Some("tiendo_bot"), &ds());
        assert_eq!(
            p("/tinh ninh thuan"),
            Ok(Command::Province("ninh thuan".into()))
        );
        assert_eq!(
            p("/province@tiendo_bot  Ninh Thuận "),
            Ok(Command::Province("Ninh Thuận".into()))
        );
        assert_eq!(p("/CANHBAO"), Ok(Command::Alerts));
        assert_eq!(p("/report"), Ok(Command::Report));
        assert_eq!(p("/start"), Ok(Command::Help));
        assert_eq!(
            p("/boimlang s123-ab"),
            Ok(Command::Unsilence("s123-ab".into()))
        );
        assert_eq!(
            p("/imlang quang nam land behind_pace 2d số liệu đang nhập lại"),
            Ok(Command::Silence {
                province: "quang nam".into(),
                dataset: Some("land".into()),
                rule: Some(Rule::BehindPace),
                duration: Duration::from_secs(2 * 86_400),
                reason: "số liệu đang nhập lại".into(),
            })
        );
        assert_eq!(
            p("/silence 58 12h maintenance"),
            Ok(Command::Silence {
                province: "58".into(),
                dataset: None,
                rule: None,
                duration: Duration::from_secs(12 * 3600),
                reason: "maintenance".into(),
            })
        );
    }

    #[test]
    fn what_does_not_parse_gets_its_usage_or_silence() {
        let p = |t: &str| parse(t, Some("tiendo_bot"), &ds());
        assert_eq!(p("hello"), Err(Unparsed::NotForUs));
        assert_eq!(p("/tinh@other_bot x"), Err(Unparsed::NotForUs));
        assert!(matches!(
            p("/tinh"),
            Err(Unparsed::Usage(Verb::Province, _))
        ));
        assert!(matches!(
            p("/imlang 58 soon"),
            Err(Unparsed::Usage(Verb::Silence, _))
        ));
        assert!(matches!(
            p("/imlang 58 2d"),
            Err(Unparsed::Usage(Verb::Silence, _))
        ));
        assert!(matches!(
            p("/imlang 2d why"),
            Err(Unparsed::Usage(Verb::Silence, _))
        ));
        assert!(matches!(
            p("/imlang 58 90d why"),
            Err(Unparsed::Usage(Verb::Silence, _))
        ));
        assert!(matches!(
            p("/boimlang"),
            Err(Unparsed::Usage(Verb::Unsilence, _))
        ));
        assert!(matches!(p("/xoa"), Err(Unparsed::Unknown(w)) if w == "xoa"));
        assert!(matches!(p("/"), Err(Unparsed::Unknown(_))));
        assert!(
            matches!(p(&format!("/{}", "é".repeat(5000))), Err(Unparsed::Unknown(w)) if w.chars().count() == 32)
        );
    }
}
