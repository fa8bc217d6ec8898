//! The `switchyard-sim` command: parse flags, start the engines, wait for Ctrl-C /
//! SIGTERM. The binary lives in the `switchyard` package
//! (`crates/switchyard/src/bin/switchyard-sim.rs`, feature `demo`) so that one package
//! holds both commands, which is what a `pip install switchyard-gateway` wheel packs
//! (maturin's `bin` bindings take the binaries of one package).

use clap::Parser;

use crate::SimConfig;

/// Runs the command with the process's arguments; exits 2 on invalid flags.
pub fn main() -> anyhow::Result<()> {
    let cfg = SimConfig::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(cfg))
}

async fn serve(cfg: SimConfig) -> anyhow::Result<()> {
    let handle = crate::spawn(cfg.clone()).await?;
    for (i, url) in handle.urls().iter().enumerate() {
        tracing::info!(
            "engine {i}: {url} (model {}, role {:?}, {} dp rank(s), time scale {})",
            cfg.served_model_name[0],
            cfg.role,
            cfg.data_parallel_size,
            cfg.time_scale
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
