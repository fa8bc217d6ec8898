//! File search (docs/files-and-vector-stores.md): a document's text ([`parse`]) and its
//! chunks ([`chunk`]); vector stores ([`stores`]) filled by ingestion ([`ingest`]) with
//! embeddings ([`embed`]), searched by meaning and by words ([`search`], [`filter`]).

pub mod chunk;
pub mod embed;
pub mod filter;
pub mod ingest;
pub mod parse;
pub mod search;
pub mod stores;

pub use search::{Hit, Mode, SearchOptions};
pub use stores::{IngestConfig, VectorStores};
