//! File search's building blocks (docs/files-and-vector-stores.md): a document's text
//! ([`parse`]) and its chunks ([`chunk`]).

pub mod chunk;
pub mod parse;
