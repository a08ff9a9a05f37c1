//! The deployments in deploy/, run the way they are shipped: `tiendo` started with the
//! environment, arguments and mounted files of the Compose service and of the Kubernetes
//! Deployment (its ConfigMap, its Secret references filled with test values, and the
//! service-link variables Kubernetes adds for every Service in deploy/k8s/), against a real
//! Redis and a real Kafka-protocol broker. Only host names and ports are rewritten to the
//! private test servers, and container paths to where their mounts are. Each must become
//! ready, pass its own health checks, count what is published exactly and stop cleanly on
//! SIGTERM; any change to those files that breaks startup fails here.
//!
//! Kubernetes' ConfigMap logs in to Kafka with SASL_SSL and SCRAM: the test runs it as shipped
//! against a Tansu that wants the same SCRAM login, behind a TLS front (common/tls.rs), the
//! password from the Secret, and no secret may reach the log. One thing is added: the broker's
//! certificate comes from the test's own CA, which the image's trust store would not hold, so
//! the environment names it (`ssl.ca.location`), as an operator with a private cluster CA would.
//!
//! scripts/validate-deploy checks the files with the ecosystem's own validators (the
//! Compose schema, kubernetes-validate, promtool, a Dockerfile parse); it runs here too.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use yaml_rust2::{Yaml, YamlLoader};

use common::chat::ChatServer;
use common::tansu::Login;
use common::{aof, events, Env, Expected};
use tiendo::events::CodeScheme;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// How one deployment starts tiendo: arguments, environment, and files at container paths.
struct Shipped {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Container path → contents.
    files: BTreeMap<String, String>,
    /// Where the HTTP server listens inside the container.
    listen: String,
}

/// The tiendo service of deploy/compose.yaml.
fn compose() -> Shipped {
    let doc = &yaml("deploy/compose.yaml")[0];
    let svc = &doc["services"]["tiendo"];
    let args = svc["command"].as_vec().unwrap().iter().map(text).collect();
    let env = svc["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect();
    let files = svc["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(text)
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
            let contents = std::fs::read_to_string(root().join("deploy").join(host)).unwrap();
            (container.to_string(), contents)
        })
        .collect();
    Shipped {
        args,
        env,
        files,
        listen: "0.0.0.0:9464".into(),
    }
}

/// The service-link variables Kubernetes gives every pod for each Service of the namespace
/// (`enableServiceLinks`, on by default), as `kubelet` names them.
fn service_links(services: &[&Yaml]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, svc) in services.iter().enumerate() {
        let name = text(&svc["metadata"]["name"])
            .to_uppercase()
            .replace('-', "_");
        let ip = format!("10.96.0.{}", 10 + i);
        let ports = svc["spec"]["ports"].as_vec().unwrap();
        for (j, p) in ports.iter().enumerate() {
            let port = text(&p["port"]);
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            let lower = proto.to_lowercase();
            if j == 0 {
                out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
                out.push((format!("{name}_SERVICE_PORT"), port.clone()));
                out.push((format!("{name}_PORT"), format!("{lower}://{ip}:{port}")));
            }
            if let Some(pname) = p["name"].as_str() {
                let pname = pname.to_uppercase().replace('-', "_");
                out.push((format!("{name}_SERVICE_PORT_{pname}"), port.clone()));
            }
            let base = format!("{name}_PORT_{port}_{proto}");
            out.push((base.clone(), format!("{lower}://{ip}:{port}")));
            out.push((format!("{base}_PROTO"), lower.clone()));
            out.push((format!("{base}_PORT"), port.clone()));
            out.push((format!("{base}_ADDR"), ip.clone()));
        }
    }
    out
}

/// The Deployment of deploy/k8s/, its ConfigMap mounted, its Secret filled with `secrets`.
fn kubernetes(secrets: &BTreeMap<&str, String>, pod: &str) -> Shipped {
    let manifests: Vec<Yaml> = std::fs::read_dir(root().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("secret.example.yaml") && !p.ends_with("kustomization.yaml"))
        .flat_map(|p| yaml(p.strip_prefix(root()).unwrap().to_str().unwrap()))
        .collect();
    let of_kind = |kind: &str| -> Vec<&Yaml> {
        manifests
            .iter()
            .filter(|m| m["kind"].as_str() == Some(kind))
            .collect()
    };
    let deployment = of_kind("Deployment")[0];
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let args = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(text)
        .collect();

    let mut env = service_links(&of_kind("Service"));
    env.push(("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()));
    env.push(("KUBERNETES_SERVICE_PORT".into(), "443".into()));
    for e in container["env"].as_vec().unwrap() {
        let name = text(&e["name"]);
        let value = if !e["value"].is_badvalue() {
            text(&e["value"])
        } else if let Some(field) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            assert_eq!(field, "metadata.name", "{name}");
            pod.to_string()
        } else {
            let key = text(&e["valueFrom"]["secretKeyRef"]["key"]);
            assert_eq!(
                text(&e["valueFrom"]["secretKeyRef"]["name"]),
                "tiendo-secrets"
            );
            secrets
                .get(key.as_str())
                .unwrap_or_else(|| panic!("no test value for secret key {key}"))
                .clone()
        };
        env.push((name, value));
    }

    // Volumes from ConfigMaps, mounted where the container says.
    let mut files = BTreeMap::new();
    for mount in container["volumeMounts"].as_vec().unwrap() {
        let volume = spec["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let Some(map_name) = volume["configMap"]["name"].as_str() else {
            continue; // an emptyDir
        };
        let map = of_kind("ConfigMap")
            .into_iter()
            .find(|m| m["metadata"]["name"].as_str() == Some(map_name))
            .unwrap_or_else(|| panic!("no ConfigMap {map_name}"));
        for item in volume["configMap"]["items"].as_vec().unwrap() {
            let key = text(&item["key"]);
            let path = format!("{}/{}", text(&mount["mountPath"]), text(&item["path"]));
            files.insert(path, text(&map["data"][key.as_str()]));
        }
    }
    Shipped {
        args,
        env,
        files,
        listen: "0.0.0.0:9464".into(),
    }
}

/// Runs a shipped deployment against this test's servers, after `rewrites` (text → text, for
/// host names, ports and container paths) applied to its environment and files.
struct Running {
    child: std::process::Child,
    base: String,
    /// Its standard error, read as it comes (a full pipe would stop it).
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The thread reading it, done once the process has exited and the pipe is drained.
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn start(shipped: &Shipped, mut rewrites: Vec<(String, String)>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let port = tiendo::embedded::free_port().unwrap();
    rewrites.push((shipped.listen.clone(), format!("127.0.0.1:{port}")));
    // Container paths: each mounted file lives under the temporary directory.
    for path in shipped.files.keys() {
        let parent = Path::new(path)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let here = dir.path().join(parent.trim_start_matches('/'));
        rewrites.push((parent, here.to_str().unwrap().to_string()));
    }
    let apply = |s: &str| {
        rewrites
            .iter()
            .fold(s.to_string(), |s, (from, to)| s.replace(from, to))
    };
    for (path, contents) in &shipped.files {
        let file = PathBuf::from(apply(path));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, apply(contents)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(&shipped.args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(shipped.env.iter().map(|(k, v)| (k.clone(), apply(v))))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tiendo starts");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Running {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
        reader: Some(reader),
        _dir: dir,
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let r = client.get(url).send().await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

async fn wait_ready(running: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = get(&format!("{}/readyz", running.base)).await {
            return;
        }
        if let Some(status) = running.child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "tiendo exited with {status} before it was ready:\n{}",
                running.log()
            );
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", running.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes a mix of events (one with a code only the 63-unit table has, sent without its
/// table) and checks they are counted exactly.
async fn count(env: &Env, running: &Running) {
    let mut g = env.generator(31);
    let mut sent = events(&mut g, 400);
    // Sent twice: the re-send is neither counted nor noted as inferred again.
    let legacy = g.record_for("94", CodeScheme::Unspecified, "civil_status", 7, Utc::now());
    sent.extend([legacy.clone(), legacy]);
    let mut expected = Expected::default();
    expected.add_all(&sent[..400]);
    // Sóc Trăng's old code, counted toward its legacy unit.
    *expected
        .totals
        .entry("o94|r.civil_status".into())
        .or_default() += 7;
    env.publish(&sent).await;
    let snap = env.wait_consumed(Duration::from_secs(120)).await;
    expected.assert_matches(&snap);
    // Redis holds the batch a moment before the pipeline counts it in its metrics: wait for
    // the re-send to be counted as one (or more, should the producer have sent one twice).
    let inferred = "tiendo_events_inferred_total{reason=\"legacy_code_inferred\"} 1";
    let re_sent = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("tiendo_events_total{")
                && l.contains("outcome=\"duplicate\"")
                && l.contains("topic=\"record_digitized\"")
                && l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) >= Some(1.0)
        })
    };
    let counted = |m: &str| re_sent(m) && m.lines().any(|l| l == inferred);
    let metrics = common::wait_metrics(&running.base, Duration::from_secs(10), counted).await;
    assert!(counted(&metrics), "{metrics}");
}

/// Stops tiendo with SIGTERM, expects a clean exit and returns its log.
async fn stop(mut running: Running) -> String {
    let stopped = Command::new("kill")
        .args(["-s", "TERM", &running.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = running.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(reader) = running.reader.take() {
        reader.join().unwrap();
    }
    let log = running.log();
    assert!(status.success(), "exit {status}:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_service_runs_as_shipped() {
    let env = Env::start();
    let shipped = compose();
    assert!(shipped.env.iter().any(|(k, _)| k == "TIENDO_CONFIG"));
    let redis = env.settings.redis.url.expose().to_string();
    let mut running = start(
        &shipped,
        vec![
            ("kafka:9092".into(), env.settings.kafka.brokers.clone()),
            ("redis://redis:6379".into(), redis),
        ],
    );
    wait_ready(&mut running).await;
    assert_eq!(
        get(&format!("{}/healthz", running.base)).await.unwrap().0,
        200
    );

    // The service's own health check, as Docker runs it.
    let doc = &yaml("deploy/compose.yaml")[0];
    let check: Vec<String> = doc["services"]["tiendo"]["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert_eq!(check[0], "CMD");
    let port = running.base.rsplit(':').next().unwrap().to_string();
    let healthy = Command::new(&check[1])
        .args(check[2..].iter().map(|a| a.replace("9464", &port)))
        .status()
        .unwrap();
    assert!(healthy.success(), "the compose health check fails");

    count(&env, &running).await;
    stop(running).await;
}

/// The compose file's Redis, started by its own command (the image's entrypoint left out, the
/// data volume and the mounted script mapped to this machine), survives two crashes with a
/// torn transaction at the end of its AOF without applying half of it.
#[test]
fn the_compose_redis_repairs_its_aof_before_loading_it() {
    let doc = &yaml("deploy/compose.yaml")[0];
    let service = &doc["services"]["redis"];
    let mounts: BTreeMap<String, String> = service["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let mount = text(v);
            let (from, to) = mount.split_once(':')?;
            Some((to.trim_end_matches(":ro").to_string(), from.to_string()))
        })
        .collect();
    let data = tempfile::tempdir().unwrap();
    let port = tiendo::embedded::free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let args: Vec<String> = service["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(text)
        .filter(|a| a != "docker-entrypoint.sh")
        .map(|a| match mounts.get(&a) {
            Some(v) if v == "redis-data" => data.path().display().to_string(),
            Some(host) => root().join("deploy").join(host).display().to_string(),
            None => a,
        })
        .collect();
    let start = || {
        let mut child = Command::new(&args[0])
            .args(&args[1..])
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("the compose redis command starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the compose redis command stopped: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the compose redis never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        common::Killed(child)
    };
    let crash = drop::<common::Killed>;
    let redis = start();
    aof::write_pair(&url, 1);
    crash(redis);
    aof::append_torn_transaction(data.path());
    let redis = start();
    aof::write_pair(&url, 2);
    crash(redis);
    let redis = start();
    assert_eq!(
        aof::read_pair(&url),
        (2, 2),
        "nothing of the torn script applied"
    );
    crash(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_deployment_runs_as_shipped() {
    // The user the ConfigMap logs in as, with the password its Secret holds.
    let mut env = Env::start_tansu_with_login(&Login {
        user: "tiendo",
        password: "s3cret-sasl",
    });
    // The Secret's Redis URL carries a password, as production's does.
    let mut conn = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-redis")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let redis_url = format!("redis://:s3cret-redis@127.0.0.1:{}", env.redis.port());
    env.settings.redis.url = tiendo::config::Secret::new(&redis_url);

    let telegram = ChatServer::start(vec![]).await;
    let secrets = BTreeMap::from([
        ("redis-url", redis_url),
        ("kafka-sasl-password", "s3cret-sasl".to_string()),
        ("telegram-token", "123456:s3cret-token".to_string()),
    ]);
    let pod = "tiendo-7d9c5b6f4-x2x4z";
    let mut shipped = kubernetes(&secrets, pod);
    let names: Vec<&str> = shipped.env.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "TIENDO_CONFIG",
        "TIENDO_SERVICE_HOST",
        "TIENDO_PORT",
        "TIENDO_PORT_9464_TCP_ADDR",
        "TIENDO_SERVICE_PORT_HTTP_METRICS",
        "TIENDO_KAFKA__GROUP_INSTANCE_ID",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    // The test's CA (see the module's comment).
    shipped.env.push((
        "TIENDO_KAFKA__PROPERTIES__SSL_CA_LOCATION".into(),
        env.settings.kafka.properties["ssl.ca.location"]
            .expose()
            .to_string(),
    ));
    let mut running = start(
        &shipped,
        vec![
            (
                "kafka-bootstrap.kafka.svc:9093".into(),
                env.settings.kafka.brokers.clone(),
            ),
            ("https://api.telegram.org".into(), telegram.url()),
        ],
    );
    wait_ready(&mut running).await;
    // The probes the Deployment declares.
    for path in ["/healthz", "/readyz"] {
        let (code, _) = get(&format!("{}{path}", running.base)).await.unwrap();
        assert_eq!(code, 200, "{path}");
    }

    count(&env, &running).await;
    // The task force's Telegram receiver, configured from the ConfigMap and the Secret, gets
    // the deployment's first summary in its group chat. Waited for while tiendo runs: once
    // stopped, it sends nothing more.
    // At least one evaluation interval (1 min by default) in case the first was held.
    let deadline = Instant::now() + Duration::from_secs(120);
    while telegram.accepted().is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing reached Telegram:\n{}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = stop(running).await;
    // JSON logs, and no secret in any line.
    assert!(log
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    for secret in ["s3cret-redis", "s3cret-sasl", "s3cret-token"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    // Kubernetes' service links start nothing wrong, and are named once as not configuration.
    let links: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("are not configuration"))
        .collect();
    assert_eq!(links.len(), 1, "{log}");
    assert!(links[0].contains("TIENDO_SERVICE_HOST"), "{}", links[0]);
    let got = &telegram.accepted()[0];
    assert_eq!(got.path, "/bot123456:s3cret-token/sendMessage");
    assert_eq!(got.body["chat_id"], "-1001234567890");
}

#[test]
fn every_deployment_file_passes_scripts_validate_deploy() {
    let out = Command::new(root().join("scripts/validate-deploy"))
        .current_dir(root())
        .output()
        .expect("scripts/validate-deploy runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/validate-deploy failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // One file of each group, to notice a validator that silently checks nothing.
    for file in [
        "deploy/compose.yaml",
        "deploy/Dockerfile",
        "deploy/k8s/deployment.yaml",
        "deploy/prometheus/tiendo-alerts.test.yml",
        "deploy/grafana/dashboards/tiendo.json",
    ] {
        let ok = format!("ok {file} (");
        assert!(
            stdout.lines().any(|l| l.starts_with(&ok)),
            "{file} was not checked:\n{stdout}"
        );
    }
}
