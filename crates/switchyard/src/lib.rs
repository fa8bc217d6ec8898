//! Switchyard: an LLM inference gateway. The design, layer by layer, is in
//! `docs/architecture.md` in the repository. Modules in the order a request meets them:
//!
//! 1. [`server`] — listeners and routes; handlers hand generation requests to the pipeline.
//! 2. [`pipeline`] — the phases `admit → select_model → select_worker → send → settle`,
//!    the only place that sequences a request; enterable in-process ([`pipeline::Pipeline::run`]).
//! 3. [`selection`] — `select_model`: the model a request is served by (name, alias,
//!    intent, `/route` use case).
//! 4. [`routing`] — `select_worker`: per-model policies over the model's candidates.
//! 5. [`dispatch`] — `send`: one attempt, colocated or prefill/decode; retry rules.
//! 6. [`fleet`] — workers, the registry grouped by model, breakers, probes, enrolment,
//!    Kubernetes discovery.
//! 7. The base every layer may use: [`config`], [`request`] (parsing and body rewrites),
//!    [`state`] (sessions and counters, in memory or Redis), [`upstream`] (the HTTP
//!    client), [`metrics`], [`error`], [`shutdown`], [`logging`], [`telemetry`] (OpenTelemetry
//!    tracing), [`tenancy`] (callers,
//!    keys, tenants, limits and usage), [`tools`] (what server-side tools reach outside).
//!
//! A module imports only from layers below it (`tests/layering.rs` checks).

pub mod server;

pub mod pipeline;

pub mod dispatch;
pub mod routing;
pub mod selection;
pub mod workflows;

pub mod fleet;

pub mod config;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod request;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tenancy;
pub mod tools;
pub mod upstream;

pub use config::{Config, ModelSettings, PolicyKind};
pub use server::Gateway;
