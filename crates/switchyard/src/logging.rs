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

/// What must outlive the gateway: the log writer, and the trace exporter when tracing
/// is on. Dropping it flushes both (traces first: an export failure is still logged).
pub struct LogGuard {
    telemetry: Option<crate::telemetry::Telemetry>,
    _writer: WorkerGuard,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(t) = self.telemetry.take() {
            t.shutdown();
        }
    }
}

/// The log's filter: `--log-level`, with the trace spans' target off. They are for the
/// exporter, never for the log; with no exporter their call sites are disabled
/// outright (zero cost: every span is `Span::none()`).
fn log_filter(cfg: &Config) -> anyhow::Result<EnvFilter> {
    let filter = EnvFilter::try_new(&cfg.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", cfg.log_level))?;
    Ok(filter.add_directive(format!("{}=off", crate::telemetry::TARGET).parse()?))
}

/// Installs the global subscriber, with the OpenTelemetry layer when
/// `--otlp-traces-endpoint` is set (docs/tracing.md). Keep the returned guard alive
/// until the gateway has stopped: dropping it flushes the logs and the traces.
pub fn init(cfg: &Config) -> anyhow::Result<LogGuard> {
    let filter = log_filter(cfg)?;
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
    let Some(endpoint) = &cfg.otlp_traces_endpoint else {
        // Tracing off: the plain subscriber with one global filter, as before tracing
        // existed.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer);
        let res = if cfg.log_json {
            builder.json().flatten_event(true).try_init()
        } else {
            builder.with_ansi(ansi).try_init()
        };
        res.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
        return Ok(LogGuard {
            telemetry: None,
            _writer: guard,
        });
    };
    // Tracing on: the log keeps its filter; the exporter takes the trace target only.
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = if cfg.log_json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.with_ansi(ansi).boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    let (otel, telemetry) = crate::telemetry::install(endpoint)?;
    let only_spans = tracing_subscriber::filter::Targets::new()
        .with_target(crate::telemetry::TARGET, tracing::Level::INFO);
    registry
        .with(otel.with_filter(only_spans))
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    Ok(LogGuard {
        telemetry: Some(telemetry),
        _writer: guard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tracing off: the log's filter, even at `trace` for everything, disables the trace
    /// spans' call sites, so the data plane's spans are empty and add no header.
    #[test]
    fn without_an_exporter_trace_spans_are_disabled() {
        for level in ["info", "trace", "switchyard=trace"] {
            let cfg = Config {
                log_level: level.into(),
                ..Config::default()
            };
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(log_filter(&cfg).unwrap())
                .with_writer(std::io::sink)
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!(target: crate::telemetry::TARGET, "attempt");
                assert!(span.is_disabled(), "--log-level {level}");
                let mut headers = http::HeaderMap::new();
                crate::telemetry::inject(&span, &mut headers);
                assert!(headers.is_empty());
                // The filter itself lets the gateway's own spans through.
                let other = tracing::info_span!(target: "switchyard::pipeline", "other");
                assert!(!other.is_disabled(), "--log-level {level}");
            });
        }
    }
}
