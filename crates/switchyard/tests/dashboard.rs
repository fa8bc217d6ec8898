//! The live dashboard (`/dashboard` on the admin listener): its HTTP surface (the admin
//! key, the sign-in cookie, the snapshot stream), and the page itself in a real headless
//! Chromium driven through chromedriver over WebDriver: every worker appears, counters
//! move with traffic, a killed engine's row turns unhealthy. Waits poll the page until
//! the condition holds (bounded against hanging, never a time window).

use std::time::Duration;

use fantoccini::{ClientBuilder, Locator, key::Key};
use serde_json::{Value, json};
use switchyard::PolicyKind;
use switchyard_testkit::*;

const KEY: &str = "dash-admin-key";

async fn bed() -> TestBed {
    TestBed::with(sims(3).await, |c| {
        c.admin_api_key = Some(KEY.into());
        c.policy = PolicyKind::CacheAware;
    })
    .await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn snapshot(bed: &TestBed) -> Value {
    let r = bed
        .http
        .0
        .get(format!("{}/dashboard/snapshot", bed.admin))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_dashboard_is_behind_the_admin_key_and_signs_in_with_a_cookie() {
    let bed = bed().await;
    let http = no_redirects();
    let admin = &bed.admin;

    // No key: the page is the sign-in form; data and script are refused.
    let r = http.get(format!("{admin}/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let form = r.text().await.unwrap();
    assert!(
        form.contains("name=\"key\"") && form.contains("<label for=\"key\">"),
        "{form}"
    );
    for path in [
        "/dashboard/stream",
        "/dashboard/snapshot",
        "/dashboard/app.js",
    ] {
        let r = http.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_error(&r.json().await.unwrap(), "invalid_api_key");
    }
    // The style is public: the sign-in form needs it.
    let r = http
        .get(format!("{admin}/dashboard/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A wrong method is a 405 with an OpenAI-style body, signed in or not.
    let r = http
        .get(format!("{admin}/dashboard/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_error(&r.json().await.unwrap(), "method_not_allowed");
    let r = http
        .post(format!("{admin}/dashboard/snapshot"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_error(&r.json().await.unwrap(), "method_not_allowed");

    // Signing in: no key field, a wrong key, then the right one.
    let login = |body: &'static str| {
        http.post(format!("{admin}/dashboard/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let r = login("nokey=1").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("role=\"alert\""));
    let r = http
        .post(format!("{admin}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}", "k".repeat(16 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("form is too large"));
    let r = login("key=wrong").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("not the admin API key"));
    let r = login("key=dash-admin-key").await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/dashboard");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Max-Age=43200"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(KEY),
        "the key itself is never the cookie: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();

    // The cookie opens the dashboard's paths, and only those.
    let r = http
        .get(format!("{admin}/dashboard"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(r.text().await.unwrap().contains("<table id=\"workers\">"));
    let r = http
        .get(format!("{admin}/workers"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let forged = pair.replace('=', "=0");
    let r = http
        .get(format!("{admin}/dashboard/app.js"))
        .header("cookie", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The stream speaks server-sent events, a JSON snapshot per event.
    let mut r = http
        .get(format!("{admin}/dashboard/stream"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    while !buf.contains("\n\n") {
        let chunk = r.chunk().await.unwrap().expect("an event");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = buf
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let snap: Value = serde_json::from_str(data).unwrap();
    assert_eq!(snap["workers"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn snapshots_follow_traffic_and_the_fleet() {
    let bed = bed().await;
    let first = snapshot(&bed).await;
    assert_eq!(first["policy"], "cache_aware");
    let workers = first["workers"].as_array().unwrap();
    let urls: Vec<&str> = workers.iter().map(|w| w["url"].as_str().unwrap()).collect();
    for u in bed.sims.urls() {
        assert!(urls.contains(&u.as_str()), "{u} in {urls:?}");
    }
    for w in workers {
        assert_eq!(w["healthy"], true);
        assert_eq!(w["circuit"], "closed");
        assert_eq!(w["role"], "regular");
        assert_eq!(w["models"], json!([MODEL]));
        // The simulator exports vLLM's KV usage and prefix-cache counters.
        assert!(w["kv_usage"].is_number(), "{w}");
        assert_eq!(w["engine_reachable"], true);
    }

    for i in 0..12 {
        let (status, _) = bed.chat(&format!("{} {i}", prompt_text(7, 40)), 4).await;
        assert_eq!(status, 200);
    }
    let snap = until("the snapshot to count the requests", async || {
        let s = snapshot(&bed).await;
        let counted = s["totals"]["requests"].as_f64() == Some(12.0);
        // The prompts share a prefix: some engine reports prefix-cache hits.
        let hits = s["workers"].as_array().unwrap().iter().any(|w| {
            w["prefix_hit_rate_overall"]
                .as_f64()
                .is_some_and(|r| r > 0.0)
        });
        (counted && hits).then_some(s)
    })
    .await;
    let model = snap["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == MODEL)
        .expect("the model's row")
        .clone();
    assert_eq!(model["requests"], 12.0);
    assert_eq!(model["errors"], 0.0);
    assert_eq!(model["workers_healthy"], 3);
    assert!(
        model["e2e_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0),
        "{model}"
    );
    let decided: f64 = snap["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["policy"] == "cache_aware")
        .map(|d| d["total"].as_f64().unwrap())
        .sum();
    assert_eq!(decided, 12.0, "{}", snap["decisions"]);
    // The chart's points: one per sampler tick, in time order, each with its rates.
    let chart = snap["chart"].as_array().unwrap();
    assert!(!chart.is_empty());
    for p in chart {
        assert!(p["rps"].as_f64().is_some_and(|r| r >= 0.0), "{p}");
        assert!(p["eps"].as_f64().is_some_and(|r| r >= 0.0), "{p}");
    }
    let times: Vec<u64> = chart.iter().map(|p| p["t"].as_u64().unwrap()).collect();
    assert!(times.is_sorted(), "{times:?}");

    // An engine gone: its row turns unhealthy and shows no engine figures.
    let dead = bed.sims.server(2).url();
    bed.sims.server(2).shutdown();
    eventually("the dead engine's row to turn unhealthy", || async {
        let s = snapshot(&bed).await;
        s["workers"].as_array().unwrap().iter().any(|w| {
            w["url"] == dead.as_str() && w["healthy"] == false && w["engine_reachable"] == false
        })
    })
    .await;
}

/// Where chromedriver and Chromium are (Debian's packages by default).
fn browser() -> Option<(String, String)> {
    let driver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let chrome = std::env::var("CHROME_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    (std::path::Path::new(&driver).exists() && std::path::Path::new(&chrome).exists())
        .then_some((driver, chrome))
}

#[tokio::test]
async fn the_page_shows_the_fleet_live_in_a_real_browser() {
    let Some((driver, chrome)) = browser() else {
        if std::env::var_os("SWITCHYARD_SKIP_BROWSER_TEST").is_some() {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: the dashboard's browser test (no chromium/chromedriver) !!!\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            return;
        }
        panic!(
            "chromedriver or chromium not found (install Debian's chromium and chromium-driver, \
             as .ci/run does, or set CHROMEDRIVER and CHROME_BIN; SWITCHYARD_SKIP_BROWSER_TEST=1 \
             skips this test)"
        );
    };
    let bed = bed().await;
    let port = free_port();
    let _driver = Child(
        std::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    until("chromedriver to be ready", async || {
        let r = http.get(format!("{webdriver}/status")).send().await.ok()?;
        let body: Value = r.json().await.ok()?;
        (body["value"]["ready"] == true).then_some(())
    })
    .await;
    let profile = std::env::temp_dir().join(format!("switchyard-chromium-{port}"));
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chrome,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1500",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a browser session");

    // Sign in with the keyboard: the key field has focus, Enter submits.
    c.goto(&format!("{}/dashboard", bed.admin)).await.unwrap();
    let field = c.active_element().await.unwrap();
    assert_eq!(field.attr("id").await.unwrap().as_deref(), Some("key"));
    field.send_keys("not-the-key").await.unwrap();
    field.send_keys(&Key::Enter.to_string()).await.unwrap();
    let alert = wait_text(&c, "#login-error").await;
    assert!(alert.contains("not the admin API key"), "{alert}");
    let field = c.find(Locator::Id("key")).await.unwrap();
    field.send_keys(KEY).await.unwrap();
    field.send_keys(&Key::Enter.to_string()).await.unwrap();

    // Every worker appears, healthy.
    let urls = bed.sims.urls();
    until("every worker's row", async || {
        let rows = c
            .find_all(Locator::Css("#workers tbody tr[data-url]"))
            .await
            .unwrap();
        let mut seen = Vec::new();
        for r in rows {
            if r.attr("data-healthy").await.unwrap().as_deref() == Some("true") {
                seen.push(r.attr("data-url").await.unwrap().unwrap_or_default());
            }
        }
        urls.iter().all(|u| seen.contains(u)).then_some(())
    })
    .await;
    assert_eq!(text(&c, "#policy").await, "cache_aware");
    assert!(text(&c, "#status").await.contains("Live"));

    // Traffic moves the counters: the total, the model's row, the routing decisions.
    for i in 0..12 {
        let (status, _) = bed.chat(&format!("{} {i}", prompt_text(3, 30)), 4).await;
        assert_eq!(status, 200);
    }
    // Streamed ones too: time to first token is measured on streams.
    for i in 0..3 {
        let mut body = chat(&format!("{} s{i}", prompt_text(3, 30)), 4);
        body["stream"] = json!(true);
        let (status, events) = bed.http.sse(&bed.url, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
    let model = format!("tr[data-model=\"{MODEL}\"]");
    until("the counters to show 15 requests", async || {
        let total = text(&c, "#total-requests").await == "15";
        let requests = text(&c, &format!("{model} td[data-field=requests]")).await == "15";
        let ttft = text(&c, &format!("{model} td[data-field=ttft_p50]")).await;
        (total && requests && ttft.parse::<f64>().is_ok()).then_some(())
    })
    .await;
    assert!(
        text(&c, &format!("{model} td[data-field=e2e_p95]"))
            .await
            .parse::<f64>()
            .is_ok()
    );
    let decisions = c
        .find_all(Locator::Css("#decisions tbody tr:not(.empty)"))
        .await
        .unwrap();
    assert!(!decisions.is_empty());
    assert!(text(&c, "#decisions tbody").await.contains("cache_aware"));

    // The pause button works from the keyboard, and says so.
    let pause = c.find(Locator::Id("pause")).await.unwrap();
    pause.send_keys(&Key::Enter.to_string()).await.unwrap();
    assert_eq!(
        pause.attr("aria-pressed").await.unwrap().as_deref(),
        Some("true")
    );
    pause.send_keys(&Key::Enter.to_string()).await.unwrap();
    assert_eq!(
        pause.attr("aria-pressed").await.unwrap().as_deref(),
        Some("false")
    );

    // An engine killed: its row turns unhealthy.
    let dead = bed.sims.server(1).url();
    bed.sims.server(1).shutdown();
    let row = format!("#workers tbody tr[data-url=\"{dead}\"]");
    until("the killed engine's row to turn unhealthy", async || {
        let r = c.find(Locator::Css(&row)).await.ok()?;
        (r.attr("data-healthy").await.ok()??.as_str() == "false").then_some(())
    })
    .await;
    assert!(
        text(&c, &format!("{row} td[data-field=health]"))
            .await
            .contains("unhealthy")
    );

    // A screenshot: kept with the test's output (and copied to docs/ for the README).
    let png = c.screenshot().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("dashboard screenshot: {}", out.display());
    if let Some(dir) = std::env::var_os("SWITCHYARD_SCREENSHOT_DIR") {
        std::fs::write(std::path::Path::new(&dir).join("dashboard.png"), &png).unwrap();
    }
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

async fn text(c: &fantoccini::Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_text(c: &fantoccini::Client, css: &str) -> String {
    until(css, async || {
        Some(text(c, css).await).filter(|t| !t.is_empty())
    })
    .await
}

/// Polls `f` until it gives a value: the page changes inside the browser, and WebDriver
/// has nothing to await but the DOM itself. [`POLL_EVERY`] is a poll interval, not a
/// window; 60 s bounds a hang (a browser on a loaded machine is slow to start).
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}
