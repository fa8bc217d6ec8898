//! The Responses API (docs/responses.md; in progress): input items and their
//! translation into engine chat requests.

pub mod conversations;
pub mod file_search;
pub mod input;
pub mod mcp;
pub mod output;
pub mod request;
pub mod service;
pub mod stream;
pub mod tools;
pub mod web_search;
