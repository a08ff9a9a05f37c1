//! The demo's 2024 season, run headless for a short time: the provinces the reports put at
//! risk get at-risk alerts, the ones that had finished get none, the one that never started is
//! reported silent, and every record and dossier published is counted exactly. The chat is
//! told little and nothing false: no alert from the cold start that the caught-up figures do
//! not support, no flaps, no digest over one Telegram message. The `tiendo demo` command
//! itself ends with the counts exact.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use tiendo::config::Settings;
use tiendo::demo::{demo, DemoOptions};
use tiendo::rules::state::Change;
use tiendo::rules::Rule;
use tiendo::scenario::Scenario;
use tiendo::status::View;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2024_season_alerts_on_the_slow_provinces_and_not_the_finished_ones() {
    let options = DemoOptions {
        speed: 2.0 * 86_400.0,
        // Four Mondays, the last with days to spare; simulated time waits for the pipeline,
        // so a slow machine takes longer, not fewer days.
        days: Some(33.0),
        // Only a hang is stopped: 17 s of days at this speed, slower where the pipeline is.
        duration: Some(Duration::from_secs(900)),
        view: View::Legacy63,
        http_listen: String::new(),
        verbose: false,
    };
    let summary = demo(options, &Settings::default(), CancellationToken::new())
        .await
        .expect("the demo runs");
    assert!(summary.exact(), "{summary:?}");
    assert!(summary.published_records > 100_000_000);
    let noise = summary.noise();
    assert_eq!(noise.false_alerts, 0, "{:?}", summary.false_alerts);
    assert_eq!(noise.flaps, 0, "{noise}");
    assert_eq!(noise.largest_messages, 1, "{noise}");
    assert!(summary.days >= 33.0, "{noise}: {} days", summary.days);
    // The cold start sums up in one message.
    let first = &summary.digests[0];
    assert!(first.summary.is_some(), "{first:?}");
    // The chat both ways: a report every Monday (7, 14, 21 and 28 October), and answers to
    // the member's questions.
    assert_eq!(
        summary.weekly_reports.len(),
        4,
        "{} reports in {} days",
        summary.weekly_reports.len(),
        summary.days
    );
    for r in &summary.weekly_reports {
        assert!(r.starts_with("Báo cáo tuần · "), "{r}");
        assert!(r.contains("\nHộ tịch: Toàn quốc: "), "{r}");
    }
    let answers: Vec<(&str, &str)> = summary
        .answers
        .iter()
        .map(|(q, a)| (q.as_str(), a.as_str()))
        .collect();
    assert_eq!(answers.len(), 3, "{answers:#?}");
    assert_eq!(answers[0].0, "/tinh ninh thuan");
    assert!(
        answers[0].1.starts_with("Ninh Thuận\nmã 58 (bảng 63 tỉnh)"),
        "{}",
        answers[0].1
    );
    assert!(
        answers[1].1.starts_with("tiendo · ") && answers[1].1.contains(" cảnh báo đang bật · "),
        "{}",
        answers[1].1
    );
    assert!(
        answers[2]
            .1
            .starts_with("🔕 Đã tạm im mọi cảnh báo của Quảng Nam đến "),
        "{}",
        answers[2].1
    );

    let fired = |rules: &[Rule]| -> BTreeSet<String> {
        summary
            .notices
            .iter()
            .filter(|n| matches!(n.change, Change::Firing { .. }))
            .filter(|n| n.subject.dataset == "civil_status" && rules.contains(&n.rule))
            .map(|n| n.subject.code.clone())
            .collect()
    };
    let stalls = fired(&[Rule::Silent, Rule::BehindPace, Rule::ProjectedMiss]);
    let scenario = Scenario::autumn_2024(0.01);
    let codes = |category: &str| -> BTreeSet<String> {
        scenario
            .in_category("civil_status", category)
            .iter()
            .map(|s| s.code.clone())
            .collect()
    };
    let at_risk = codes("at_risk");
    let done = codes("done");
    assert_eq!(at_risk.len(), 10);
    assert!(
        at_risk.is_subset(&stalls),
        "at risk without an alert: {:?}",
        at_risk.difference(&stalls).collect::<Vec<_>>()
    );
    assert!(
        done.is_disjoint(&stalls),
        "finished provinces alerted: {:?}",
        done.intersection(&stalls).collect::<Vec<_>>()
    );
    // Kiên Giang never started: silent from the first day.
    assert!(fired(&[Rule::Silent]).contains("91"));
    // The finished ones are congratulated (others may finish during the run), each once.
    let completed: Vec<String> = summary
        .notices
        .iter()
        .filter(|n| n.change == Change::Completed && n.subject.dataset == "civil_status")
        .map(|n| n.subject.code.clone())
        .collect();
    let once: BTreeSet<String> = completed.iter().cloned().collect();
    assert_eq!(once.len(), completed.len(), "{completed:?}");
    assert!(done.is_subset(&once), "{completed:?}");

    // The closing report agrees: every at-risk province is in its at-risk list (Kiên Giang,
    // which never started, too).
    let civil = &summary.report.datasets[0];
    assert_eq!(civil.dataset, "civil_status");
    let listed: BTreeSet<String> = civil.classes[&tiendo::report::Class::AtRisk]
        .iter()
        .map(|e| e.code.clone())
        .collect();
    assert!(at_risk.is_subset(&listed), "{listed:?}");
}

/// `tiendo demo` as the quick start runs it (`scripts/demo` runs the release binary), for a
/// few seconds: it serves the status page, prints what the chat got (a weekly report, an
/// answer) and how noisy it was, and ends exact.
#[test]
fn the_demo_command_ends_with_the_counts_exact() {
    let out = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        // Nine simulated days, however slow the machine: the first Monday's report (day 6)
        // and the member's question (day 8) are in them.
        .args([
            "demo",
            "--speed",
            "86400",
            "--days",
            "9",
            "--duration",
            "300",
        ])
        .args(["--http-listen", "127.0.0.1:0"])
        .output()
        .expect("tiendo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("status page: http://127.0.0.1:"),
        "{stdout}"
    );
    // What the chat was told, judged as the task force would: no flap, nothing false, no
    // digest over one message; the first Monday's report (7 October 2024) and its HTML file,
    // and the answer to a member's question.
    let told = stdout
        .lines()
        .find(|l| l.starts_with("what the chat was told: notices: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(told.contains(" · flaps: 0 · "), "{told}");
    assert!(told.contains(" message(s) · "), "{told}");
    assert!(told.contains(" in 1 message(s) · "), "{told}");
    assert!(
        told.ends_with("false alerts after the cold start: 0"),
        "{told}"
    );
    assert!(
        stdout.contains("\n  │ Báo cáo tuần · Tiến độ số hóa Đề án 06 · ")
            && stdout.contains(" · 07/10/2024 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n  📎 tiendo-bao-cao-2024-10-07.html ("),
        "{stdout}"
    );
    assert!(stdout.contains("\n  💬 /tinh "), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("published ") && l.ends_with(": exact")),
        "{stdout}"
    );
}

/// Ctrl-C in the terminal that runs the quick start signals the whole foreground process
/// group, the demo's own Redis included: the demo still stops cleanly, counts what it
/// published exactly, and leaves no Redis behind.
#[test]
fn ctrl_c_stops_the_demo_with_the_counts_exact() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(["demo", "--speed", "86400", "--days", "60"])
        .args(["--duration", "600", "--http-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // A group of its own, as a shell gives a foreground job; the signal goes to it all.
        .process_group(0)
        .spawn()
        .expect("tiendo runs");
    let group = child.id();
    let (lines, heard) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // The first simulated day's progress line: the pipeline and its Redis are busy.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !seen.iter().any(|l: &String| l.starts_with("── ")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match heard.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no day went by:\n{}", seen.join("\n"));
            }
        }
    }
    let redis_port: u16 = seen[0]
        .split("redis://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no Redis address in {:?}", seen[0]));
    let status = Command::new("kill")
        .args(["-INT", "--", &format!("-{group}")])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = child.wait().expect("the demo ends");
    reader.join().expect("stdout read");
    seen.extend(heard.try_iter());
    let stdout = seen.join("\n");
    assert!(status.success(), "{status}\n{stdout}");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("published ") && l.ends_with(": exact")),
        "{stdout}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err(),
        "the demo's Redis outlived it"
    );
}
