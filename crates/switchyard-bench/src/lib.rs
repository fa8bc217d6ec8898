//! `switchyard-bench`: realistic workloads against any OpenAI-compatible URL, and
//! side-by-side comparisons of targets measured in one run.
//!
//! - [`workload`]: seeded generators (shared-prefix, multi-turn, agentic, random,
//!   prefix-repetition) and trace replay.
//! - [`runner`]: open/closed-loop execution with client-side TTFT, ITL and latency.
//! - [`engines`]: the engines' own prefix-cache counters, cache resets, process usage.
//! - [`oracle`]: the best hit rate any router could reach on what was sent.
//! - [`report`]: rotation over targets and repetitions, JSON and Markdown.
//! - [`plots`]: SVG plots beside the Markdown: TTFT CDF, throughput over time, hit rate.
//! - [`classify`]: accuracy and latency of a gateway's intent classifier on labelled
//!   prompts (`switchyard-bench classify`).
//! - [`sessions`]: conversations through `POST /route`: bypass rate, topic changes
//!   caught and missed, routing time (`--workload sessions`).
//! - [`chain`]: long conversations through the Responses API (`previous_response_id`)
//!   or as chat completions resending their history (`switchyard-bench chain`).
//! - [`vectors`]: vector store ingestion, search and file_search latency over HTTP
//!   (`switchyard-bench vectors`).

pub mod chain;
pub mod classify;
pub mod engines;
pub mod oracle;
pub mod plots;
pub mod report;
pub mod runner;
pub mod sessions;
pub mod stats;
pub mod vectors;
pub mod workload;
