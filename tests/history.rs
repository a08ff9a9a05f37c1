//! Progress over time, checked against a season whose daily and weekly totals the test computes
//! itself: the history API's daily series in both unit views, and `tiendo report`'s week
//! (percent then and now, the change in points, class moves) as the binary prints it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDate, TimeZone, Utc};
use tokio_util::sync::CancellationToken;

use common::browser::{chromium, count_color};
use common::Env;
use tiendo::clock::{vn_offset, ManualClock, SharedClock};
use tiendo::events::CodeScheme;
use tiendo::generator::Generated;

/// The start of the Vietnam day `ago` days before today.
fn day_start(now: DateTime<Utc>, ago: i64) -> DateTime<Utc> {
    let day = (now.with_timezone(&vn_offset()) - Span::days(ago)).date_naive();
    vn_offset()
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// Records per Vietnam day, per (scheme tag, code).
type PerDay = BTreeMap<(char, String), BTreeMap<NaiveDate, i64>>;

fn vn_day(at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&vn_offset()).date_naive()
}

/// Waits until Vietnam's next midnight is more than `margin` away, so that a test whose
/// subprocess reads the system clock sees the same day as the test's own `now`.
async fn clear_of_vn_midnight(margin: Span) {
    let now = Utc::now();
    let midnight = day_start(now, -1);
    if midnight - now < margin {
        let wait = (midnight - now + Span::seconds(5)).to_std().unwrap();
        eprintln!("waiting {wait:?} for Vietnam's midnight to pass");
        tokio::time::sleep(wait).await;
    }
}

/// Three weeks of civil-status records: Ninh Thuận (63:58) and Khánh Hòa (63:56) by their old
/// codes, and the merged Khánh Hòa (34:56) by its new one, a different amount each day; and
/// per (scheme, code) the records of each Vietnam day.
fn season(env: &Env, now: DateTime<Utc>) -> (Vec<Generated>, PerDay) {
    let mut g = env.generator(41);
    let mut events = Vec::new();
    let mut days = PerDay::new();
    for ago in 0..21i64 {
        // Within the day, and never ahead of now.
        let at = (day_start(now, ago) + Span::minutes(30)).min(now - Span::seconds(5));
        for (tag, code, scheme, n) in [
            ('o', "58", CodeScheme::Provinces63, 100 + ago as u64),
            ('o', "56", CodeScheme::Provinces63, 10 * ago as u64 + 1),
            ('n', "56", CodeScheme::Provinces34, 5),
        ] {
            events.push(g.record_for(code, scheme, "civil_status", n, at));
            *days
                .entry((tag, code.to_string()))
                .or_default()
                .entry(vn_day(at))
                .or_default() += n as i64;
        }
    }
    (events, days)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_history_in_both_views_matches_the_season() {
    let env = Env::start();
    let now = Utc::now();
    let (events, days) = season(&env, now);
    env.publish(&events).await;
    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(90)).await;
    running.shutdown().await;

    let targets = tiendo::targets::Targets::parse(
        "province,dataset,target,deadline,scheme\n58,civil_status,10000,2030-12-31,63\n56,civil_status,5000,2030-12-31,63\n",
        &env.settings.validation.datasets,
    )
    .unwrap();
    // The test's own `now`: a run crossing Vietnam's midnight would otherwise shift "today".
    let clock: SharedClock = ManualClock::new(now);
    let state = tiendo::run::app_state(&env.settings, targets, clock, None, None, None)
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let (addr, _) = tiendo::serve::serve("127.0.0.1:0", state, stop.clone())
        .await
        .unwrap();
    let get = |path: String| async move {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        let code = r.status().as_u16();
        (code, r.text().await.unwrap())
    };

    // What the test expects: per day, what was added and the total by its end.
    let expect = |units: &[(char, &str)], target: f64| -> Vec<(NaiveDate, i64, i64, f64)> {
        let mut per_day: BTreeMap<NaiveDate, i64> = BTreeMap::new();
        for u in units {
            for (d, n) in &days[&(u.0, u.1.to_string())] {
                *per_day.entry(*d).or_default() += n;
            }
        }
        let mut total = 0;
        per_day
            .into_iter()
            .map(|(d, n)| {
                total += n;
                (d, n, total, total as f64 * 100.0 / target)
            })
            .collect()
    };
    let points = |body: &str| -> Vec<(NaiveDate, i64, i64, f64)> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["day"].as_str().unwrap().parse().unwrap(),
                    p["added"].as_i64().unwrap(),
                    p["total"].as_i64().unwrap(),
                    p["percent"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    };
    let close = |got: Vec<(NaiveDate, i64, i64, f64)>, want: Vec<(NaiveDate, i64, i64, f64)>| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.0, g.1, g.2), (w.0, w.1, w.2));
            assert!((g.3 - w.3).abs() < 1e-9, "{g:?} {w:?}");
        }
    };

    // The 34-unit Khánh Hòa: its own code and the two it absorbed; its target is theirs.
    let (code, body) =
        get("/api/v1/provinces/56/history?dataset=civil_status&days=21".into()).await;
    assert_eq!(code, 200, "{body}");
    close(
        points(&body),
        expect(&[('o', "58"), ('o', "56"), ('n', "56")], 15_000.0),
    );
    // The 63-unit Ninh Thuận alone, and the old Khánh Hòa without the new code's records.
    let (_, body) =
        get("/api/v1/provinces/58/history?dataset=civil_status&days=21&view=63".into()).await;
    close(points(&body), expect(&[('o', "58")], 10_000.0));
    let (_, body) =
        get("/api/v1/provinces/56/history?dataset=civil_status&days=21&view=63".into()).await;
    close(points(&body), expect(&[('o', "56")], 5_000.0));
    // The 63-unit view's row of the 34-unit code 56 (no target in that table): its own
    // records only, not the old Khánh Hòa's.
    let (code, body) =
        get("/api/v1/provinces/56/history?dataset=civil_status&days=21&view=63&scheme=34".into())
            .await;
    assert_eq!(code, 200, "{body}");
    let days_of = |p: Vec<(NaiveDate, i64, i64, f64)>| -> Vec<(NaiveDate, i64, i64)> {
        p.into_iter().map(|(d, a, t, _)| (d, a, t)).collect()
    };
    assert_eq!(days_of(points(&body)), days_of(expect(&[('n', "56")], 1.0)));
    let (code, body) = get("/api/v1/provinces/56/history?view=63&scheme=35".into()).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = get("/api/v1/provinces/58/history?view=63&scheme=34".into()).await;
    assert_eq!(code, 404, "{body}");
    // A shorter series ends today with the same totals.
    let (_, body) =
        get("/api/v1/provinces/58/history?dataset=civil_status&days=7&view=63".into()).await;
    let week = points(&body);
    assert_eq!(week.len(), 7);
    assert_eq!(week.last().unwrap().0, vn_day(now));
    assert_eq!(
        week.last().unwrap().2,
        days[&('o', "58".to_string())].values().sum::<i64>()
    );

    assert_eq!(get("/api/v1/provinces/99/history".into()).await.0, 404);
    assert_eq!(
        get("/api/v1/provinces/58/history?dataset=cats".into())
            .await
            .0,
        400
    );
    assert_eq!(
        get("/api/v1/provinces/58/history?days=401".into()).await.0,
        400
    );

    // The status page's sparklines: records of each of the last 8 weeks (ending today),
    // in both views, as a real browser draws them.
    let today = vn_day(now);
    let weekly = |units: &[(char, &str)]| -> String {
        (0..8i64)
            .rev()
            .map(|w| {
                let (from, to) = (today - Span::days(7 * w + 7), today - Span::days(7 * w));
                units
                    .iter()
                    .flat_map(|u| days[&(u.0, u.1.to_string())].iter())
                    .filter(|(d, _)| **d > from && **d <= to)
                    .map(|(_, n)| n)
                    .sum::<i64>()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let dom = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move {
            let out = tokio::task::spawn_blocking(move || {
                chromium(&["--virtual-time-budget=10000", "--dump-dom", &url])
            })
            .await
            .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    let spark = |dom: &str, code: &str| -> String {
        let card = dom
            .find(&format!("data-code=\"{code}\""))
            .unwrap_or_else(|| panic!("no card {code}: {dom}"));
        let rest = &dom[card..];
        let at = rest.find("data-weeks=\"").expect("a sparkline") + "data-weeks=\"".len();
        rest[at..at + rest[at..].find('"').unwrap()].to_string()
    };
    let page = dom("/?view=63").await;
    assert!(page.contains("data-loaded=\"1\""), "{page}");
    assert_eq!(spark(&page, "58"), weekly(&[('o', "58")]));
    assert!(page.contains("href=\"province/58?view=63\""), "{page}");
    assert!(
        page.contains("href=\"province/56?view=63&amp;scheme=34\""),
        "{page}"
    );
    let page = dom("/").await;
    assert_eq!(
        spark(&page, "56"),
        weekly(&[('o', "58"), ('o', "56"), ('n', "56")])
    );

    // The province page: the series as a line, the target as a dashed line, drawn on the
    // server and painted by the browser.
    let page = dom("/province/56?view=34&days=21").await;
    assert!(page.contains("<h1>Khánh Hòa</h1>"), "{page}");
    assert!(
        page.contains("class=\"total\" data-points=\"21\""),
        "{page}"
    );
    assert!(
        page.contains("class=\"target\" data-target=\"15000\""),
        "{page}"
    );
    assert!(page.contains("Chỉ tiêu 15.000 · hạn 31/12/2030"), "{page}");
    let shot = std::env::temp_dir().join(format!("tiendo-province-{}.png", std::process::id()));
    let url = format!("http://{addr}/province/56?view=34&days=21");
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || chromium(&["--window-size=760,700", &arg, &url]))
        .await
        .unwrap();
    let (line, ..) = count_color(&shot, [0x15, 0x65, 0xc0]);
    let (target, ..) = count_color(&shot, [0xc6, 0x28, 0x28]);
    assert!(line > 300, "series painted on {line} pixels");
    assert!(target > 200, "target line painted on {target} pixels");
    let _ = std::fs::copy(
        &shot,
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("province-page.png"),
    );
    let _ = std::fs::remove_file(&shot);
    assert_eq!(get("/province/99".into()).await.0, 404);
    // Everything the pages show is in them: no script, style, font or image from elsewhere.
    for path in ["/", "/?view=63", "/province/56?view=34&days=21"] {
        let (code, body) = get(path.into()).await;
        assert_eq!(code, 200, "{path}");
        for outside in [
            "src=\"http",
            "src=\"//",
            "href=\"http",
            "href=\"//",
            "url(http",
            "url(//",
            "@import",
            "<link rel=\"stylesheet\"",
        ] {
            assert!(!body.contains(outside), "{path} loads {outside}");
        }
    }
    stop.cancel();
}

/// `tiendo report --format json` as the task force's Monday report would be: each province
/// against the end of the day before the same moment a week ago.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_compares_each_province_with_a_week_earlier() {
    // `tiendo report` runs as a subprocess on the system clock: the whole test, publishing
    // and consuming included, takes well under ten minutes.
    clear_of_vn_midnight(Span::minutes(10)).await;
    let env = Env::start();
    let now = Utc::now();
    let (mut events, days) = season(&env, now);
    // Hà Nội (63:01) finishes this week: 900 of 1,000 before, 200 more three days ago.
    let mut g = env.generator(42);
    for (n, ago) in [(900, 20), (200, 3)] {
        let at = now - Span::days(ago);
        events.push(g.record_for("01", CodeScheme::Provinces63, "civil_status", n, at));
    }
    // Nghệ An (63:40) stopped at 30% twenty days ago, ten days before its deadline: at risk.
    let stopped = now - Span::days(20);
    events.push(g.record_for("40", CodeScheme::Provinces63, "civil_status", 300, stopped));
    let soon = vn_day(now) + Span::days(10);
    env.publish(&events).await;
    let running = env.spawn().await;
    env.wait_consumed(Duration::from_secs(90)).await;
    running.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets.csv");
    std::fs::write(
        &targets,
        format!(
            "province,dataset,target,deadline,scheme\n58,civil_status,10000,2030-12-31,63\n\
             01,civil_status,1000,2030-12-31,63\n40,civil_status,1000,{soon},63\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(["report", "--view", "63", "--format", "json"])
        .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
        .env("TIENDO_TARGETS__FILE", &targets)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let week = &report["week"];
    // The end of the day before the same moment a week ago.
    let since = vn_day(now - Span::days(7)) - Span::days(1);
    assert_eq!(week["since"], since.to_string());
    let civil = week["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataset"] == "civil_status")
        .unwrap();
    let province = |code: &str| {
        civil["provinces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["code"] == code)
            .unwrap()
            .clone()
    };
    let ninh_thuan = province("58");
    let all: i64 = days[&('o', "58".to_string())].values().sum();
    let before: i64 = days[&('o', "58".to_string())]
        .iter()
        .filter(|(d, _)| **d <= since)
        .map(|(_, n)| n)
        .sum();
    let near = |v: &serde_json::Value, want: f64| {
        assert!((v.as_f64().unwrap() - want).abs() < 1e-9, "{v} != {want}");
    };
    near(&ninh_thuan["percent_now"], all as f64 / 100.0);
    near(&ninh_thuan["percent_then"], before as f64 / 100.0);
    near(&ninh_thuan["points"], (all - before) as f64 / 100.0);
    // The trend: the end of each of the seven weeks up to a week ago, then now.
    let trend = ninh_thuan["trend"].as_array().unwrap();
    assert_eq!(trend.len(), 8);
    for (i, v) in trend[..7].iter().enumerate() {
        let end = since - Span::days(7 * (6 - i as i64));
        let upto: i64 = days[&('o', "58".to_string())]
            .iter()
            .filter(|(d, _)| **d <= end)
            .map(|(_, n)| n)
            .sum();
        near(v, upto as f64 / 100.0);
    }
    near(&trend[7], all as f64 / 100.0);
    let nghe_an = province("40");
    assert_eq!(nghe_an["class_now"], "at_risk");
    near(&nghe_an["points"], 0.0);
    for (i, v) in nghe_an["trend"].as_array().unwrap()[..7].iter().enumerate() {
        let end = since - Span::days(7 * (6 - i as i64));
        near(v, if end >= vn_day(stopped) { 30.0 } else { 0.0 });
    }
    // Hà Nội moved to completed this week.
    let ha_noi = province("01");
    near(&ha_noi["percent_then"], 90.0);
    near(&ha_noi["percent_now"], 110.0);
    assert_eq!(ha_noi["class_now"], "completed");
    assert_ne!(ha_noi["class_then"], "completed");

    // The table says so too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(["report", "--view", "63"])
        .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
        .env("TIENDO_TARGETS__FILE", &targets)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Chuyển nhóm: Hà Nội: "), "{table}");
    assert!(table.contains("→ đã hoàn thành"), "{table}");
    // The week's top movers, most points first, and the one that stalled.
    let line = |head: &str| {
        table
            .lines()
            .find(|l| l.contains(head))
            .unwrap_or_else(|| panic!("{head} in {table}"))
            .to_string()
    };
    let top = line("Tăng nhiều nhất: ");
    let points_58 = (all - before) as f64 / 100.0;
    assert!(points_58 < 20.0, "{points_58}");
    let (hn, nt) = (top.find("Hà Nội").unwrap(), top.find("Ninh Thuận").unwrap());
    assert!(hn < nt, "Hà Nội's 20 points first: {top}");
    assert!(!top.contains("Nghệ An"), "{top}");
    let stalled = line("Đứng yên: ");
    assert!(stalled.contains("Nghệ An 30,0%"), "{stalled}");
    assert!(!stalled.contains("Hà Nội") && !stalled.contains("Ninh Thuận"));

    // The HTML report draws the at-risk province's trend, inline, with no outside asset.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiendo"))
        .args(["report", "--view", "63", "--format", "html"])
        .env("TIENDO_REDIS__URL", env.settings.redis.url.expose())
        .env("TIENDO_TARGETS__FILE", &targets)
        .output()
        .unwrap();
    let html = String::from_utf8_lossy(&out.stdout);
    let trends = &html[html.find("<table class=\"trend\">").expect("a trend table")..];
    let trends = &trends[..trends.find("</table>").unwrap()];
    assert!(trends.contains("<tr data-code=\"40\"><td>Nghệ An</td><td>30,0%</td><td>+0,0</td>"));
    let points = trends
        .split("points=\"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .unwrap();
    assert_eq!(points.split(' ').count(), 8, "{points}");
    assert!(
        !trends.contains("data-code=\"58\""),
        "only the at-risk: {trends}"
    );
    assert!(!html.contains("http://") && !html.contains("https://"));
}
