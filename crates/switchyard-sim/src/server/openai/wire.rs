//! The request bodies the simulator reads, and how they are parsed: every other field
//! is accepted and ignored, as vLLM does.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::super::ApiError;

/// Header that picks the data-parallel rank, as vLLM reads it.
pub const DP_RANK_HEADER: &str = "x-data-parallel-rank";

#[derive(Deserialize)]
pub(super) struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// vLLM's `kv_transfer_params` (NixlConnector).
#[derive(Deserialize)]
pub(super) struct KvTransferParams {
    #[serde(default)]
    pub do_remote_decode: Option<bool>,
    #[serde(default)]
    pub do_remote_prefill: Option<bool>,
    pub remote_block_ids: Option<Vec<u64>>,
    pub remote_engine_id: Option<String>,
}

/// Fields of chat and completion requests the simulator reads; others are accepted and ignored.
#[derive(Deserialize)]
pub(super) struct GenRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<Map<String, Value>>>,
    pub prompt: Option<Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub min_tokens: Option<u32>,
    pub ignore_eos: Option<bool>,
    pub temperature: Option<f64>,
    pub n: Option<u32>,
    pub seed: Option<i64>,
    pub kv_transfer_params: Option<KvTransferParams>,
    pub bootstrap_host: Option<String>,
    pub bootstrap_port: Option<u16>,
    pub bootstrap_room: Option<u64>,
    pub data_parallel_rank: Option<usize>,
    /// vLLM's scheduling priority (lower is sooner under `--scheduling-policy priority`):
    /// a JSON integer, 0 when absent; anything else, `null` included, is a 400.
    #[serde(default)]
    pub priority: i64,
    pub response_format: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_json: Option<Value>,
    pub structured_outputs: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<usize>,
    /// As in [`GenRequest::priority`]: each input is queued at this priority.
    #[serde(default)]
    pub priority: i64,
}

/// Fields of `/v1/audio/speech` requests.
#[derive(Deserialize)]
pub(super) struct SpeechRequest {
    pub model: Option<String>,
    pub input: Option<String>,
    pub voice: Option<String>,
    pub response_format: Option<String>,
    pub speed: Option<f64>,
}

/// Parses a JSON object body into `T`, naming the offending field on error.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}"), None))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object",
            None,
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(
            format!("Invalid value for `{path}`: {}", e.inner()),
            Some(&path),
        )
    })
}
