//! The in-process embedding backend: a sentence-transformers BERT model (e.g.
//! all-MiniLM-L6-v2) run with candle on the CPU, loaded from a local directory holding
//! `config.json`, `tokenizer.json` and `model.safetensors`. Nothing is downloaded.
//!
//! Why candle and a small BERT rather than a model2vec static model: the classifier
//! needs sentence meaning, not word overlap, and MiniLM is the standard small model for
//! that (a static model averages word vectors and loses word order and context); candle
//! is pure Rust (no C++ toolchain, no ONNX runtime binary to fetch), and it runs the
//! same safetensors files sentence-transformers uses. A prompt costs one forward pass of
//! six layers: 39 ms p50 on the benchmark prompts on 2 CPU cores (docs/BENCHMARKS.md).
//!
//! Embeddings are mean-pooled over the attention mask and L2-normalised, as
//! sentence-transformers does for this model; inputs are cut at 256 tokens.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Encoding, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Longest input, in tokens (the model's `max_seq_length`).
const MAX_TOKENS: usize = 256;

pub struct LocalModel {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn batch(
    encs: &[Encoding],
    field: fn(&Encoding) -> &[u32],
    dev: &Device,
) -> Result<Tensor, String> {
    let len = encs.first().map_or(0, |e| field(e).len());
    let flat: Vec<u32> = encs.iter().flat_map(|e| field(e).iter().copied()).collect();
    Tensor::from_vec(flat, (encs.len(), len), dev).map_err(|e| err("tensor", e))
}

impl LocalModel {
    pub fn load(dir: &Path) -> Result<LocalModel, String> {
        let device = Device::Cpu;
        let config: Config = serde_json::from_slice(
            &std::fs::read(dir.join("config.json")).map_err(|e| err("config.json", e))?,
        )
        .map_err(|e| err("config.json", e))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err("tokenizer.json", e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| err("tokenizer.json", e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        let weights = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| err("model.safetensors", e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| err("model.safetensors", e))?;
        let model = BertModel::load(vb, &config).map_err(|e| err("model.safetensors", e))?;
        Ok(LocalModel {
            model,
            tokenizer,
            device,
        })
    }

    /// Unit vectors for `texts`, in order (blocking: run it off the event loop).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encs = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| err("tokenize", e))?;
        let ids = batch(&encs, Encoding::get_ids, &self.device)?;
        let types = batch(&encs, Encoding::get_type_ids, &self.device)?;
        let mask = batch(&encs, Encoding::get_attention_mask, &self.device)?;
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&m)?.sum(1)?;
            let counts = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        run().map_err(|e| err("forward", e))
    }
}

/// Vector stores' embeddings computed in this process (`--local-embedding-model`).
pub struct LocalEmbedder {
    model: std::sync::Arc<LocalModel>,
    name: String,
}

impl LocalEmbedder {
    /// Loads the model in `dir`; its name is `local:<directory name>`.
    pub fn load(dir: &Path) -> Result<LocalEmbedder, String> {
        let name = dir
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        Ok(LocalEmbedder {
            model: std::sync::Arc::new(LocalModel::load(dir)?),
            name: format!("local:{name}"),
        })
    }
}

impl switchyard_stateful::vector::embed::Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        &self.name
    }

    fn embed(
        &self,
        texts: Vec<String>,
    ) -> futures_util::future::BoxFuture<
        'static,
        Result<Vec<Vec<f32>>, switchyard_stateful::responses::service::EngineError>,
    > {
        let model = self.model.clone();
        Box::pin(async move {
            let failed = |message: String| switchyard_stateful::responses::service::EngineError {
                status: 500,
                code: "embedding_failed".into(),
                message,
            };
            tokio::task::spawn_blocking(move || model.embed(&texts))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(failed)
        })
    }
}
