//! The HTTP side as operators and the task force meet it: probes, metrics, the provinces API
//! in both views, and the status page rendered by a real headless Chromium, screenshot checked.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use tokio_util::sync::CancellationToken;

use common::browser::{chromium, count_color};
use common::{seed_stalls, stall_targets, stall_targets_and, Env};
use tiendo::clock::{SharedClock, SystemClock};
use tiendo::pipeline::Pipeline;
use tiendo::rules::evaluator::Evaluator;
use tiendo::rules::ledger::Ledger;
use tiendo::store;

struct Served {
    base: String,
    stop: CancellationToken,
}

/// The seeded season, its alerts evaluated (firing at once), a pipeline consuming and the
/// HTTP server up.
async fn serve(env: &Env) -> Served {
    serve_and(env, |_| String::new()).await
}

/// [`serve`] with the target rows `more` makes of the time the season ends.
async fn serve_and(env: &Env, more: impl Fn(chrono::DateTime<Utc>) -> String) -> Served {
    let now = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    seed_stalls(env, now).await;
    let mut settings = env.settings.clone();
    settings.alerts.rules.pending_for = Duration::ZERO;
    // Statistics (and so the lag gauge) every half second instead of every 15.
    settings.kafka.consumer_properties.insert(
        "statistics.interval.ms".into(),
        tiendo::config::Secret::new("500"),
    );
    let targets = stall_targets_and(now, &settings.validation.datasets, &more(now));
    let clock: SharedClock = Arc::new(SystemClock);
    let conn = store::connect(&settings.redis).await.unwrap();
    let evaluator = Evaluator::new(
        store::Store::new(
            conn.clone(),
            "tiendo",
            settings.validation.datasets.clone(),
            1,
        ),
        Ledger::new(conn, "tiendo"),
        targets.clone(),
        settings.validation.datasets.clone(),
        settings.alerts.clone(),
        clock.clone(),
        false,
    );
    // The recorder first, so that the evaluation's gauges are recorded.
    let metrics = tiendo::telemetry::install_prometheus().unwrap();
    assert!(!evaluator.evaluate_once().await.unwrap().notices.is_empty());

    let pipeline = Pipeline::new(&settings, clock.clone()).await.unwrap();
    let served = http(
        &settings,
        targets,
        Some(metrics),
        Some(pipeline.assignment()),
    )
    .await;
    tokio::spawn(pipeline.run(served.stop.clone()));
    served
}

/// The HTTP server alone, reading what the settings point at.
async fn http(
    settings: &tiendo::config::Settings,
    targets: tiendo::targets::Targets,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    assignment: Option<Arc<tiendo::source::Assignment>>,
) -> Served {
    let clock: SharedClock = Arc::new(SystemClock);
    let state = tiendo::run::app_state(
        settings,
        targets,
        clock,
        metrics,
        assignment,
        Some(tiendo::run::watch(settings).await.unwrap()),
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let (addr, _) = tiendo::serve::serve("127.0.0.1:0", state, stop.clone())
        .await
        .unwrap();
    Served {
        base: format!("http://{addr}"),
        stop,
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("server answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_the_provinces_api() {
    let mut env = Env::start();
    let s = serve(&env).await;

    assert_eq!(get(&format!("{}/healthz", s.base)).await.0, 200);
    // Ready once the consumer holds partitions.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(&format!("{}/readyz", s.base)).await;
        if code == 200 {
            assert!(body.contains("\"redis\":true"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (code, body) = get(&format!("{}/api/v1/provinces", s.base)).await;
    assert_eq!(code, 200);
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = api["provinces"].as_array().unwrap();
    assert_eq!(rows.len(), 34);
    // Most at risk first: Cao Bằng (behind pace, critical? no: warning) and Hà Nội (silent).
    let first: Vec<&str> = rows[..2]
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(first.contains(&"01") && first.contains(&"04"), "{first:?}");
    let cao_bang = rows.iter().find(|r| r["code"] == "04").unwrap();
    let rules: Vec<&str> = cao_bang["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, vec!["behind_pace", "projected_miss"]);
    assert_eq!(cao_bang["datasets"]["civil_status"]["target"], 1_000_000);
    assert!(
        cao_bang["pace"]["civil_status"]["pace_needed"]
            .as_f64()
            .unwrap()
            > 20_000.0
    );
    let healthy = rows.iter().find(|r| r["code"] == "11").unwrap();
    assert!(healthy["alerts"].as_array().unwrap().is_empty());
    assert_eq!(api["firing"]["warning"], 2);

    assert_eq!(api["figures"]["current"], true, "{}", api["figures"]);
    assert_eq!(api["figures"]["behind"], 0);

    // The 63-unit view shows the alerts of the 34-unit unit each row belongs to, marked so:
    // Hà Giang (02) is now part of Tuyên Quang (08), Bắc Kạn (06) of Thái Nguyên (19).
    let (code, body) = get(&format!("{}/api/v1/provinces?view=63", s.base)).await;
    assert_eq!(code, 200);
    let api63: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows63 = api63["provinces"].as_array().unwrap();
    assert!(rows63.len() >= 63);
    let ha_noi = rows63
        .iter()
        .find(|r| r["code"] == "01" && r["scheme"] == "63")
        .unwrap();
    let inherited: Vec<(&str, &str)> = ha_noi["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap(),
                a["via"]["unit"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(inherited, vec![("silent", "34:01")]);
    assert_eq!(api63["firing"]["warning"], 2, "Hà Nội and Cao Bằng");
    assert_eq!(
        get(&format!("{}/api/v1/provinces?view=99", s.base)).await.0,
        400
    );

    let (code, metrics) = get(&format!("{}/metrics", s.base)).await;
    assert_eq!(code, 200);
    for name in [
        "tiendo_alerts_firing{rule=\"silent\",severity=\"warning\"} 1",
        "tiendo_province_progress_ratio{province=\"08\",name=\"Tuyên Quang\",dataset=\"civil_status\"} 1.25",
        "tiendo_province_days_to_deadline{province=\"04\"",
        "tiendo_assigned_partitions",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    // Consumer lag per assigned partition, from librdkafka's statistics.
    let lags = |metrics: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with("tiendo_consumer_lag_messages{"))
            .map(String::from)
            .collect()
    };
    let partitions = common::RECORD_PARTITIONS as usize + common::PROCEDURE_PARTITIONS as usize;
    let metrics = common::wait_metrics(&s.base, Duration::from_secs(20), |m| {
        lags(m).len() == partitions
    })
    .await;
    let lags = lags(&metrics);
    assert_eq!(lags.len(), partitions, "lag gauges: {lags:?}");
    assert!(lags.iter().all(|l| l.ends_with(" 0")), "{lags:?}");

    // Redis gone: not ready, still alive.
    env.redis.kill();
    let (code, body) = get(&format!("{}/readyz", s.base)).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(get(&format!("{}/healthz", s.base)).await.0, 200);
    s.stop.cancel();
}

/// With alerts kept in the 63-unit table (as the demo does), the default 34-unit view shows
/// them on the unit that absorbed each province: Ninh Thuận's on Khánh Hòa, marked so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_of_the_63_unit_table_show_in_the_34_unit_view() {
    let env = Env::start();
    let mut settings = env.settings.clone();
    settings.alerts.view = tiendo::status::View::Legacy63;
    let targets = tiendo::targets::Targets::parse(
        "province,dataset,target,deadline,scheme\n58,civil_status,1000000,2030-12-31,63\n",
        &settings.validation.datasets,
    )
    .unwrap();
    let conn = store::connect(&settings.redis).await.unwrap();
    let evaluator = Evaluator::new(
        store::Store::new(
            conn.clone(),
            "tiendo",
            settings.validation.datasets.clone(),
            1,
        ),
        Ledger::new(conn, "tiendo"),
        targets.clone(),
        settings.validation.datasets.clone(),
        settings.alerts.clone(),
        Arc::new(SystemClock),
        false,
    );
    // Never reported: silent and projected to miss, at once (a first evaluation).
    let fired = evaluator.evaluate_once().await.unwrap().notices;
    assert!(fired
        .iter()
        .any(|n| n.alert_key == "63:58:civil_status:silent"));

    let s = http(&settings, targets, None, None).await;
    let (_, body) = get(&format!("{}/api/v1/provinces", s.base)).await;
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    let khanh_hoa = api["provinces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "56")
        .unwrap();
    let alerts = khanh_hoa["alerts"].as_array().unwrap();
    assert!(!alerts.is_empty(), "{khanh_hoa}");
    assert!(alerts
        .iter()
        .all(|a| a["via"]["unit"] == "63:58" && a["via"]["name"] == "Ninh Thuận"));
    assert_eq!(
        api["firing"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    // In its own table it is Ninh Thuận's, unmarked.
    let (_, body) = get(&format!("{}/api/v1/provinces?view=63", s.base)).await;
    let api63: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ninh_thuan = api63["provinces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "58" && r["scheme"] == "63")
        .unwrap();
    assert!(ninh_thuan["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["via"].is_null()));
    s.stop.cancel();
}

/// Events in Kafka that Redis has not counted: the API and the page say the figures are
/// catching up and by how much, as the task force would see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_figures_are_catching_up() {
    let env = Env::start();
    let mut g = env.generator(9);
    env.publish(&common::events(&mut g, 500)).await;
    let targets = stall_targets(Utc::now(), &env.settings.validation.datasets);
    let s = http(&env.settings, targets, None, None).await;
    let (_, body) = get(&format!("{}/api/v1/provinces", s.base)).await;
    let api: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["figures"]["current"], false, "{}", api["figures"]);
    assert_eq!(api["figures"]["behind"], 500);
    assert_eq!(api["figures"]["reason"], "catching up");
    let url = format!("{}/", s.base);
    let out = tokio::task::spawn_blocking(move || {
        chromium(&["--virtual-time-budget=10000", "--dump-dom", &url])
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("Đang cập nhật số liệu (còn 500 sự kiện chưa tính)"),
        "{dom}"
    );
    s.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_provinces_by_risk_in_a_real_browser() {
    let env = Env::start();
    // Điện Biên's land four records short of its target; Lai Châu's land due three days ago,
    // at 40%. (Recorded yesterday, so neither is silent: this test's process shares its
    // alert gauges with the others'.)
    let mut g = env.generator(7);
    let yesterday = Utc::now() - chrono::Duration::days(1);
    let mut land = |code: &str, n: u64| {
        g.record_for(
            code,
            tiendo::events::CodeScheme::Provinces34,
            "land",
            n,
            yesterday,
        )
    };
    let events = [land("11", 9_996), land("12", 400)];
    env.publish(&events).await;
    let s = serve_and(&env, |now| {
        let vn = now.with_timezone(&tiendo::clock::vn_offset()).date_naive();
        let far = vn + chrono::Days::new(40);
        let past = vn - chrono::Days::new(3);
        format!("11,land,10000,{far}\n12,land,1000,{past}\n")
    })
    .await;
    let url = format!("{}/", s.base);
    let budget = "--virtual-time-budget=10000";

    // The DOM after the page's script ran: cards sorted by risk, alerts highlighted.
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&[budget, "--dump-dom", &url])
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-loaded=\"1\""),
        "page never loaded its data:\n{dom}"
    );
    let cards: Vec<&str> = dom
        .match_indices("data-code=\"")
        .map(|(i, m)| &dom[i + m.len()..i + m.len() + 2])
        .collect();
    assert_eq!(cards.len(), 34, "{cards:?}");
    // Hà Nội silent, Cao Bằng behind pace, Lai Châu past its deadline: the three first.
    let mut first: Vec<&str> = cards[..3].to_vec();
    first.sort();
    assert_eq!(first, ["01", "04", "12"], "{cards:?}");
    assert!(
        dom.contains("class=\"card warning\""),
        "no highlighted card"
    );
    assert!(dom.contains("Hộ tịch: chậm tiến độ"), "no alert badge");
    assert!(
        dom.contains("125,0%") || dom.contains("100,0%"),
        "no progress figures"
    );
    // The national pill: every record counted, and the targets' share met, each province
    // counted up to its target (Tuyên Quang's 250.000 as 200.000) as the report counts it:
    // 1.399.984 of 3.200.000.
    assert!(
        dom.contains("Hộ tịch: 1.449.984 · 43,7% chỉ tiêu"),
        "national pill:\n{dom}"
    );
    // 99,96% is not done: never read as 100,0%. A deadline past reads as overdue.
    assert!(
        dom.contains("99,9% · 9.996/10.000"),
        "Điện Biên's land:\n{dom}"
    );
    assert!(!dom.contains("100,0% · 9.996"), "{dom}");
    assert!(
        dom.contains("40,0% · 400/1.000 · quá hạn 3 ngày"),
        "Lai Châu's land:\n{dom}"
    );

    // A phone-sized screenshot: the highlight and progress colours are really painted.
    let shot: PathBuf =
        std::env::temp_dir().join(format!("tiendo-status-{}.png", std::process::id()));
    let out = tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            chromium(&[
                budget,
                "--window-size=412,1600",
                &format!("--screenshot={}", shot.display()),
                &url,
            ])
        }
    })
    .await
    .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (warning, w, h) = count_color(&shot, [0xef, 0x6c, 0x00]);
    let (green, ..) = count_color(&shot, [0x2e, 0x7d, 0x32]);
    let (header, ..) = count_color(&shot, [0x11, 0x22, 0x33]);
    assert_eq!((w, h), (412, 1600));
    assert!(warning > 500, "warning colour painted on {warning} pixels");
    assert!(green > 500, "progress bars painted on {green} pixels");
    assert!(header > 10_000, "header painted on {header} pixels");
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::copy(&shot, &keep);
    let _ = std::fs::remove_file(&shot);
    s.stop.cancel();
}
