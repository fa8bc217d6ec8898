//! The engine loop: one tokio task per simulated engine that runs scheduler steps,
//! paces them against the simulated clock, and delivers each step's tokens when the
//! step's simulated time has passed.

use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::clock::SimClock;
use crate::kv_events::EventSink;
use crate::scheduler::{Scheduler, SchedulerStats, SeqSpec, StepOutcome};

enum Command {
    Submit(SeqSpec),
    ResetPrefixCache,
    Restart,
    Stats(oneshot::Sender<SchedulerStats>),
}

/// Talks to one running engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Command>,
    clock: SimClock,
}

impl EngineHandle {
    /// Starts an engine task around `scheduler`, publishing its KV-cache events to
    /// `events` when given.
    pub fn spawn(scheduler: Scheduler, clock: SimClock, events: Option<EventSink>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(scheduler, rx, clock, events));
        EngineHandle { tx, clock }
    }

    /// The engine's clock.
    pub fn clock(&self) -> SimClock {
        self.clock
    }

    /// Queues a request. Its events arrive on `spec.tx`; dropping the receiver aborts it.
    pub fn submit(&self, spec: SeqSpec) -> bool {
        self.tx.send(Command::Submit(spec)).is_ok()
    }

    /// Forgets every cached prefix.
    pub fn reset_prefix_cache(&self) {
        let _ = self.tx.send(Command::ResetPrefixCache);
    }

    /// Acts out a restart of the engine process: the cache is emptied without an
    /// event and the event sequence starts again from 0.
    pub fn restart(&self) {
        let _ = self.tx.send(Command::Restart);
    }

    /// A snapshot of the scheduler.
    pub async fn stats(&self) -> SchedulerStats {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Stats(tx)).is_err() {
            return SchedulerStats::default();
        }
        rx.await.unwrap_or_default()
    }
}

async fn run(
    mut sched: Scheduler,
    mut rx: mpsc::UnboundedReceiver<Command>,
    clock: SimClock,
    events: Option<EventSink>,
) {
    let publish = |sched: &mut Scheduler| {
        if let Some(sink) = &events {
            let batch = sched.take_kv_events();
            if !batch.is_empty() {
                sink.publish(batch);
            }
        }
    };
    // Simulated time at which the next step starts. While busy, steps follow each other
    // back to back in simulated time and real time only paces them; when idle, the
    // engine catches up with the clock.
    let mut now = clock.now();
    loop {
        if sched.is_idle() {
            let Some(cmd) = rx.recv().await else { return };
            now = now.max(received_at(&cmd, &clock));
            apply(&mut sched, cmd, now, events.as_ref()).await;
        }
        while let Ok(cmd) = rx.try_recv() {
            apply(&mut sched, cmd, now, events.as_ref()).await;
        }
        match sched.step(now) {
            StepOutcome::Ran { secs } => {
                now += secs;
                sleep_until(clock.instant_at(now).into()).await;
                for (tx, event) in sched.take_events() {
                    let _ = tx.send(event);
                }
                publish(&mut sched);
            }
            StepOutcome::Idle { wake_at } => {
                publish(&mut sched);
                let wake = wake_at.unwrap_or(f64::INFINITY);
                let deadline = clock.instant_at(wake.min(now + 3600.0));
                tokio::select! {
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else { return };
                        now = now.max(received_at(&cmd, &clock)).min(wake);
                        apply(&mut sched, cmd, now, events.as_ref()).await;
                    }
                    _ = sleep_until(deadline.into()) => {
                        now = now.max(wake.min(clock.now()));
                    }
                }
            }
        }
    }
}

/// When an idle engine starts on `cmd`: a request at its arrival (the engine would have
/// started it at once; the task's wake-up delay is the host's, not the engine's), so
/// that a lone request's timing is the cost model's and not the host's load.
fn received_at(cmd: &Command, clock: &SimClock) -> f64 {
    match cmd {
        Command::Submit(spec) => spec.arrival,
        _ => clock.now(),
    }
}

async fn apply(sched: &mut Scheduler, cmd: Command, now: f64, events: Option<&EventSink>) {
    match cmd {
        Command::Submit(mut spec) => {
            // A request cannot arrive after the step that will first see it starts.
            spec.arrival = spec.arrival.min(now);
            sched.add(spec);
        }
        Command::ResetPrefixCache => sched.reset_prefix_cache(),
        Command::Restart => {
            sched.restart();
            if let Some(sink) = events {
                sink.restart().await;
            }
        }
        Command::Stats(tx) => {
            let _ = tx.send(sched.stats());
        }
    }
}
