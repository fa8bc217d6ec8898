//! The deployment files (deploy/): the Grafana dashboard names only metrics that a
//! gateway or a vLLM engine (the simulator) really exports; the Helm chart renders,
//! lints, and its objects fit together and configure a gateway that accepts them; the
//! raw manifests are what the chart renders; the Dockerfile passes hadolint.
//!
//! The chart is rendered and linted by scripts/helm.py with the pinned Helm SDK of
//! deploy/requirements.txt, in the virtual environment scripts/venv.sh makes (deploy/.venv)
//! (these tests make it when it is missing; `.ci/run` makes it first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};
use switchyard::{Config, PolicyKind};
use switchyard_testkit::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

// ---------------------------------------------------------------------------------
// PromQL: the metric names an expression reads.

/// PromQL's functions and aggregation operators (an identifier followed by `(` must be
/// one of these; an unknown one fails the extraction, so a typo cannot pass as a
/// function).
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
    "start",
    "end",
];

/// Aggregation operators: `sum by (l) (x)` puts the grouping between the name and `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords whose parenthesised list holds label names, not expressions.
const GROUPINGS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Binary-operator keywords and modifiers.
const KEYWORDS: &[&str] = &[
    "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index just past the bracket closing the one at `open`, skipping quoted strings.
fn skip_balanced(s: &[char], open: usize) -> usize {
    let (o, c) = (
        s[open],
        match s[open] {
            '(' => ')',
            '{' => '}',
            '[' => ']',
            other => panic!("not a bracket: {other}"),
        },
    );
    let mut depth = 0;
    let mut i = open;
    while i < s.len() {
        match s[i] {
            q @ ('"' | '\'' | '`') => i = skip_string(s, i, q) - 1,
            x if x == o => depth += 1,
            x if x == c => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced {o} in {}", s.iter().collect::<String>());
}

/// Index just past the string literal starting at `start` (quote `q`).
fn skip_string(s: &[char], start: usize, q: char) -> usize {
    let mut i = start + 1;
    while i < s.len() {
        if s[i] == '\\' && q != '`' {
            i += 2;
            continue;
        }
        if s[i] == q {
            return i + 1;
        }
        i += 1;
    }
    panic!("unterminated string in {}", s.iter().collect::<String>());
}

/// The metric names a PromQL expression selects: identifiers followed by `{` or `[`
/// or standing alone, less functions, aggregations, keywords, label names (in
/// matchers and groupings), strings, numbers, durations and Grafana variables.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let s: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&s, i, c);
        } else if c == '{' || c == '[' {
            // Label matchers of a selector, or a range / subquery: no metric names.
            i = skip_balanced(&s, i);
        } else if c == '$' {
            // A Grafana variable: $name, ${name}, $__rate_interval.
            i += 1;
            if i < s.len() && s[i] == '{' {
                i = skip_balanced(&s, i);
            } else {
                while i < s.len() && is_ident(s[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && s.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (5m, 1e3, 0.95).
            while i < s.len() && (is_ident(s[i]) || s[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let mut j = i;
            while j < s.len() && s[j].is_whitespace() {
                j += 1;
            }
            let next = s.get(j).copied();
            let lower = word.to_ascii_lowercase();
            if GROUPINGS.contains(&lower.as_str()) {
                if next == Some('(') {
                    i = skip_balanced(&s, j);
                }
            } else if AGGREGATIONS.contains(&lower.as_str()) || KEYWORDS.contains(&lower.as_str()) {
            } else if next == Some('(') {
                assert!(
                    FUNCTIONS.contains(&word.as_str()),
                    "`{word}(` in `{expr}` is no PromQL function"
                );
            } else {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_promql_extractor_finds_metrics_and_nothing_else() {
    let names = |e: &str| promql_metrics(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{model=~"$model", x="}by(y)"}[$__rate_interval])))"#
        ),
        ["a_seconds_bucket"]
    );
    assert_eq!(
        names(
            "sum(rate(vllm:prefix_cache_hits_total[5m])) / sum without (instance) (rate(vllm:prefix_cache_queries_total[5m] offset 1h))"
        ),
        [
            "vllm:prefix_cache_hits_total",
            "vllm:prefix_cache_queries_total"
        ]
    );
    assert_eq!(names("count(up == 0) or vector(0)"), ["up"]);
    assert_eq!(
        names("a * on (worker) group_left (model) b > bool 1e3 unless c"),
        ["a", "b", "c"]
    );
    assert_eq!(names("sum(x) by (le)"), ["x"]);
    assert_eq!(names("max_over_time(g[1h:5m])"), ["g"]);
    assert_eq!(names("${datasource} 1"), Vec::<String>::new());
}

#[test]
#[should_panic(expected = "no PromQL function")]
fn the_promql_extractor_refuses_an_unknown_function() {
    promql_metrics("rat(x[5m])");
}

// ---------------------------------------------------------------------------------
// Metric expositions.

/// Every sample name an exposition (text format or OpenMetrics) can hold: the sample
/// lines present, and for each `# TYPE` what that type renders (`_total` of a counter,
/// `_bucket`/`_sum`/`_count` of a histogram, …), so a family with no sample yet counts.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            let suffixes: &[&str] = match kind.trim() {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

/// Every PromQL expression of a dashboard: panel targets (rows' nested panels too) and
/// the query variables (`label_values(selector, label)` gives its selector).
fn dashboard_queries(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                for (k, x) in m {
                    if k != "templating" {
                        walk(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if var["type"] != "query" {
            continue;
        }
        let q = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .expect("a query variable's query");
        let q = match q.strip_prefix("label_values(") {
            Some(args) => {
                let args = args.strip_suffix(')').expect("label_values(…)");
                match args.rsplit_once(',') {
                    Some((selector, _label)) => selector.to_string(),
                    None => continue, // label_values(label): no metric
                }
            }
            None => q.to_string(),
        };
        out.push(q);
    }
    out
}

/// The names a dashboard reads that neither exposition exports.
fn unexported(dash: &Value, available: &BTreeSet<String>) -> BTreeSet<String> {
    dashboard_queries(dash)
        .iter()
        .flat_map(|q| promql_metrics(q))
        .filter(|m| !available.contains(m))
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/switchyard.json"))
        .expect("deploy/grafana/switchyard.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// A gateway with the demo's intent routing (bench/configs/intent-keywords.yaml: `auto`
/// classified into coder, reasoner, general) in front of one simulator per model, the
/// coder's failing every request, and an API key; and traffic that makes every kind of
/// family the dashboard reads have samples (prometheus-client leaves a family with no
/// sample out of the exposition): plain and streaming chats, a classified request that
/// fails on coder (retries, upstream and model errors) and falls back to general,
/// one naming coder that fails (a model error), and one without a key (refused, an
/// auth failure).
async fn busy_gateway() -> (Vec<switchyard_sim::SimHandle>, switchyard::Gateway) {
    let coder = serving("coder", 1).await;
    let reasoner = serving("reasoner", 1).await;
    let general = serving("general", 1).await;
    set_faults_everywhere(
        &coder,
        &switchyard_sim::Faults {
            error_rate: 1.0,
            error_status: 500,
            ..switchyard_sim::Faults::default()
        },
    );
    let selection = repo().join("bench/configs/intent-keywords.yaml");
    let (_, mut cfg) = Config::from_arg_list([
        "switchyard",
        "serve",
        "--config",
        selection.to_str().unwrap(),
    ])
    .unwrap();
    let fast = config(vec![], PolicyKind::CacheAware);
    cfg.port = 0;
    cfg.prometheus_port = 0;
    cfg.admin_port = 0;
    cfg.health_check_interval_secs = fast.health_check_interval_secs;
    cfg.health_check_timeout_secs = fast.health_check_timeout_secs;
    cfg.retry_initial_backoff_ms = 1;
    cfg.retry_max_backoff_ms = 5;
    cfg.database_url = Some("sqlite::memory:".into());
    cfg.api_key = Some("test-key".into());
    // A request naming coder fails there (a model error) instead of falling back.
    cfg.fallback_on_named_model = false;
    cfg.worker_urls = [&coder, &reasoner, &general]
        .iter()
        .flat_map(|s| s.urls())
        .collect();
    let gw = gateway(cfg).await;
    (vec![coder, reasoner, general], gw)
}

#[tokio::test]
async fn the_dashboard_reads_only_metrics_that_the_gateway_or_the_engines_export() {
    let dash = dashboard();
    let (sims, gw) = busy_gateway().await;
    let http = reqwest::Client::new();
    let chat = |body: Value| {
        http.post(format!("{}/v1/chat/completions", gw.url()))
            .bearer_auth("test-key")
            .json(&body)
            .send()
    };
    for i in 0..3 {
        let r = chat(json!({"model": "general", "max_tokens": 8,
                            "messages": [{"role": "user", "content": prompt_text(i, 40)}]}))
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = chat(json!({"model": "general", "stream": true, "max_tokens": 8,
                        "stream_options": {"include_usage": true},
                        "messages": [{"role": "user", "content": prompt_text(7, 30)}]}))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    // Classified as code: coder fails (500, retried), general answers.
    let r = chat(json!({"model": "auto", "max_tokens": 8,
                        "messages": [{"role": "user", "content": "write a python function to debug this code"}]}))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["model"], "general");
    // Naming coder: its error is passed on.
    let r = chat(json!({"model": "coder", "max_tokens": 8,
                        "messages": [{"role": "user", "content": "hello"}]}))
    .await
    .unwrap();
    assert_eq!(r.status(), 500);
    // No key: refused.
    let r = http
        .post(format!("{}/v1/chat/completions", gw.url()))
        .json(&json!({"model": "general", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let scrape = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let gateway = scrape(format!("{}/metrics", metrics_url(&gw))).await;
    let engine = scrape(format!("{}/metrics", sims[2].urls()[0])).await;
    let gateway = exported(&gateway);
    let engine = exported(&engine);
    assert!(gateway.contains("switchyard_requests_total"), "{gateway:?}");
    assert!(engine.contains("vllm:num_requests_running"), "{engine:?}");
    let available: BTreeSet<String> = gateway.union(&engine).cloned().collect();

    let missing = unexported(&dash, &available);
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics nobody exports: {missing:?}"
    );

    // It covers what an operator looks at, from both sides.
    let used: BTreeSet<String> = dashboard_queries(&dash)
        .iter()
        .flat_map(|q| promql_metrics(q))
        .collect();
    for m in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_time_to_first_token_seconds_bucket",
        "switchyard_worker_healthy",
        "switchyard_worker_circuit_state",
        "switchyard_retries_total",
        "switchyard_queue_depth",
        "switchyard_model_requests_total",
        "switchyard_classifications_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:num_requests_waiting",
    ] {
        assert!(used.contains(m), "no panel reads {m}");
    }

    // The check itself: a panel naming a metric nobody exports is caught.
    let mut broken = dash.clone();
    broken["panels"].as_array_mut().unwrap().push(json!({
        "type": "timeseries", "title": "typo",
        "targets": [{"expr": "sum(rate(switchyard_request_total{model=~\"$model\"}[5m]))"}]
    }));
    assert_eq!(
        unexported(&broken, &available),
        BTreeSet::from(["switchyard_request_total".to_string()])
    );
}

#[test]
fn the_dashboard_imports_with_a_datasource_input_and_unique_panels() {
    let dash = dashboard();
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["type"] == "datasource").unwrap();
    assert_eq!(ds["query"], "prometheus");
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id {p}");
        assert!(p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            queried += 1;
        }
    }
    assert!(queried >= 30, "{queried} queries");
}

// ---------------------------------------------------------------------------------
// The Helm chart.

/// deploy/.venv's python, the environment made once per test binary.
fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| switchyard_stateful::testing::venv_python("deploy"))
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new(python())
        .arg(repo().join("scripts/helm.py"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("scripts/helm.py runs")
}

/// The chart rendered with `values` (over its defaults) in namespace `llm`.
fn render(values: &Value) -> Vec<Value> {
    let set = values.to_string();
    let out = helm(&[
        "template",
        "deploy/helm/switchyard",
        "--namespace",
        "llm",
        "--name",
        "sy",
        "--set-json",
        &set,
    ]);
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_manifests(&String::from_utf8(out.stdout).unwrap())
}

fn parse_manifests(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in docs {
        *out.entry(d["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", kinds(docs)))
}

fn container(docs: &[Value]) -> &Value {
    let deps: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deps.len(), 1);
    &deps[0]["spec"]["template"]["spec"]["containers"][0]
}

fn port_names(ports: &Value) -> BTreeSet<String> {
    ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// The gateway config the rendered Deployment runs with: the ConfigMap's file and the
/// container's arguments, `$(VAR)` taken from the env (a Secret of the chart, else
/// `outside`: what a Secret the chart does not own would hold), and the variables the
/// gateway reads itself (`SWITCHYARD_*_API_KEY`) passed as their flags. Validated.
fn gateway_config(docs: &[Value], outside: &[(&str, &str)]) -> Config {
    let c = container(docs);
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else {
            let r = &e["valueFrom"]["secretKeyRef"];
            let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            match docs
                .iter()
                .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret)
            {
                Some(s) => s["stringData"][key]
                    .as_str()
                    .unwrap_or_else(|| panic!("Secret {secret} has no {key}"))
                    .to_string(),
                None => outside
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("{name} from Secret {secret}, not given"))
                    .1
                    .to_string(),
            }
        };
        env.insert(name, value);
    }
    // The config file is where the ConfigMap is mounted.
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let file = std::env::temp_dir().join(format!(
        "switchyard-deploy-{}-{}.yaml",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::write(&file, cm["data"]["switchyard.yaml"].as_str().unwrap()).unwrap();
    let mut args = vec!["switchyard".to_string()];
    for a in c["args"].as_array().unwrap() {
        let mut a = a.as_str().unwrap().to_string();
        if let Some(path) = a.strip_prefix("--config=") {
            assert_eq!(path, format!("{mount}/switchyard.yaml"));
            a = format!("--config={}", file.display());
        }
        while let Some(start) = a.find("$(") {
            let end = start + a[start..].find(')').unwrap();
            let var = &a[start + 2..end];
            let v = env
                .get(var)
                .unwrap_or_else(|| panic!("$({var}) is not in env"));
            a = format!("{}{v}{}", &a[..start], &a[end + 1..]);
        }
        args.push(a);
    }
    for (var, flag) in [
        ("SWITCHYARD_ADMIN_API_KEY", "--admin-api-key"),
        ("SWITCHYARD_API_KEY", "--api-key"),
        ("SWITCHYARD_WORKER_API_KEY", "--worker-api-key"),
    ] {
        if let Some(v) = env.get(var) {
            args.push(format!("{flag}={v}"));
        }
    }
    let parsed = Config::from_arg_list(&args);
    std::fs::remove_file(&file).ok();
    let (_, cfg) = parsed.unwrap_or_else(|e| panic!("{args:?}: {e}"));
    cfg.validate().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    cfg
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The environment variables the gateway reads itself are the ones the chart sets.
#[test]
fn the_gateway_reads_the_key_variables_the_chart_sets() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("env: SWITCHYARD_ADMIN_API_KEY"), "{help}");
    let helpers =
        std::fs::read_to_string(repo().join("deploy/helm/switchyard/templates/_helpers.tpl"))
            .unwrap();
    assert!(helpers.contains("name: SWITCHYARD_ADMIN_API_KEY"));
}

#[test]
fn the_chart_with_default_values_is_one_gateway_with_nothing_extra() {
    let docs = render(&json!({"workers": ["http://vllm-0.vllm:8000"]}));
    assert_eq!(
        kinds(&docs),
        BTreeMap::from([
            ("ConfigMap".to_string(), 1),
            ("Deployment".to_string(), 1),
            ("Service".to_string(), 2),
        ])
    );
    let public = find(&docs, "Service", "sy-switchyard");
    assert_eq!(
        port_names(&public["spec"]["ports"]),
        BTreeSet::from(["http".into()])
    );
    find(&docs, "Service", "sy-switchyard-metrics");
    let dep = find(&docs, "Deployment", "sy-switchyard");
    assert_eq!(dep["spec"]["replicas"], 1);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["serviceAccountName"], "default");
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    let c = container(&docs);
    assert!(c.get("env").is_none(), "{c}");
    assert_eq!(
        port_names(&c["ports"]),
        BTreeSet::from(["http".into(), "metrics".into()])
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readiness");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/liveness");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);

    let cfg = gateway_config(&docs, &[]);
    assert_eq!(cfg.worker_urls, vec!["http://vllm-0.vllm:8000".to_string()]);
    assert_eq!(cfg.host, "0.0.0.0");
    assert_eq!(cfg.prometheus_host, "0.0.0.0");
    // No admin key: the admin listener stays on loopback.
    assert_eq!(cfg.admin_host, "127.0.0.1");
    assert!(cfg.admin_api_key.is_none());
    assert!(!cfg.service_discovery);
    assert_eq!(cfg.policy, PolicyKind::CacheAware);
    assert_eq!(cfg.port, 30000);
    assert_eq!(cfg.prometheus_port, 29000);
    // The pod outlives the gateway's own grace period.
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > cfg.shutdown_grace_period_secs
    );
}

fn everything_on() -> Value {
    json!({
        "workers": ["http://vllm-0.vllm:8000"],
        "policy": "power_of_two",
        "discovery": {"enabled": true, "namespace": "engines", "selector": ["app=vllm", "tier=gpu"]},
        "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 5},
        "serviceMonitor": {"enabled": true, "labels": {"release": "prom"}},
        "podDisruptionBudget": {"enabled": true},
        "admin": {"apiKey": "admin-s3cret"},
        "database": {"url": "postgres://sy:pw@pg.db:5432/switchyard"},
        "redis": {"existingSecret": "redis-creds"},
        "config": {"response_cache": "memory", "max_concurrent_requests": 64},
        "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}}
    })
}

#[test]
fn the_chart_with_everything_on_fits_together() {
    let docs = render(&everything_on());
    assert_eq!(
        kinds(&docs),
        BTreeMap::from([
            ("ConfigMap".to_string(), 1),
            ("Deployment".to_string(), 1),
            ("HorizontalPodAutoscaler".to_string(), 1),
            ("PodDisruptionBudget".to_string(), 1),
            ("Role".to_string(), 1),
            ("RoleBinding".to_string(), 1),
            ("Secret".to_string(), 1),
            ("Service".to_string(), 3),
            ("ServiceAccount".to_string(), 1),
            ("ServiceMonitor".to_string(), 1),
        ])
    );
    let selector =
        json!({"app.kubernetes.io/name": "switchyard", "app.kubernetes.io/instance": "sy"});
    let dep = find(&docs, "Deployment", "sy-switchyard");
    assert_eq!(dep["spec"]["selector"]["matchLabels"], selector);
    // The HPA owns the replica count.
    assert!(dep["spec"].get("replicas").is_none());
    let hpa = find(&docs, "HorizontalPodAutoscaler", "sy-switchyard");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "sy-switchyard");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    let pdb = find(&docs, "PodDisruptionBudget", "sy-switchyard");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], selector);

    // Discovery: the pod's account may get, list and watch pods where it looks.
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "sy-switchyard");
    assert_eq!(pod["automountServiceAccountToken"], true);
    let sa = find(&docs, "ServiceAccount", "sy-switchyard");
    assert_eq!(sa["metadata"]["namespace"], "llm");
    let role = find(&docs, "Role", "sy-switchyard-pod-reader");
    assert_eq!(role["metadata"]["namespace"], "engines");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
    );
    let binding = find(&docs, "RoleBinding", "sy-switchyard-pod-reader");
    assert_eq!(binding["metadata"]["namespace"], "engines");
    assert_eq!(binding["roleRef"]["name"], "sy-switchyard-pod-reader");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "sy-switchyard", "namespace": "llm"}])
    );

    // Services: the public one carries the data plane only; admin and metrics have
    // their own, and every targetPort names a container port.
    let c = container(&docs);
    let container_ports = port_names(&c["ports"]);
    assert_eq!(
        container_ports,
        BTreeSet::from(["http".into(), "metrics".into(), "admin".into()])
    );
    let public = find(&docs, "Service", "sy-switchyard");
    assert_eq!(public["spec"]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(public["spec"]["ports"][0]["targetPort"], "http");
    let admin = find(&docs, "Service", "sy-switchyard-admin");
    assert_eq!(admin["spec"]["type"], "ClusterIP");
    assert_eq!(admin["spec"]["ports"][0]["targetPort"], "admin");
    for s in docs.iter().filter(|d| d["kind"] == "Service") {
        assert_eq!(s["spec"]["selector"], selector);
        for p in s["spec"]["ports"].as_array().unwrap() {
            assert!(
                container_ports.contains(p["targetPort"].as_str().unwrap()),
                "{s}"
            );
        }
    }
    // The ServiceMonitor selects the metrics Service alone, by its port name.
    let sm = find(&docs, "ServiceMonitor", "sy-switchyard");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    let wanted = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let selected: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Service")
        .filter(|d| wanted.iter().all(|(k, v)| &d["metadata"]["labels"][k] == v))
        .collect();
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0]["metadata"]["name"], "sy-switchyard-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert!(port_names(&selected[0]["spec"]["ports"]).contains("metrics"));

    // Secrets reach the gateway through env, never the ConfigMap.
    let secret = find(&docs, "Secret", "sy-switchyard");
    assert_eq!(secret["stringData"]["admin-api-key"], "admin-s3cret");
    assert_eq!(
        secret["stringData"]["database-url"],
        "postgres://sy:pw@pg.db:5432/switchyard"
    );
    assert!(secret["stringData"].get("redis-url").is_none());
    let cm_text = find(&docs, "ConfigMap", "sy-switchyard")["data"]["switchyard.yaml"]
        .as_str()
        .unwrap();
    assert!(
        !cm_text.contains("s3cret") && !cm_text.contains("postgres"),
        "{cm_text}"
    );

    let cfg = gateway_config(
        &docs,
        &[("SWITCHYARD_REDIS_URL", "redis://redis.db:6379/0")],
    );
    assert_eq!(cfg.admin_host, "0.0.0.0");
    assert_eq!(cfg.admin_api_key.as_deref(), Some("admin-s3cret"));
    assert_eq!(
        cfg.database_url.as_deref(),
        Some("postgres://sy:pw@pg.db:5432/switchyard")
    );
    assert_eq!(cfg.redis_url.as_deref(), Some("redis://redis.db:6379/0"));
    assert!(cfg.service_discovery);
    assert_eq!(cfg.service_discovery_namespace.as_deref(), Some("engines"));
    assert_eq!(
        cfg.selector,
        vec!["app=vllm".to_string(), "tier=gpu".into()]
    );
    assert_eq!(cfg.policy, PolicyKind::PowerOfTwo);
    assert_eq!(cfg.max_concurrent_requests, 64);
    assert_eq!(
        cfg.response_cache,
        Some(switchyard::config::CacheBackend::Memory)
    );
    assert_eq!(cfg.rate_limit_replicas, 5);
    assert_eq!(cfg.worker_urls, vec!["http://vllm-0.vllm:8000".to_string()]);
}

/// An admin key from an existing Secret: no Secret of the chart's own, the env
/// references the given one, and the admin listener leaves loopback.
#[test]
fn the_admin_key_can_come_from_an_existing_secret() {
    let docs = render(&json!({
        "workers": ["http://vllm-0.vllm:8000"],
        "admin": {"existingSecret": "ops-keys", "existingSecretKey": "switchyard-admin"}
    }));
    assert!(!kinds(&docs).contains_key("Secret"));
    let c = container(&docs);
    assert_eq!(
        c["env"],
        json!([{"name": "SWITCHYARD_ADMIN_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "ops-keys", "key": "switchyard-admin"}}}])
    );
    find(&docs, "Service", "sy-switchyard-admin");
    let cfg = gateway_config(&docs, &[("SWITCHYARD_ADMIN_API_KEY", "k")]);
    assert_eq!(cfg.admin_host, "0.0.0.0");
}

/// The probes of the chart ask paths the gateway serves: 200 from a gateway in front
/// of a healthy engine.
#[tokio::test]
async fn the_probe_paths_are_served_by_the_gateway() {
    let docs = render(&json!({"workers": ["http://vllm-0.vllm:8000"]}));
    let c = container(&docs).clone();
    let bed = TestBed::start(1, PolicyKind::RoundRobin).await;
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "http");
        let path = c[probe]["httpGet"]["path"].as_str().unwrap().to_string();
        let url = format!("{}{path}", bed.url);
        eventually(&format!("{probe} {path} answers 200"), || async {
            bed.http.get(&url).await.0 == 200
        })
        .await;
    }
    // A path the gateway does not serve would not pass.
    assert_eq!(bed.http.get(&format!("{}/healthz", bed.url)).await.0, 404);
}

#[test]
fn the_chart_lints_clean_with_defaults_and_with_everything_on() {
    for values in [json!({}), everything_on()] {
        let set = values.to_string();
        let out = helm(&["lint", "deploy/helm/switchyard", "--set-json", &set]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "helm lint {set}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 chart(s) linted, no failures"), "{text}");
    }
    // A contradictory setting is refused: a ServiceMonitor without the Service it scrapes.
    let out = helm(&[
        "template",
        "deploy/helm/switchyard",
        "--set-json",
        r#"{"serviceMonitor": {"enabled": true}, "metrics": {"service": false}}"#,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serviceMonitor.enabled needs metrics.service"),
        "refused for the chart's own reason: {err}"
    );
}

/// deploy/kubernetes/switchyard.yaml is what the chart renders with its values file.
#[test]
fn the_raw_manifests_are_rendered_from_the_chart() {
    python();
    let out = Command::new(repo().join("scripts/render-deploy.sh"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/switchyard.yaml")).unwrap();
    let docs = parse_manifests(&text);
    // Discovery in namespace llm, with its RBAC (the old deploy/rbac.yaml).
    for kind in [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
    ] {
        assert!(kinds(&docs).contains_key(kind), "{kind}");
    }
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "llm"));
    assert!(!kinds(&docs).contains_key("Secret"));
}

// ---------------------------------------------------------------------------------
// The container image.

#[test]
fn the_dockerfile_passes_hadolint() {
    let py = PathBuf::from(python());
    let hadolint = py.parent().unwrap().join("hadolint");
    let out = Command::new(&hadolint)
        .arg(repo().join("deploy/Dockerfile"))
        .output()
        .expect("hadolint runs");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    for line in [
        "USER 65532:65532",
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK",
        "EXPOSE 30000 29000",
    ] {
        assert!(text.contains(line), "{line}");
    }
    // hadolint does flag a bad Dockerfile (the check can fail).
    let bad = std::env::temp_dir().join(format!("Dockerfile-{}", fastrand_u64()));
    std::fs::write(&bad, "FROM debian:latest\nRUN apt-get install curl\n").unwrap();
    let out = Command::new(&hadolint).arg(&bad).output().unwrap();
    std::fs::remove_file(&bad).ok();
    assert!(!out.status.success());
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(
        found.contains("DL3007"),
        "the `latest` tag is flagged: {found}"
    );
}
