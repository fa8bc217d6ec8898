//! Fault injection: set from flags at start, or at runtime with `POST /sim/faults`.
//! Latencies here are real milliseconds (they exist to exercise the gateway's real
//! timeouts), unlike the engine's simulated seconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The faults a server is injecting right now.
#[derive(Clone, Debug, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction of generation requests (0..=1) answered with `error_status` instead.
    #[arg(long = "fault-error-rate", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Status of injected errors: 500, 503, or 429 (429 and 503 carry Retry-After).
    #[arg(long = "fault-error-status", default_value_t = 500)]
    pub error_status: u16,
    /// Retry-After seconds sent with injected 429/503 errors.
    #[arg(long = "fault-retry-after-secs", default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Real milliseconds added before a generation request is processed.
    #[arg(long = "fault-latency-ms", default_value_t = 0)]
    pub latency_ms: u64,
    /// Generation requests whose body contains this text are always answered with
    /// `error_status` (a "poison" request that fails on every engine).
    #[arg(long = "fault-error-match")]
    pub error_match: Option<String>,
    /// Fraction of generation requests accepted and then never answered.
    #[arg(long = "fault-hang-rate", default_value_t = 0.0)]
    pub hang_rate: f64,
    /// Close the connection after this many body chunks of a response (0: right after
    /// the headers). For SSE streams a chunk is one event.
    #[arg(long = "fault-crash-after-chunks")]
    pub crash_after_chunks: Option<u64>,
    /// Hold every response after this many body chunks until the faults change (0: right
    /// after the headers). For SSE streams a chunk is one event. Lets a test keep a
    /// stream open for as long as it needs, then release it.
    #[arg(long = "fault-stall-after-chunks")]
    pub stall_after_chunks: Option<u64>,
    /// Stop accepting connections (the listening socket is closed; connections already
    /// open keep working).
    #[arg(long = "fault-refuse-connections")]
    pub refuse_connections: bool,
    /// `GET /health` answers 503.
    #[arg(long = "fault-health-fail")]
    pub health_fail: bool,
    /// Real milliseconds added to `GET /health`.
    #[arg(long = "fault-health-latency-ms", default_value_t = 0)]
    pub health_latency_ms: u64,
    /// Clear every fault after this many real seconds (runtime API only).
    #[arg(skip)]
    pub clear_after_secs: Option<f64>,
}

impl Default for Faults {
    /// No faults.
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: default_status(),
            retry_after_secs: default_retry_after(),
            error_match: None,
            latency_ms: 0,
            hang_rate: 0.0,
            crash_after_chunks: None,
            stall_after_chunks: None,
            refuse_connections: false,
            health_fail: false,
            health_latency_ms: 0,
            clear_after_secs: None,
        }
    }
}

fn default_status() -> u16 {
    500
}
fn default_retry_after() -> u64 {
    1
}

impl Faults {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("hang_rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if !matches!(self.error_status, 429 | 500 | 503) {
            return Err("error_status must be 429, 500 or 503".into());
        }
        if self.error_match.as_deref() == Some("") {
            return Err("error_match must not be empty".into());
        }
        if let Some(s) = self.clear_after_secs
            && !(s.is_finite() && s > 0.0)
        {
            return Err("clear_after_secs must be a positive number".into());
        }
        Ok(())
    }
}

/// Shared, observable fault state of one server.
#[derive(Clone)]
pub struct FaultState {
    tx: watch::Sender<Faults>,
}

impl FaultState {
    pub fn new(initial: Faults) -> Self {
        FaultState {
            tx: watch::Sender::new(initial),
        }
    }

    /// The faults in force.
    pub fn get(&self) -> Faults {
        self.tx.borrow().clone()
    }

    /// Replaces the faults; a `clear_after_secs` schedules their removal.
    pub fn set(&self, faults: Faults) {
        let clear_after = faults.clear_after_secs;
        self.tx.send_replace(faults.clone());
        if let Some(secs) = clear_after {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                tx.send_if_modified(|cur| {
                    let still_ours = *cur == faults;
                    if still_ours {
                        *cur = Faults::default();
                    }
                    still_ours
                });
            });
        }
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<Faults> {
        self.tx.subscribe()
    }
}
