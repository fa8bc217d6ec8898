//! The fleet: workers (engine endpoints) and their live state, the registry that
//! groups them by model, and what keeps that state true in the background — probes
//! (health, engine load), enrolment (worker API and discovery), and Kubernetes
//! discovery.

pub mod breaker;
pub mod enrol;
pub mod kubernetes;
pub mod probe;
pub mod registry;
pub mod worker;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit};
pub use enrol::{EnrolError, Enroller, HostGuard, Registration};
pub use probe::{ProbeConfig, ProbeError, Prober};
pub use registry::{Registry, RegistryObserver, Snapshot};
pub use worker::{InFlight, Lease, Verdict, Worker, WorkerId, WorkerRole, WorkerSettings};

#[cfg(test)]
pub(crate) use worker::test_worker;
