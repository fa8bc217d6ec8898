//! Prompt prefixes: how prompts are cut into chained block hashes ([`hash`]), and the
//! shared index of which worker was sent which blocks ([`index`]). Each model has one
//! index per role, handed to its policy through the `PolicyContext`; the pipeline
//! records every routed prompt in it, whatever the policy.

pub mod hash;
pub mod index;

pub use hash::{BlockHasher, hash_block};
pub use index::PrefixIndex;
