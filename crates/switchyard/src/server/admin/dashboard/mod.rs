//! The live dashboard on the admin listener (docs/dashboard.md): one page compiled into
//! the binary (no build step, no CDN), fed once a second over server-sent events. One
//! sampler serves every viewer and runs only while someone watches: it renders the
//! gateway's own metrics (nothing is counted twice on the hot path), reads the fleet,
//! and scrapes each engine's `/metrics` for its queue, KV usage and prefix hits.
//!
//! With `--admin-api-key`, `/dashboard` asks for the key once and keeps a cookie
//! derived from it (`HttpOnly`, `SameSite=Strict`, never the key itself); a bearer
//! key works as on every admin route.

pub mod sample;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::Stream;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use self::sample::{Sample, bucket_delta, percentiles};
use super::super::AppState;
use crate::error::ApiError;
use crate::fleet::Worker;
use crate::fleet::probe::engine_gauge;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// How often the sampler publishes.
const PERIOD: Duration = Duration::from_secs(1);
/// Rates are taken over this many seconds, percentiles over [`WINDOW`].
const RATE_SECS: usize = 10;
const WINDOW: usize = 60;
/// Points kept for the charts.
const CHART_POINTS: usize = 120;
/// An engine's `/metrics` must answer within this, or its row shows no engine figures.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// The cookie that stands for the admin key.
const COOKIE: &str = "switchyard_dashboard";
/// No inline code, nothing from elsewhere: the page, its script and its style only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The latest snapshot, shared by every viewer, and whether the sampler runs.
pub struct Dashboard {
    tx: watch::Sender<Arc<str>>,
    running: Mutex<bool>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Dashboard {
            tx: watch::Sender::new(Arc::from("")),
            running: Mutex::new(false),
        }
    }
}

impl Dashboard {
    /// A viewer's receiver; starts the sampler when it is the first.
    fn subscribe(st: &Arc<AppState>) -> watch::Receiver<Arc<str>> {
        let mut running = st
            .dashboard
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = st.dashboard.tx.subscribe();
        if !*running {
            *running = true;
            st.shutdown.spawn(sampler(st.clone()));
        }
        rx
    }

    /// Stops the sampler when nobody watches (under the same lock as [`subscribe`], so
    /// a viewer arriving now is never left without one).
    fn idle(&self) -> bool {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.tx.receiver_count() == 0 {
            *running = false;
            return true;
        }
        false
    }
}

/// One engine's figures, read from its `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct EngineReading {
    running: f64,
    waiting: f64,
    /// 0..1; `None` when the engine does not export it.
    kv_usage: Option<f64>,
    prefix_hits: f64,
    prefix_queries: f64,
}

/// One second's readings.
struct Tick {
    at: Instant,
    sample: Sample,
    engines: HashMap<Arc<str>, EngineReading>,
}

/// A chart point: requests and errors per second, p95 latencies over the last
/// [`RATE_SECS`] seconds.
#[derive(Clone, Copy)]
struct Point {
    unix_ms: u64,
    rps: f64,
    eps: f64,
    e2e_p95: Option<f64>,
    ttft_p95: Option<f64>,
}

/// Clears the sampler's `running` flag when it ends other than through
/// [`Dashboard::idle`] (shutdown, a panic, an abort), so the next viewer starts another.
struct SamplerGuard(Option<Arc<AppState>>);

impl Drop for SamplerGuard {
    fn drop(&mut self) {
        if let Some(st) = self.0.take() {
            *st.dashboard
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        }
    }
}

async fn sampler(st: Arc<AppState>) {
    let mut guard = SamplerGuard(Some(st.clone()));
    let mut ticks: VecDeque<Tick> = VecDeque::with_capacity(WINDOW + 1);
    let mut chart: VecDeque<Point> = VecDeque::with_capacity(CHART_POINTS);
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = st.shutdown.cancelled() => return,
        }
        if st.dashboard.idle() {
            // `idle` cleared the flag under the lock; a viewer may already have started
            // the next sampler, whose flag this one must not clear.
            guard.0 = None;
            return;
        }
        let live = st.live_state();
        let sample = Sample::parse(&st.metrics.render(&live));
        let engines = scrape_engines(&st).await;
        if ticks.len() > WINDOW {
            ticks.pop_front();
        }
        ticks.push_back(Tick {
            at: Instant::now(),
            sample,
            engines,
        });
        if chart.len() == CHART_POINTS {
            chart.pop_front();
        }
        chart.push_back(point(&ticks));
        let snap = snapshot(&st, &live.workflows, &ticks, &chart);
        st.dashboard.tx.send_replace(Arc::from(snap.to_string()));
    }
}

/// Every engine's figures; an engine that does not answer in time has none.
async fn scrape_engines(st: &AppState) -> HashMap<Arc<str>, EngineReading> {
    let workers = st.registry.all();
    // One scrape per engine URL: data-parallel ranks share it (label `engine`).
    let mut by_url: BTreeMap<&str, Vec<&Arc<Worker>>> = BTreeMap::new();
    for w in &workers {
        by_url.entry(&w.id.url).or_default().push(w);
    }
    let prober = &st.enroller.prober;
    let scrapes = by_url.into_values().map(|ws| async move {
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, prober.engine_metrics(ws[0]))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let Some(text) = text else { return Vec::new() };
        ws.into_iter()
            .map(|w| (w.api_id.clone(), engine_reading(&text, w.id.dp_rank)))
            .collect()
    });
    futures_util::future::join_all(scrapes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// vLLM's names, the V1 engine's first, then the older ones.
fn engine_reading(text: &str, rank: Option<u32>) -> EngineReading {
    let first = |names: &[&str]| {
        names
            .iter()
            .find(|n| {
                text.lines()
                    .any(|l| l.split(['{', ' ']).next() == Some(**n))
            })
            .map(|n| engine_gauge(text, n, rank))
    };
    EngineReading {
        running: engine_gauge(text, "vllm:num_requests_running", rank),
        waiting: engine_gauge(text, "vllm:num_requests_waiting", rank),
        kv_usage: first(&["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
        prefix_hits: first(&[
            "vllm:prefix_cache_hits_total",
            "vllm:gpu_prefix_cache_hits_total",
        ])
        .unwrap_or(0.0),
        prefix_queries: first(&[
            "vllm:prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_queries_total",
        ])
        .unwrap_or(0.0),
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// The tick `n` seconds before the last (or the oldest).
fn back(ticks: &VecDeque<Tick>, n: usize) -> &Tick {
    &ticks[ticks.len() - 1 - n.min(ticks.len() - 1)]
}

fn merged(buckets: &BTreeMap<String, Vec<(f64, f64)>>) -> Vec<(f64, f64)> {
    let mut all: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for b in buckets.values() {
        for &(le, c) in b {
            all.entry(le.to_bits()).or_insert((le, 0.0)).1 += c;
        }
    }
    let mut v: Vec<(f64, f64)> = all.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

fn point(ticks: &VecDeque<Tick>) -> Point {
    let now = back(ticks, 0);
    let prev = back(ticks, 1);
    let base = back(ticks, RATE_SECS);
    let dt = seconds(now.at - prev.at);
    let (req_now, err_now) = totals(&now.sample);
    let (req_prev, err_prev) = totals(&prev.sample);
    let p95 = |series| {
        let then = merged(&base.sample.buckets(series));
        let d = bucket_delta(&merged(&now.sample.buckets(series)), Some(&then));
        sample::quantile(&d, 0.95)
    };
    let one_tick = ticks.len() > 1;
    Point {
        unix_ms: unix_ms(),
        rps: if one_tick {
            (req_now - req_prev) / dt
        } else {
            0.0
        },
        eps: if one_tick {
            (err_now - err_prev) / dt
        } else {
            0.0
        },
        e2e_p95: p95(sample::E2E),
        ttft_p95: p95(sample::TTFT),
    }
}

fn totals(s: &Sample) -> (f64, f64) {
    s.requests_by_model()
        .values()
        .fold((0.0, 0.0), |(a, b), (r, e)| (a + r, b + e))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

fn ms(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |s| json!(round(s * 1000.0, 1)))
}

/// The JSON the page renders.
fn snapshot(
    st: &AppState,
    workflows: &crate::metrics::WorkflowFigures,
    ticks: &VecDeque<Tick>,
    chart: &VecDeque<Point>,
) -> Value {
    let now = back(ticks, 0);
    let rate_base = back(ticks, RATE_SECS);
    let window = back(ticks, WINDOW);
    let rate_dt = seconds(now.at - rate_base.at);
    let has_rate = ticks.len() > 1;
    let rate = |cur: f64, then: f64| {
        if has_rate {
            json!(round((cur - then) / rate_dt, 2))
        } else {
            Value::Null
        }
    };
    let (s, rs) = (&now.sample, &rate_base.sample);

    let workers: Vec<Value> = st
        .registry
        .all()
        .iter()
        .map(|w| {
            let eng = now.engines.get(&w.api_id);
            let (hits, queries) = eng.map_or((0.0, 0.0), |e| (e.prefix_hits, e.prefix_queries));
            let (hits0, queries0) = window
                .engines
                .get(&w.api_id)
                .map_or((0.0, 0.0), |e| (e.prefix_hits, e.prefix_queries));
            let recent = (queries - queries0 > 0.0).then(|| (hits - hits0) / (queries - queries0));
            let overall = (queries > 0.0).then(|| hits / queries);
            let (running, waiting) = match eng {
                Some(e) => (e.running, e.waiting),
                None => {
                    let (r, q) = w.engine_load();
                    (f64::from(r), f64::from(q))
                }
            };
            json!({
                "id": &*w.api_id,
                "url": w.id.url,
                "dp_rank": w.id.dp_rank,
                "role": w.id.role,
                "models": w.models(),
                "healthy": w.is_healthy(),
                "draining": w.is_draining(),
                "circuit": w.breaker.state().as_str(),
                "in_flight": w.in_flight(),
                "engine_reachable": eng.is_some(),
                "engine_running": running,
                "engine_waiting": waiting,
                "kv_usage": eng.and_then(|e| e.kv_usage).map(|u| round(u, 4)),
                "prefix_hit_rate": recent.map(|r| round(r, 4)),
                "prefix_hit_rate_overall": overall.map(|r| round(r, 4)),
            })
        })
        .collect();

    let health: HashMap<String, (usize, usize)> = st
        .model_health()
        .into_iter()
        .map(|(m, ok, all)| (m, (ok, all)))
        .collect();
    let (req, req0) = (s.requests_by_model(), rs.requests_by_model());
    let (e2e, e2e0) = (s.buckets(sample::E2E), window.sample.buckets(sample::E2E));
    let (ttft, ttft0) = (s.buckets(sample::TTFT), window.sample.buckets(sample::TTFT));
    let mut names = sample::models(&[s]);
    names.extend(health.keys().cloned());
    let models: Vec<Value> = names
        .iter()
        .map(|m| {
            let (r, e) = req.get(m).copied().unwrap_or_default();
            let (r0, e0) = req0.get(m).copied().unwrap_or_default();
            let pct = |now: &BTreeMap<String, Vec<(f64, f64)>>,
                       then: &BTreeMap<String, Vec<(f64, f64)>>| {
                let [p50, p95, p99] = now
                    .get(m)
                    .map(|b| percentiles(&bucket_delta(b, then.get(m))))
                    .unwrap_or([None; 3]);
                json!({"p50": ms(p50), "p95": ms(p95), "p99": ms(p99)})
            };
            let (ok, all) = health.get(m).copied().unwrap_or_default();
            json!({
                "model": m,
                "workers_healthy": ok,
                "workers": all,
                "requests": r,
                "errors": e,
                "request_rate": rate(r, r0),
                "error_rate": rate(e, e0),
                "ttft_ms": pct(&ttft, &ttft0),
                "e2e_ms": pct(&e2e, &e2e0),
            })
        })
        .collect();

    let counted = |series: usize, n: usize| -> Vec<(Vec<String>, f64, Value)> {
        let then = rs.by(series, n);
        s.by(series, n)
            .into_iter()
            .map(|(k, v)| {
                let r = rate(v, then.get(&k).copied().unwrap_or(0.0));
                (k, v, r)
            })
            .collect()
    };
    let decisions: Vec<Value> = counted(sample::DECISIONS, 2)
        .into_iter()
        .map(|(k, total, r)| json!({"policy": k[0], "reason": k[1], "total": total, "rate": r}))
        .collect();
    let intents: Vec<Value> = counted(sample::INTENTS, 2)
        .into_iter()
        .filter(|(k, _, _)| !k[0].is_empty())
        .map(|(k, total, r)| json!({"intent": k[0], "model": k[1], "total": total, "rate": r}))
        .collect();
    let route: Vec<Value> = counted(sample::ROUTE_REQUESTS, 2)
        .into_iter()
        .map(|(k, total, r)| json!({"use_case": k[0], "path": k[1], "total": total, "rate": r}))
        .collect();
    let mut tenants: BTreeMap<String, Value> = BTreeMap::new();
    for (k, v) in s.series(sample::TENANT_REQUESTS) {
        tenants
            .entry(k[0].clone())
            .or_insert_with(|| json!({"tenant": k[0]}))[&k[1]] = json!(v);
    }
    for (k, v) in s.series(sample::TENANT_TOKENS) {
        tenants
            .entry(k[0].clone())
            .or_insert_with(|| json!({"tenant": k[0]}))[format!("{}_tokens", k[1])] = json!(v);
    }

    let (all, errors) = totals(s);
    let (all0, errors0) = totals(rs);
    let hits = s.total(sample::CACHE_HITS);
    let lookups = hits + s.total(sample::CACHE_MISSES);
    json!({
        "unix_ms": unix_ms(),
        "period_ms": PERIOD.as_millis() as u64,
        "rate_window_s": RATE_SECS,
        "percentile_window_s": seconds(now.at - window.at).round(),
        "policy": st.cfg.policy,
        "totals": {
            "requests": all,
            "errors": errors,
            "request_rate": rate(all, all0),
            "error_rate": rate(errors, errors0),
            "in_flight": st.registry.all().iter().map(|w| w.in_flight()).sum::<usize>(),
            "queue_depth": s.get(sample::QUEUE_DEPTH, &[]),
            "retry_rate": rate(s.total(sample::RETRIES), rs.total(sample::RETRIES)),
            "rejected_rate": rate(s.total(sample::REJECTED), rs.total(sample::REJECTED)),
            "prefix_index_hit_ratio": round(s.get(sample::PREFIX_HIT_RATIO, &[]), 4),
            "response_cache_hit_rate": (lookups > 0.0).then(|| round(hits / lookups, 4)),
        },
        "workers": workers,
        "models": models,
        "decisions": decisions,
        "intents": intents,
        "tenants": tenants.into_values().collect::<Vec<_>>(),
        "route": {
            "requests": route,
            "sessions_created": s.get(sample::ROUTE_SESSIONS, &[]),
        },
        "workflows": {
            "active": workflows.active,
            "queued_messages": workflows.queued_messages,
            "requests": workflows.requests,
            "cache_hit_rate": workflows.cache_hit_rate.map(|r| round(r, 4)),
        },
        "chart": chart.iter().map(|p| json!({
            "t": p.unix_ms, "rps": round(p.rps, 2), "eps": round(p.eps, 2),
            "e2e_p95_ms": ms(p.e2e_p95), "ttft_p95_ms": ms(p.ttft_p95),
        })).collect::<Vec<_>>(),
    })
}

// --- handlers ---

fn with_headers(mut resp: Response, content_type: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// `GET /dashboard`: the page.
pub async fn page() -> Response {
    with_headers(Html(PAGE).into_response(), "text/html; charset=utf-8")
}

/// `GET /dashboard/app.js`.
pub async fn script() -> Response {
    with_headers(SCRIPT.into_response(), "text/javascript; charset=utf-8")
}

/// `GET /dashboard/app.css` (also before signing in: the sign-in form uses it).
pub async fn style() -> Response {
    with_headers(STYLE.into_response(), "text/css; charset=utf-8")
}

/// `GET /dashboard/stream`: a snapshot every second as server-sent events (`data:` one
/// JSON object), until the viewer leaves or the gateway stops.
pub async fn stream(
    State(st): State<Arc<AppState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = Dashboard::subscribe(&st);
    let stop = st.shutdown.clone();
    let events = futures_util::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        tokio::select! {
            changed = rx.changed() => changed.ok()?,
            _ = stop.cancelled() => return None,
        }
        let data = rx.borrow_and_update().clone();
        Some((Ok(Event::default().data(&*data)), (rx, stop)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// How long `/dashboard/snapshot` waits for the sampler's next snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);

/// `GET /dashboard/snapshot`: the next snapshot as one JSON object (for scripts).
pub async fn snapshot_json(State(st): State<Arc<AppState>>) -> Response {
    let mut rx = Dashboard::subscribe(&st);
    let stopping = || {
        ApiError::unavailable("shutting_down", "The gateway is shutting down.", 1).into_response()
    };
    tokio::select! {
        changed = rx.changed() => if changed.is_err() {
            return stopping();
        },
        _ = st.shutdown.cancelled() => return stopping(),
        // A sampler ticks once a second: far past that, none is running.
        _ = tokio::time::sleep(SNAPSHOT_WAIT) => {
            return ApiError::unavailable("no_snapshot", "No dashboard snapshot was taken in time.", 1)
                .into_response();
        }
    }
    let data = rx.borrow_and_update().clone();
    with_headers(data.to_string().into_response(), "application/json")
}

/// How long a sign-in lasts.
const COOKIE_MAX_AGE_SECS: u64 = 12 * 3600;

/// A secret drawn when the process starts: the cookie is a digest of it and the key, so
/// the key is never stored in the browser, a cookie cannot be used to guess the key
/// offline, and no cookie outlives the process (a restart signs everyone out).
static COOKIE_SECRET: std::sync::LazyLock<[u8; 32]> = std::sync::LazyLock::new(|| {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source");
    b
});

/// The cookie value standing for `key` in this process.
fn cookie_token(key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"switchyard-dashboard\0");
    h.update(*COOKIE_SECRET);
    h.update(key.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the request carries the dashboard cookie for `key`.
pub fn cookie_matches(headers: &HeaderMap, key: &str) -> bool {
    let want = cookie_token(key);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|v| crate::pipeline::admit::constant_time_eq(v.as_bytes(), want.as_bytes()))
}

/// Paths the admin-key check lets through on their own: signing in and the style the
/// sign-in form uses.
pub fn is_public(path: &str) -> bool {
    path == "/dashboard/login" || path == "/dashboard/app.css"
}

/// Dashboard paths (the cookie is accepted on these only).
pub fn is_dashboard(path: &str) -> bool {
    path == "/dashboard" || path.starts_with("/dashboard/")
}

/// The sign-in form, with a message after a failed attempt.
pub fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let alert = message.map_or(String::new(), |m| {
        format!("<p class=\"alert\" role=\"alert\" id=\"login-error\">{m}</p>")
    });
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Switchyard dashboard: sign in</title><link rel=\"stylesheet\" href=\"/dashboard/app.css\">\
</head><body><main class=\"login\"><h1>Switchyard dashboard</h1>{alert}\
<form method=\"post\" action=\"/dashboard/login\">\
<label for=\"key\">Admin API key</label>\
<input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
<button type=\"submit\">Sign in</button></form></main></body></html>"
    );
    let mut resp = with_headers(Html(body).into_response(), "text/html; charset=utf-8");
    *resp.status_mut() = status;
    resp
}

/// The largest sign-in form read: the form has one field, and the endpoint is open to
/// anyone who reaches the admin listener.
const LOGIN_FORM_LIMIT: usize = 8 * 1024;

/// `POST /dashboard/login` (a form with `key`): sets the cookie and goes to the page.
pub async fn login(State(st): State<Arc<AppState>>, body: axum::body::Body) -> Response {
    let Some(want) = &st.cfg.admin_api_key else {
        return redirect(None);
    };
    let Ok(body) = axum::body::to_bytes(body, LOGIN_FORM_LIMIT).await else {
        return login_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("That form is too large: send only the admin API key."),
        );
    };
    let key = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned());
    match key {
        None => login_page(StatusCode::BAD_REQUEST, Some("Enter the admin API key.")),
        Some(k) if crate::pipeline::admit::constant_time_eq(k.as_bytes(), want.as_bytes()) => {
            redirect(Some(&cookie_token(want)))
        }
        Some(_) => login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin API key."),
        ),
    }
}

fn redirect(token: Option<&str>) -> Response {
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response();
    if let Some(t) = token
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={t}; Path=/dashboard; Max-Age={COOKIE_MAX_AGE_SECS}; HttpOnly; SameSite=Strict"
        ))
    {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_a_digest_of_the_key_and_checked_by_name() {
        let t = cookie_token("k1");
        assert_eq!(t.len(), 64);
        assert!(!t.contains("k1"));
        // Not a digest of the key alone: the process's secret is in it.
        let bare: String = Sha256::digest(b"switchyard-dashboard\0k1")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(t, bare);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={t}")).unwrap(),
        );
        assert!(cookie_matches(&h, "k1"));
        assert!(!cookie_matches(&h, "k2"));
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x{COOKIE}={t}")).unwrap(),
        );
        assert!(!cookie_matches(&other, "k1"));
    }

    #[test]
    fn engine_readings_take_vllm_names_and_ranks() {
        let text = "vllm:num_requests_running{engine=\"0\"} 2\nvllm:num_requests_running{engine=\"1\"} 5\n\
                    vllm:num_requests_waiting{engine=\"1\"} 3\nvllm:gpu_cache_usage_perc{engine=\"1\"} 0.25\n\
                    vllm:prefix_cache_hits_total{engine=\"1\"} 30\nvllm:prefix_cache_queries_total{engine=\"1\"} 120\n";
        let r = engine_reading(text, Some(1));
        assert_eq!((r.running, r.waiting), (5.0, 3.0));
        assert_eq!(r.kv_usage, Some(0.25));
        assert_eq!((r.prefix_hits, r.prefix_queries), (30.0, 120.0));
        assert_eq!(engine_reading("", None).kv_usage, None);
    }
}
