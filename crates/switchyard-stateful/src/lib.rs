//! Switchyard's stateful layer (docs/responses.md): the storage of the Responses and
//! Conversations APIs, in SQLite (embedded default) or PostgreSQL (several replicas).

pub mod responses;
pub mod store;
pub mod testing;
