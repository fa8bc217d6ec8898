//! Logging setup: `tracing` to stdout (text or JSON lines) and optionally a file.
//! Access lines use the target `switchyard::access`. Prompts and Authorization headers
//! are never logged.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

use crate::config::Config;

/// Installs the global subscriber.
pub fn init(cfg: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cfg.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", cfg.log_level))?;
    let writer = match &cfg.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("--log-dir {}: {e}", dir.display()))?;
            let path = dir.join("switchyard.log");
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| anyhow::anyhow!("--log-dir {}: {e}", path.display()))?;
            BoxMakeWriter::new(std::io::stdout.and(Mutex::new(file)))
        }
        None => BoxMakeWriter::new(std::io::stdout),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let res = if cfg.log_json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(cfg.log_dir.is_none()).try_init()
    };
    res.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}
