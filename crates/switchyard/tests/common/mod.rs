//! What several test binaries share.

pub mod mcp;
pub mod search;
