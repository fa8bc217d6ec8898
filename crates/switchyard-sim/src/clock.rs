//! Simulated time. Simulated seconds run `time_scale` times faster than real ones; every
//! latency the simulator reports (metrics, `sim_timing`) is in simulated seconds.

use std::time::{Duration, Instant};

/// Maps between real instants and simulated seconds since the clock started.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    epoch: Instant,
    scale: f64,
}

impl SimClock {
    /// A clock starting now, running `scale` times faster than real time.
    pub fn new(scale: f64) -> Self {
        SimClock {
            epoch: Instant::now(),
            scale,
        }
    }

    /// Simulated seconds elapsed since the clock started.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * self.scale
    }

    /// The real instant at which simulated time reaches `t`.
    pub fn instant_at(&self, t: f64) -> Instant {
        self.epoch + Duration::from_secs_f64((t / self.scale).max(0.0))
    }

    /// How many times faster than real time the clock runs.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}
