//! Switchyard's stateful layer (docs/responses.md): the storage of the Responses and
//! Conversations APIs, in SQLite (embedded default) or PostgreSQL (several replicas).

pub mod files;
pub mod responses;
pub mod store;
pub mod testing;
pub mod vector;

/// What the stateful layer reports as it works; the gateway turns it into metrics.
pub trait Observe: Send + Sync + 'static {
    /// A storage operation (`read` or `write`) took `seconds`; `ok` unless it failed.
    fn store_op(&self, op: &'static str, seconds: f64, ok: bool);
    /// A response ended with `status` (`completed`, `incomplete`, `failed`, `cancelled`).
    fn response_done(&self, status: &'static str, background: bool);
    /// A response ended asking the client for `calls` function calls (one tool round).
    fn tool_round(&self, calls: usize);
    /// A vector store search (one or more queries over one or more stores) took
    /// `seconds`; `ok` unless it failed.
    fn vector_search(&self, seconds: f64, ok: bool);
    /// A file's ingestion into a vector store ended with `status` (`completed`,
    /// `failed`) after `seconds`, storing `chunks`.
    fn file_ingested(&self, status: &'static str, chunks: u64, seconds: f64);
}

/// Reports nothing.
pub struct Unobserved;

impl Observe for Unobserved {
    fn store_op(&self, _: &'static str, _: f64, _: bool) {}
    fn response_done(&self, _: &'static str, _: bool) {}
    fn tool_round(&self, _: usize) {}
    fn vector_search(&self, _: f64, _: bool) {}
    fn file_ingested(&self, _: &'static str, _: u64, _: f64) {}
}
