//! Tansu, an independent Kafka-compatible broker, as a child process on a free port with its
//! log in memory. `scripts/ensure-deps test` installs it (into ~/.cache/tansu-0.6.0); `TANSU`
//! names another binary.
//!
//! Two of its ways matter to tests: a member that dies without leaving keeps its partitions
//! (no session expiry), so kill tests there use static membership; and its offset queries
//! answer low, so tests count what Redis holds rather than trust its watermarks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

pub struct Tansu {
    child: Child,
    port: u16,
}

/// The Tansu binary: `$TANSU`, the cache `scripts/ensure-deps` fills, or PATH.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        return path.into();
    }
    let cached = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/tansu-0.6.0/bin/tansu");
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
        panic!("Tansu is not installed: run `scripts/ensure-deps test` (or set TANSU)")
    })
}

impl Tansu {
    /// A broker with these topics and partition counts, answering.
    pub fn start(topics: &[(&str, i32)]) -> Tansu {
        let port = tiendo::embedded::free_port().unwrap();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let tansu = Tansu { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu.create_topics(topics);
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
