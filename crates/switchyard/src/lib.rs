//! Switchyard: an LLM inference gateway. A request flows one way:
//!
//! listener → [`server`] middleware (request id, auth, admission) → handler parses a
//! [`request::RequestView`] → [`routing`] policy picks a [`fleet`] worker →
//! [`dispatch`] sends it (retries, re-selection) and streams the answer back.

pub mod config;
pub mod dispatch;
pub mod error;
pub mod fleet;
pub mod logging;
pub mod metrics;
pub mod request;
pub mod routing;
pub mod server;

pub use config::{Config, ModelSettings, PolicyKind};
pub use server::Gateway;
