//! Private infrastructure for the demo and the tests: a `redis-server` child process on a
//! free port, librdkafka's in-process mock Kafka cluster, and a stand-in for Telegram's Bot
//! API ([`telegram`]). Nothing here is used by `tiendo run`.

pub mod telegram;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "redis-server was not found on PATH. Install it first: `sudo apt-get install redis-server` \
         (Debian, Ubuntu), `sudo dnf install redis` (Fedora) or `brew install redis` (macOS)"
    )]
    RedisMissing,
    #[error("redis-server did not start: {0}")]
    RedisStart(String),
    /// Its port was taken between being found free and being bound.
    #[error("redis-server could not have port {port}: {detail}")]
    RedisPort { port: u16, detail: String },
    #[error("the AOF could not be repaired: {0}")]
    AofRepair(String),
    #[error("mock kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A free TCP port on loopback (free when asked; the caller binds it soon after).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The log file of a private `redis-server`, and where its standard error goes, in its data
/// directory.
const LOG: &str = "redis.log";
const STDERR: &str = "redis.stderr";

/// A private `redis-server` with append-only persistence in its own directory, so a test can
/// kill it and start it again with its data.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    repaired: Option<String>,
}

impl RedisServer {
    pub fn start() -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_on(free_port()?, extra)
    }

    /// Starts on `port`, or on another free port if that one is taken by the time Redis binds
    /// it (a port found free is free only when asked).
    fn start_on(port: u16, extra: &[&str]) -> Result<RedisServer, EmbeddedError> {
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            repaired: None,
        };
        for _ in 0..2 {
            match server.restart() {
                Err(EmbeddedError::RedisPort { .. }) => server.port = free_port()?,
                started => return started.map(|()| server),
            }
        }
        server.restart().map(|()| server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Bytes Redis has allocated (`used_memory`), for benchmarks' memory per event.
    pub fn used_memory(&self) -> redis::RedisResult<i64> {
        let info = self.info("memory")?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| no_field("no used_memory"))
    }

    /// CPU seconds Redis has used, user and system, for benchmarks' CPU per event.
    pub fn used_cpu(&self) -> redis::RedisResult<f64> {
        self.cpu_times("")
    }

    /// CPU seconds Redis's finished children (AOF rewrites, snapshots) have used, which
    /// [`RedisServer::used_cpu`] leaves out; with how many AOF rewrites there were.
    pub fn used_cpu_children(&self) -> redis::RedisResult<(f64, u64)> {
        let rewrites = self
            .info("persistence")?
            .lines()
            .find_map(|l| l.strip_prefix("aof_rewrites:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| no_field("no aof_rewrites"))?;
        Ok((self.cpu_times("_children")?, rewrites))
    }

    fn cpu_times(&self, suffix: &str) -> redis::RedisResult<f64> {
        let info = self.info("cpu")?;
        let (sys, user) = (
            format!("used_cpu_sys{suffix}:"),
            format!("used_cpu_user{suffix}:"),
        );
        let times: Vec<f64> = info
            .lines()
            .filter_map(|l| {
                l.strip_prefix(sys.as_str())
                    .or_else(|| l.strip_prefix(user.as_str()))
            })
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        match times.len() {
            2 => Ok(times.iter().sum()),
            _ => Err(no_field("no used_cpu_sys and used_cpu_user")),
        }
    }

    fn info(&self, section: &str) -> redis::RedisResult<String> {
        let mut conn = redis::Client::open(self.url())?.get_connection()?;
        redis::cmd("INFO").arg(section).query(&mut conn)
    }

    /// The data directory (the AOF lives in its `appendonlydir`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills the server at once, as a crash would (what was fsynced survives).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What `redis-check-aof --fix` said at the last start, if it had to cut the AOF.
    pub fn repaired(&self) -> Option<&str> {
        self.repaired.as_deref()
    }

    /// Starts the server (again) on the same port and data directory; waits until it answers.
    ///
    /// Runs Redis as the README asks after a crash: the AOF is repaired by `redis-check-aof`
    /// first, and `aof-load-truncated no` keeps Redis from repairing it by itself. Redis 7.0
    /// cuts a torn transaction after its last whole command, leaving a `MULTI` with no `EXEC`;
    /// the next transaction written after it then completes it at a later start, so half of a
    /// batch script is applied again without its offset. `redis-check-aof` cuts before the
    /// `MULTI`.
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.kill();
        self.repaired = repair_aof(self.dir.path())?;
        // Each start's own log, so that what stopped an earlier one is not read as this one's.
        match std::fs::remove_file(self.dir.path().join(LOG)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--aof-load-truncated",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            // After `extra`, so they hold: the child is the server, and its log says why it
            // stopped.
            .args(["--daemonize", "no", "--logfile", LOG])
            .stdout(Stdio::null())
            // Where it says what stops it before its log is open (a bad argument).
            .stderr(std::fs::File::create(self.dir.path().join(STDERR))?)
            // Its own process group: Ctrl-C in a terminal signals the whole foreground group,
            // and Redis shuts down on SIGINT; the demo, stopping, still needs it to settle its
            // counts. Its owner stops it (on drop).
            .process_group(0)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => EmbeddedError::RedisMissing,
                _ => EmbeddedError::Io(e),
            })?;
        self.child = Some(child);
        let ours = self.dir.path().canonicalize()?;
        // Long enough for a restart to load its AOF on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let said = |file: &str| {
                    let text = std::fs::read_to_string(self.dir.path().join(file));
                    let text = text.unwrap_or_default();
                    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                    lines[lines.len().saturating_sub(4)..].join(" / ")
                };
                let (log, stderr) = (said(LOG), said(STDERR));
                let detail = format!("it exited ({status}): {log} {stderr}");
                // Its own port, or its cluster bus port (10,000 above, so at most 55535).
                let taken = ["Address already in use", "port number must be"];
                return Err(if taken.iter().any(|t| detail.contains(t)) {
                    EmbeddedError::RedisPort {
                        port: self.port,
                        detail,
                    }
                } else {
                    EmbeddedError::RedisStart(detail)
                });
            }
            // A PING is answered once the data is loaded; then whose server answered: ours
            // (its data directory is ours), or another that holds the port.
            let answered = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| {
                    redis::cmd("PING").query::<String>(&mut c)?;
                    redis::cmd("CONFIG")
                        .arg("GET")
                        .arg("dir")
                        .query::<Vec<String>>(&mut c)
                });
            match answered {
                Ok(config) => {
                    let theirs = config.get(1).map(std::path::PathBuf::from);
                    if theirs.as_ref() == Some(&ours) {
                        return Ok(());
                    }
                    self.kill();
                    return Err(EmbeddedError::RedisPort {
                        port: self.port,
                        detail: format!("a server of {theirs:?} answers there"),
                    });
                }
                // Not listening yet, or still loading its data.
                Err(e) if Instant::now() > deadline => {
                    return Err(EmbeddedError::RedisStart(e.to_string()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Repairs the AOF in `dir`, if there is one, with `redis-check-aof --fix`. `Some(report)`
/// when it had to cut something.
fn repair_aof(dir: &std::path::Path) -> Result<Option<String>, EmbeddedError> {
    let manifest = dir.join("appendonlydir").join("appendonly.aof.manifest");
    if !manifest.exists() {
        return Ok(None);
    }
    let mut fix = Command::new("redis-check-aof")
        .arg("--fix")
        .arg(&manifest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| EmbeddedError::AofRepair(format!("redis-check-aof: {e}")))?;
    if let Some(mut stdin) = fix.stdin.take() {
        use std::io::Write as _;
        // It asks before cutting; a valid AOF never asks.
        let _ = stdin.write_all(b"y\n");
    }
    let out = fix.wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(EmbeddedError::AofRepair(said));
    }
    Ok(said.contains("Successfully truncated").then_some(said))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// librdkafka's mock cluster: a real Kafka protocol server inside this process, with consumer
/// groups. Its fetch path is slow (thousands of messages a second): fine for demos and tests,
/// not a benchmark broker.
pub struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl MockKafka {
    /// A one-broker cluster with these topics and partition counts.
    pub fn start(topics: &[(&str, i32)]) -> Result<MockKafka, EmbeddedError> {
        let cluster = MockCluster::new(1)?;
        for (topic, partitions) in topics {
            cluster.create_topic(topic, *partitions, 1)?;
        }
        Ok(MockKafka { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The cluster itself, for fault injection (a broker down, requests failing).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}

fn no_field(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose port another Redis holds is told so, not handed the other's data; a
    /// fresh one takes another port, and answers there itself.
    #[test]
    fn a_port_held_by_another_server_is_refused_and_a_fresh_start_moves_on() {
        let holder = RedisServer::start().expect("redis-server starts");
        let mut late = RedisServer {
            child: None,
            port: holder.port(),
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
            repaired: None,
        };
        let refused = late.restart();
        assert!(
            matches!(refused, Err(EmbeddedError::RedisPort { port, .. }) if port == holder.port()),
            "{refused:?}"
        );
        assert!(late.child.is_none(), "its redis-server is not left running");

        let fresh = RedisServer::start_on(holder.port(), &[]).expect("it moves to another port");
        assert_ne!(fresh.port(), holder.port());
        let mut conn = redis::Client::open(fresh.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let dir: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("dir")
            .query(&mut conn)
            .unwrap();
        assert_eq!(
            std::path::PathBuf::from(&dir[1]),
            fresh.dir().canonicalize().unwrap()
        );
    }

    /// A start that fails for another reason says Redis's own why, and is not retried as a
    /// port taken.
    #[test]
    fn a_server_that_will_not_start_says_why() {
        let failed = RedisServer::start_with(&["--no-such-option", "yes"]);
        match failed {
            Err(EmbeddedError::RedisStart(why)) => {
                assert!(why.contains("no-such-option"), "{why}")
            }
            other => panic!("{:?}", other.err()),
        }
    }
}
