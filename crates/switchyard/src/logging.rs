//! Logging setup: `tracing` to stdout (text or JSON lines) and optionally a file,
//! written by a background thread so the data plane never blocks on a log write (under
//! extreme load, lines beyond a 128k-line buffer are dropped rather than stalling
//! requests). Access lines use the target `switchyard::access`. Prompts, routing keys
//! and Authorization headers are never logged.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Stdout, plus a file when `--log-dir` is set. Buffered: the logging thread flushes
/// whenever it has drained its queue, so a burst of lines costs one write.
struct Sink {
    out: BufWriter<std::io::Stdout>,
    file: Option<BufWriter<File>>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write_all(buf)?;
        if let Some(f) = &mut self.file {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if let Some(f) = &mut self.file {
            f.flush()?;
        }
        Ok(())
    }
}

/// Installs the global subscriber. Keep the returned guard alive: dropping it flushes
/// the log buffer.
pub fn init(cfg: &Config) -> anyhow::Result<WorkerGuard> {
    let filter = EnvFilter::try_new(&cfg.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", cfg.log_level))?;
    let file = match &cfg.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("--log-dir {}: {e}", dir.display()))?;
            let path = dir.join("switchyard.log");
            Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| anyhow::anyhow!("--log-dir {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let ansi = file.is_none() && std::io::stdout().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(128 * 1024)
        .thread_name("switchyard-log")
        .finish(Sink {
            out: BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            file: file.map(|f| BufWriter::with_capacity(64 * 1024, f)),
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let res = if cfg.log_json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_ansi(ansi).try_init()
    };
    res.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(guard)
}
