//! `switchyard serve`, `switchyard demo` and `switchyard check-tokenizer`.

use switchyard::{Config, Gateway};

// glibc malloc was ~10% of the data plane's CPU at saturation; jemalloc costs less
// and, unlike mimalloc here, keeps idle RSS low (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("check-tokenizer") {
        use clap::Parser;
        let args = switchyard::routing::kv::check::CheckArgs::parse_from(std::env::args().skip(1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::process::exit(rt.block_on(switchyard::routing::kv::check::run(args)));
    }
    let (demo, cfg) = match Config::from_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let _log_guard = switchyard::logging::init(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if demo {
            run_demo(cfg).await
        } else {
            run(cfg).await
        }
    })
}

#[cfg(not(feature = "demo"))]
async fn run_demo(_: Config) -> anyhow::Result<()> {
    anyhow::bail!("this switchyard was built without the `demo` feature")
}

/// Where `serve` keeps the Responses API's objects unless told otherwise.
const DEFAULT_DATABASE_URL: &str = "sqlite://switchyard.db";
/// Where `serve` keeps uploaded files' bytes unless told otherwise.
const DEFAULT_FILES_DIR: &str = "switchyard-files";

async fn run(mut cfg: Config) -> anyhow::Result<()> {
    cfg.database_url
        .get_or_insert_with(|| DEFAULT_DATABASE_URL.to_string());
    if cfg.files_url.is_none() {
        cfg.files_dir
            .get_or_insert_with(|| DEFAULT_FILES_DIR.into());
    }
    // Handlers first: a SIGHUP that arrives once the gateway answers must reload it,
    // not end the process (the default action).
    let signals = Signals::new();
    let gw = Gateway::start(cfg).await?;
    tracing::info!(
        "switchyard listening on {} (metrics on http://{}/metrics)",
        gw.url(),
        gw.metrics_addr
    );
    if gw.state.registry.all().is_empty() {
        tracing::warn!(
            "no workers configured: register them at http://{}/workers (or pass --worker-urls)",
            gw.admin_addr
        );
    }
    signals.wait(&gw).await;
    tracing::info!("shutting down: draining in-flight requests");
    gw.shutdown();
    gw.wait().await;
    Ok(())
}

/// The demo's model selection, unless the config brings its own: the example config's
/// coder, reasoner and general models (all served by the simulated engines) behind
/// `model: auto`.
#[cfg(feature = "demo")]
const DEMO_SELECTION: &str = include_str!("../../../bench/configs/intent-keywords.yaml");

/// The gateway in front of three simulated engines in this process.
#[cfg(feature = "demo")]
async fn run_demo(mut cfg: Config) -> anyhow::Result<()> {
    if cfg.intent_routing.is_none() {
        let demo: Config = yaml_serde::from_str(DEMO_SELECTION)?;
        cfg.intent_routing = demo.intent_routing;
        for (model, settings) in demo.models {
            cfg.models.entry(model).or_insert(settings);
        }
        cfg.validate()?;
    }
    let sims = switchyard_sim::spawn(switchyard_sim::SimConfig {
        engines: 3,
        port: 0,
        num_gpu_blocks: 8192,
        served_model_name: ["switchyard/sim-8b", "coder", "reasoner", "general"]
            .map(String::from)
            .to_vec(),
        ..switchyard_sim::SimConfig::default()
    })
    .await?;
    cfg.worker_urls = sims.urls();
    // Vector stores embed with the simulated engines' embeddings.
    cfg.embedding_model
        .get_or_insert_with(|| "switchyard/sim-8b".into());
    let signals = Signals::new();
    let gw = Gateway::start(cfg).await?;
    let url = gw.url();
    println!(
        r#"
Switchyard demo: gateway {url} → 3 simulated vLLM engines {engines}
Dashboard: http://{admin}/dashboard   (open it in a browser: workers, traffic, latency, routing, live)
Metrics: http://{metrics}/metrics   Health: {url}/health

  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{{"model": "switchyard/sim-8b", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 32}}'

  # Let the gateway choose the model by intent (coder, reasoner or general); the
  # x-routing-metadata header says what it chose (docs/model-selection.md).
  curl -i {url}/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Fix this Python function"}}], "max_tokens": 32}}'
  curl {url}/router/info

  # Or let it choose and remember: /route picks the use case and model, and keeps a
  # session; follow-ups naming the session skip classification (docs/route-api.md).
  curl {url}/route -H 'Content-Type: application/json' \
    -d '{{"query": "Write a Python function that parses dates"}}'

  # Documents, a vector store and file_search with citations
  # (docs/files-and-vector-stores.md)
  curl {url}/v1/files -F purpose=assistants -F file=@README.md
  curl {url}/v1/vector_stores -H 'Content-Type: application/json' -d '{{"file_ids": ["<file id>"]}}'
  curl {url}/v1/responses -H 'Content-Type: application/json' \
    -d '{{"model": "switchyard/sim-8b", "input": "What is Switchyard?", "tools": [{{"type": "file_search", "vector_store_ids": ["<vector store id>"]}}]}}'

  # Python (pip install openai)
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  r = client.chat.completions.create(model="switchyard/sim-8b",
        messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=32)
  print(r.choices[0].message.content, r.usage)

Ctrl-C to stop.
"#,
        engines = sims.urls().join(", "),
        metrics = gw.metrics_addr,
        admin = gw.admin_addr,
    );
    signals.wait(&gw).await;
    gw.shutdown();
    gw.wait().await;
    sims.shutdown();
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP, listened to from creation on.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
                hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for SIGINT or SIGTERM; on SIGHUP, reloads the model-selection settings.
    async fn wait(mut self, gw: &Gateway) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            tokio::pin!(ctrl_c);
            loop {
                tokio::select! {
                    _ = &mut ctrl_c => return,
                    _ = self.term.recv() => return,
                    _ = self.hup.recv() => match gw.reload().await {
                        Ok(()) => tracing::info!("SIGHUP: model selection reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: the new config was rejected; the old one stays in force"),
                    },
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (gw, &mut self);
            let _ = ctrl_c.await;
        }
    }
}
