//! `switchyard-bench vectors`: a gateway's vector stores over HTTP — documents uploaded
//! and ingested in file batches (chunks per second, MB per minute), searches at the
//! resulting size (latency p50/p99), and the latency a `file_search` round adds to a
//! response (the same request with and without the tool, on an engine that generates
//! at once).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::stats::{Summary, summarize};

#[derive(Clone, Debug, Serialize)]
pub struct VectorParams {
    pub model: String,
    /// Documents uploaded and ingested.
    pub docs: usize,
    /// Words per document (made-up words: about 2 cl100k tokens each).
    pub doc_tokens: usize,
    /// `max_chunk_size_tokens` (no overlap).
    pub chunk_tokens: usize,
    /// Searches, one after another.
    pub searches: usize,
    /// Responses with and without file_search (0: skip).
    pub responses: usize,
    pub seed: u64,
    #[serde(skip)]
    pub timeout: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct VectorReport {
    pub target: String,
    pub docs: usize,
    pub bytes: u64,
    pub chunks: u64,
    pub upload_secs: f64,
    pub ingest_secs: f64,
    pub chunks_per_sec: f64,
    pub mb_per_min: f64,
    pub failed_files: u64,
    /// Milliseconds per search.
    pub search_ms: Summary,
    /// Milliseconds per response without and with a file_search round.
    pub response_ms: Summary,
    pub file_search_response_ms: Summary,
}

const BOUNDARY: &str = "switchyard-bench-boundary";

/// Text with a natural-language word distribution: Zipf's law (exponent 1.07) over a
/// vocabulary of 30 000 made-up words. A small vocabulary would make every query word
/// match every chunk, which no real corpus does.
struct Words {
    vocab: Vec<String>,
    cumulative: Vec<f64>,
}

impl Words {
    fn new() -> Words {
        const SYLLABLES: [&str; 24] = [
            "ka", "lo", "mi", "ren", "sa", "tor", "vel", "qui", "dan", "ex", "phi", "gro", "nu",
            "bel", "cas", "dor", "fen", "hal", "jin", "mor", "pel", "ris", "tun", "wy",
        ];
        let vocab: Vec<String> = (0..30_000usize)
            .map(|i| {
                let (a, b, c) = (i % 24, (i / 24) % 24, (i / 576) % 24);
                let mut w = format!("{}{}", SYLLABLES[a], SYLLABLES[b]);
                if i >= 576 {
                    w.push_str(SYLLABLES[c]);
                }
                if i >= 13_824 {
                    w.push_str(SYLLABLES[(i / 13_824) % 24]);
                }
                w
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (0..vocab.len())
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(1.07);
                total
            })
            .collect();
        Words { vocab, cumulative }
    }

    fn text(&self, rng: &mut fastrand::Rng, n: usize) -> String {
        let total = *self.cumulative.last().unwrap_or(&1.0);
        let mut out = String::with_capacity(n * 8);
        for k in 0..n {
            let x = rng.f64() * total;
            let i = self
                .cumulative
                .partition_point(|c| *c < x)
                .min(self.vocab.len() - 1);
            if k > 0 {
                out.push(if k % 12 == 0 { '.' } else { ' ' });
                if k % 12 == 0 {
                    out.push(' ');
                }
            }
            out.push_str(&self.vocab[i]);
        }
        out
    }
}

fn form(name: &str, text: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(text.len() + 300);
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: text/plain\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

async fn json_ok(r: reqwest::Response) -> anyhow::Result<Value> {
    let status = r.status();
    let v: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {v}");
    Ok(v)
}

pub async fn run(
    http: &reqwest::Client,
    target: &str,
    p: &VectorParams,
) -> anyhow::Result<VectorReport> {
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let words = Words::new();
    let texts: Vec<String> = (0..p.docs)
        .map(|_| words.text(&mut rng, p.doc_tokens))
        .collect();
    let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();

    // Upload (not counted as ingestion).
    let t0 = Instant::now();
    let ids: Vec<String> = futures_util::stream::iter(texts.iter().enumerate())
        .map(|(i, text)| async move {
            let r = http
                .post(format!("{target}/v1/files"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(form(&format!("doc{i}.txt"), text))
                .timeout(p.timeout)
                .send()
                .await?;
            let v = json_ok(r).await?;
            Ok::<String, anyhow::Error>(v["id"].as_str().unwrap_or_default().to_string())
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let upload_secs = t0.elapsed().as_secs_f64();

    // Ingestion: file batches of up to 2000, polled until none is in progress.
    let store = json_ok(
        http.post(format!("{target}/v1/vector_stores"))
            .json(&json!({"name": "bench"}))
            .send()
            .await?,
    )
    .await?;
    let sid = store["id"].as_str().unwrap_or_default().to_string();
    let t1 = Instant::now();
    let mut batches = Vec::new();
    for group in ids.chunks(2000) {
        let b = json_ok(
            http.post(format!("{target}/v1/vector_stores/{sid}/file_batches"))
                .json(
                    &json!({"file_ids": group, "chunking_strategy": {"type": "static", "static": {
                    "max_chunk_size_tokens": p.chunk_tokens, "chunk_overlap_tokens": 0}}}),
                )
                .send()
                .await?,
        )
        .await?;
        batches.push(b["id"].as_str().unwrap_or_default().to_string());
    }
    let mut failed = 0;
    for b in &batches {
        loop {
            let v = json_ok(
                http.get(format!("{target}/v1/vector_stores/{sid}/file_batches/{b}"))
                    .send()
                    .await?,
            )
            .await?;
            if v["status"] != "in_progress" {
                failed += v["file_counts"]["failed"].as_u64().unwrap_or(0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ingest_secs = t1.elapsed().as_secs_f64();
    // Chunks, counted from every file's content.
    let chunks: u64 = futures_util::stream::iter(ids.iter())
        .map(|id| {
            let url = format!("{target}/v1/vector_stores/{sid}/files/{id}/content");
            async move {
                let v = json_ok(http.get(url).send().await?).await?;
                Ok::<u64, anyhow::Error>(v["data"].as_array().map_or(0, |d| d.len() as u64))
            }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum::<anyhow::Result<u64>>()?;

    // Searches of a few of the corpus's words.
    let mut search = Vec::with_capacity(p.searches);
    for _ in 0..p.searches {
        let q = words.text(&mut rng, 8);
        let t = Instant::now();
        json_ok(
            http.post(format!("{target}/v1/vector_stores/{sid}/search"))
                .json(&json!({"query": q, "max_num_results": 10}))
                .timeout(p.timeout)
                .send()
                .await?,
        )
        .await?;
        search.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // The same response with and without a file_search round, alternating.
    let (mut plain, mut searched) = (Vec::new(), Vec::new());
    for i in 0..p.responses * 2 {
        let q = words.text(&mut rng, 12);
        let mut body =
            json!({"model": p.model, "input": q, "store": false, "max_output_tokens": 512});
        let with = i % 2 == 1;
        if with {
            body["tools"] = json!([{"type": "file_search", "vector_store_ids": [sid]}]);
        }
        let t = Instant::now();
        let v = json_ok(
            http.post(format!("{target}/v1/responses"))
                .json(&body)
                .timeout(p.timeout)
                .send()
                .await?,
        )
        .await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if with {
            anyhow::ensure!(
                v["output"][0]["type"] == "file_search_call"
                    && v["output"][0]["status"] == "completed",
                "no search: {v}"
            );
            searched.push(ms);
        } else {
            plain.push(ms);
        }
    }
    Ok(VectorReport {
        target: target.to_string(),
        docs: p.docs,
        bytes,
        chunks,
        upload_secs,
        ingest_secs,
        chunks_per_sec: chunks as f64 / ingest_secs,
        mb_per_min: bytes as f64 / 1e6 / ingest_secs * 60.0,
        failed_files: failed,
        search_ms: summarize(&search),
        response_ms: summarize(&plain),
        file_search_response_ms: summarize(&searched),
    })
}

impl VectorReport {
    pub fn markdown_row(&self, label: &str) -> String {
        format!(
            "| {label} | {} | {:.1} MB | {} | {:.1} s | {:.0} | {:.1} | {:.1} ms | {:.1} ms | {} |",
            self.docs,
            self.bytes as f64 / 1e6,
            self.chunks,
            self.ingest_secs,
            self.chunks_per_sec,
            self.mb_per_min,
            self.search_ms.p50,
            self.search_ms.p99,
            if self.file_search_response_ms.count > 0 {
                format!(
                    "{:.1} → {:.1} ms (+{:.1})",
                    self.response_ms.p50,
                    self.file_search_response_ms.p50,
                    self.file_search_response_ms.p50 - self.response_ms.p50
                )
            } else {
                "—".into()
            }
        )
    }
}
