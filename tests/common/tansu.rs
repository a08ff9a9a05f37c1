//! Tansu, an independent Kafka-compatible broker, as a child process on a free port with its
//! log in memory (or on disk, for a broker that is stopped and started again).
//! `scripts/ensure-deps test` installs it (into ~/.cache/tansu-0.6.0); `TANSU` names another
//! binary.
//!
//! Two of its ways matter to tests: a member that dies without leaving keeps its partitions
//! (no session expiry), so kill tests there use static membership; and its offset queries
//! answer low, so tests count what Redis holds rather than trust its watermarks.
//!
//! A broker that wants a SASL/SCRAM login, or keeps its log across a restart, needs another
//! build: Tansu 0.6 keeps SCRAM users only in its SQL storage engines (its memory and S3 engine
//! drops them), so `scripts/ensure-deps test` also installs Tansu with the `libsql` feature (into ~/.cache/tansu-0.6.0-libsql;
//! `TANSU_SQL` names another binary). That broker is reached over TLS, through a front of
//! `tls.rs`: Tansu serves no TLS of its own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use super::tls::{Certificates, TlsFront};

pub struct Tansu {
    child: Child,
    /// The port clients use: Tansu's own, or its TLS front's.
    port: u16,
    /// Where the SQLite database of a broker that wants a login lives.
    dir: Option<tempfile::TempDir>,
    /// A broker reached over TLS: its front, and the certificates it serves.
    tls: Option<(TlsFront, Certificates)>,
}

/// Tansu's arguments for SQLite storage, in the broker's directory: a log that outlives the
/// process.
const SQL: [&str; 4] = [
    "--cluster-id",
    "tiendo-test",
    "--storage-engine",
    "sqlite://tansu.db",
];

/// The SCRAM login of `Tansu::start_with_login_over_tls`.
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
}

/// The Tansu binary: `$TANSU`, the cache `scripts/ensure-deps` fills, or PATH.
pub fn binary() -> PathBuf {
    cached_or_on_path("TANSU", ".cache/tansu-0.6.0/bin/tansu")
}

/// Tansu built with SQL storage: `$TANSU_SQL`, the cache `scripts/ensure-deps` fills, or PATH.
pub fn sql_binary() -> PathBuf {
    cached_or_on_path("TANSU_SQL", ".cache/tansu-0.6.0-libsql/bin/tansu")
}

fn cached_or_on_path(var: &str, cache: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(cache);
    if cached.exists() {
        return cached;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| {
        panic!("Tansu is not installed: run `scripts/ensure-deps test` (or set {var})")
    })
}

impl Tansu {
    /// A broker with these topics and partition counts, answering.
    pub fn start(topics: &[(&str, i32)]) -> Tansu {
        Tansu::start_on(tiendo::embedded::free_port().unwrap(), topics)
    }

    /// The same, on `port`: a broker that comes up where clients have been calling.
    pub fn start_on(port: u16, topics: &[(&str, i32)]) -> Tansu {
        let tansu = Tansu::listening(
            binary(),
            &["--storage-engine", "memory://tansu/"],
            None,
            port,
            port,
        );
        tansu.create_topics(topics);
        tansu
    }

    /// A broker with these topics whose log is kept on disk (SQLite storage), so it can be
    /// stopped and started again on it (`stop`, `start_again`).
    pub fn start_persistent(topics: &[(&str, i32)]) -> Tansu {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = tiendo::embedded::free_port().unwrap();
        let tansu = Tansu::listening(sql_binary(), &SQL, Some(dir), port, port);
        tansu.create_topics(topics);
        tansu
    }

    /// Stops a persistent broker as an operator would (SIGTERM; SIGKILL after 10 s), keeping
    /// its log.
    pub fn stop(&mut self) {
        assert!(
            self.dir.is_some() && self.tls.is_none(),
            "a persistent broker"
        );
        super::signal(&self.child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("tansu's status").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a stopped persistent broker again on its port and its log.
    pub fn start_again(&mut self) {
        let dir = self.dir.take();
        let again = Tansu::listening(sql_binary(), &SQL, dir, self.port, self.port);
        // The old child has exited: dropping it reaps nothing more.
        drop(std::mem::replace(self, again));
    }

    /// A broker that serves only clients logged in as `login` with SCRAM-SHA-512 or -256, over
    /// TLS (SASL_SSL) with the server certificate of `certs`.
    /// The topics and the user are made through an open broker on the same database first:
    /// once `--authentication` is on, creating a user needs a login already.
    pub fn start_with_login_over_tls(
        topics: &[(&str, i32)],
        login: &Login,
        certs: Certificates,
    ) -> Tansu {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = tiendo::embedded::free_port().unwrap();
        let mut open = Tansu::listening(sql_binary(), &SQL, Some(dir), port, port);
        open.create_topics(topics);
        for mechanism in ["scram512", "scram256"] {
            // `tansu user create` exits 0 whatever the broker answers: a user that was not
            // made shows later, as the test's clients being refused.
            let status = Command::new(sql_binary())
                .args(["user", "create", "--broker"])
                .arg(format!("tcp://127.0.0.1:{}", open.port))
                .args(["--mechanism", mechanism, login.user, login.password])
                .stdout(Stdio::null())
                .status()
                .expect("tansu user create runs");
            assert!(status.success(), "tansu user create {mechanism}");
        }
        let dir = open.dir.take();
        drop(open);
        // The front's port is taken first, so that Tansu advertises it and never its own.
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the front");
        let front_port = front.local_addr().unwrap().port();
        let mut tansu = Tansu::listening(
            sql_binary(),
            &[&SQL[..], &["--authentication"]].concat(),
            dir,
            tiendo::embedded::free_port().unwrap(),
            front_port,
        );
        tansu.tls = Some((TlsFront::start(front, &certs, tansu.port), certs));
        tansu.port = front_port;
        tansu
    }

    /// `program broker` on `port` with `args` (its storage), in `dir` if given, once it
    /// accepts connections; it tells clients to connect to `advertised`.
    fn listening(
        program: PathBuf,
        args: &[&str],
        dir: Option<tempfile::TempDir>,
        port: u16,
        advertised: u16,
    ) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{advertised}");
        let mut broker = Command::new(program);
        broker
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(dir) = &dir {
            broker.current_dir(dir.path());
        }
        let tansu = Tansu {
            child: broker.spawn().expect("tansu starts"),
            port,
            dir,
            tls: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap_servers())
            .create()
            .expect("admin client");
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        // On a thread of its own: callers may be inside a runtime already.
        std::thread::scope(|s| {
            s.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let results = runtime
                    .block_on(admin.create_topics(&new, &AdminOptions::new()))
                    .expect("create topics");
                for r in results {
                    r.expect("topic created");
                }
            });
        });
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
