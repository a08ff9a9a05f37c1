//! Graceful shutdown of `tiendo run` as Kubernetes and a terminal do it: SIGTERM and Ctrl-C
//! (SIGINT) mid-stream. The process exits 0 promptly, having stored the batch in hand,
//! revoked its partitions and closed its consumer (which sends the group a LeaveGroup, these
//! being dynamic members), and the counts stay exact across the restarts. A SIGTERM while the
//! process starts is a graceful stop too.
//!
//! Whether the broker saw the member leave cannot be read back here: librdkafka's mock cluster
//! answers no ListGroups/DescribeGroups, and its coordinator waits out the session timeout
//! before a new member's first assignment even after a clean leave (measured with a plain
//! rdkafka consumer too). So the test checks what the process did, from its own log.

mod common;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{events, signal, Env, Expected, Killed, Log};

const SETTLE: Duration = Duration::from_secs(120);

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "tiendo did not stop within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_ctrl_c_store_the_batch_in_hand_and_leave_the_group() {
    let env = Env::start();
    let mut g = env.generator(21);
    let mut expected = Expected::default();
    for (sig, said) in [("TERM", "SIGTERM: stopping"), ("INT", "Ctrl-C: stopping")] {
        let mut cmd = env.process_command();
        cmd.env(
            "TIENDO_LOG__FILTER",
            "info,librdkafka=off,tiendo::pipeline=debug",
        )
        .env("RUST_LOG", "info,librdkafka=off,tiendo::pipeline=debug")
        .env("TIENDO_LOG__FORMAT", "json")
        .stderr(Stdio::piped());
        let mut child = Killed(cmd.spawn().expect("tiendo starts"));
        let part = events(&mut g, 3000);
        expected.add_all(&part);
        // Read before publishing: a replica that stored the whole part first would leave no
        // progress to wait for.
        let before = env.progress().await;
        env.publish(&part).await;
        env.wait_progress(before, SETTLE).await;

        signal(&child.0, sig);
        let status = wait_exit(&mut child.0, Duration::from_secs(30));
        assert!(status.success(), "SIG{sig}: exited with {status}");
        let log = common::stderr_of(&mut child.0);
        // JSON logs: one object per line, in order.
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect();
        let messages: Vec<String> = lines
            .iter()
            .filter_map(|v| v["fields"]["message"].as_str().map(String::from))
            .collect();
        // A stored batch is logged inside its span, which names partitions and offsets:
        // `(topic, partition, first offset, next offset)`.
        let batch = lines
            .iter()
            .find(|v| v["fields"]["message"] == "batch stored")
            .unwrap_or_else(|| panic!("no batch logged: {messages:?}"));
        assert_eq!(batch["span"]["name"], "batch", "{batch}");
        let partitions = batch["span"]["partitions"].as_str().unwrap_or_default();
        assert!(partitions.contains("(\"tiendo."), "{batch}");
        let at = |m: &str| {
            messages
                .iter()
                .position(|x| x == m)
                .unwrap_or_else(|| panic!("SIG{sig}: no {m:?} in {messages:?}"))
        };
        assert!(at(said) < at("partitions revoked"));
        assert!(at("partitions revoked") < at("consumer closed"));
        assert!(at("consumer closed") < at("tiendo stopped"));
    }
    // Stopped while starting: the handlers are in place before the first log line, so this
    // is a graceful stop too, not death by the signal's default action.
    let mut child = Killed(info_logged(&env).spawn().expect("tiendo starts"));
    let mut log = Log::of(&mut child.0);
    log.wait_for("tiendo starting", SETTLE);
    let lines = terminate(&mut child, log, "while starting");
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM: stopping")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("tiendo stopped")),
        "{lines:#?}"
    );

    // Stopped once it has joined the group and counted everything.
    let mut child = Killed(info_logged(&env).spawn().expect("tiendo starts"));
    let mut log = Log::of(&mut child.0);
    log.wait_for("partitions assigned", SETTLE);
    let snap = env.wait_consumed(SETTLE).await;
    terminate(&mut child, log, "after catching up");
    expected.assert_matches(&snap);
}

/// Sends SIGTERM and requires exit 0 within 30 s; returns the whole log.
fn terminate(child: &mut Killed, log: Log, when: &str) -> Vec<String> {
    signal(&child.0, "TERM");
    let status = wait_exit(&mut child.0, Duration::from_secs(30));
    let lines = log.rest();
    assert!(status.success(), "SIGTERM {when}: {status}; {lines:#?}");
    lines
}

/// `tiendo run` logging at `info` to a pipe, in plain text.
fn info_logged(env: &Env) -> Command {
    let mut cmd = env.process_command();
    cmd.env("TIENDO_LOG__FILTER", "info,librdkafka=off")
        .stderr(Stdio::piped());
    cmd
}
