//! Ingestion (docs/files-and-vector-stores.md, "Ingestion"): a durable job queue in the
//! database. A file added to a store is a row `in_progress`; a worker claims it with a
//! lease, parses the file, chunks it, embeds the chunks in batches, and stores them with
//! the file's new status in one transaction. A job whose lease ran out (its replica
//! died) is claimed again; at start an embedded SQLite database releases every lease
//! (it belongs to one process), so a restart resumes a batch where it stopped.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;

use super::chunk::{Chunk, Chunking};
use super::embed::{to_blob, to_text};
use super::stores::VectorStores;
use crate::files::SUPPORTED;
use crate::responses::service::ServiceError;
use crate::store::{Backend, Write};

/// Rows per chunk insert statement.
const ROWS_PER_INSERT: usize = 100;

/// A claimed job.
struct Job {
    store_id: String,
    file_id: String,
    owner: String,
    chunking: Chunking,
    dims: Option<i64>,
    model: Option<String>,
}

/// Why a job did not complete.
enum Stop {
    /// The file failed: `last_error` `code` and message.
    Failed(&'static str, String),
    /// Try again later (a store or blob outage), after this many seconds.
    Later(i64),
    /// The job was cancelled or removed meanwhile.
    Gone,
}

impl From<crate::store::StoreError> for Stop {
    fn from(e: crate::store::StoreError) -> Stop {
        ServiceError::from(e).into()
    }
}

impl From<ServiceError> for Stop {
    fn from(e: ServiceError) -> Stop {
        tracing::warn!(error = %e.message, "vector store ingestion: will retry");
        Stop::Later(5)
    }
}

impl VectorStores {
    /// Releases the leases an embedded SQLite database holds (its jobs belong to this
    /// process: whatever held them is gone); PostgreSQL's leases run out by themselves.
    pub async fn resume_jobs(&self) -> Result<u64, ServiceError> {
        if self.backend() != Backend::Sqlite {
            return Ok(0);
        }
        let n = self
            .store
            .write(Write::one(
                "UPDATE vector_store_files SET lease_until = NULL WHERE status = 'in_progress'",
                vec![],
            ))
            .await?;
        Ok(n[0])
    }

    /// Ingestion workers to run (`cfg.workers` of them), each a loop that never ends:
    /// the caller stops them by dropping them (a job cut off is resumed, as after a
    /// crash).
    pub fn workers(&self) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        (0..self.cfg.workers.max(1))
            .map(|_| {
                let me = self.clone();
                async move {
                    loop {
                        if let Ok(true) = me.ingest_next().await {
                            continue;
                        }
                        tokio::select! {
                            _ = me.wake.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            })
            .collect()
    }

    /// Claims and runs one job; whether there was one.
    pub async fn ingest_next(&self) -> Result<bool, ServiceError> {
        let now = (self.now)();
        let rows = self
            .store
            .fetch_all(
                "SELECT f.store_id, f.file_id, f.chunking, f.attempts, s.owner, s.dims, \
                 s.embedding_model FROM vector_store_files f \
                 JOIN vector_stores s ON s.id = f.store_id \
                 WHERE f.status = 'in_progress' AND (f.lease_until IS NULL OR f.lease_until < $1) \
                 ORDER BY f.created_us LIMIT 16",
                &[now.into()],
            )
            .await?;
        for r in rows {
            let (store_id, file_id): (String, String) = (r.get("store_id"), r.get("file_id"));
            let claimed = self
                .store
                .write(Write::one(
                    "UPDATE vector_store_files SET lease_until = $1, attempts = attempts + 1 \
                     WHERE store_id = $2 AND file_id = $3 AND status = 'in_progress' \
                     AND (lease_until IS NULL OR lease_until < $4)",
                    vec![
                        (now + self.cfg.lease_secs).into(),
                        store_id.as_str().into(),
                        file_id.as_str().into(),
                        now.into(),
                    ],
                ))
                .await?;
            if claimed[0] != 1 {
                continue;
            }
            let chunking = serde_json::from_str::<Value>(&r.get::<String, _>("chunking"))
                .ok()
                .and_then(|v| Chunking::parse(Some(&v), "").ok())
                .unwrap_or_default();
            let job = Job {
                store_id,
                file_id,
                owner: r.get("owner"),
                chunking,
                dims: r.get("dims"),
                model: r.get("embedding_model"),
            };
            let started = std::time::Instant::now();
            let stop = if r.get::<i64, _>("attempts") >= self.cfg.max_starts {
                Err(Stop::Failed(
                    "server_error",
                    format!(
                        "ingestion was started {} times and never finished",
                        self.cfg.max_starts
                    ),
                ))
            } else {
                self.run(&job).await
            };
            let seconds = started.elapsed().as_secs_f64();
            let observer = self.store.observer();
            match stop {
                Ok(chunks) => {
                    if let Some(o) = observer {
                        o.file_ingested("completed", chunks, seconds);
                    }
                }
                Err(Stop::Gone) => {}
                Err(Stop::Failed(code, message)) => {
                    if let Some(o) = observer {
                        o.file_ingested("failed", 0, seconds);
                    }
                    tracing::info!(store = %job.store_id, file = %job.file_id, code, %message, "vector store file failed");
                    self.store
                        .write(Write::one(
                            "UPDATE vector_store_files SET status = 'failed', last_error = $1, \
                             lease_until = NULL WHERE store_id = $2 AND file_id = $3 \
                             AND status = 'in_progress'",
                            vec![
                                json!({"code": code, "message": message}).to_string().into(),
                                job.store_id.as_str().into(),
                                job.file_id.as_str().into(),
                            ],
                        ))
                        .await?;
                }
                Err(Stop::Later(secs)) => {
                    self.store
                        .write(Write::one(
                            "UPDATE vector_store_files SET lease_until = $1 \
                             WHERE store_id = $2 AND file_id = $3 AND status = 'in_progress'",
                            vec![
                                ((self.now)() + secs).into(),
                                job.store_id.as_str().into(),
                                job.file_id.as_str().into(),
                            ],
                        ))
                        .await?;
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Runs every job there is (tests, and a gateway without workers).
    pub async fn ingest_all(&self) -> Result<usize, ServiceError> {
        let mut n = 0;
        while self.ingest_next().await? {
            n += 1;
        }
        Ok(n)
    }

    /// Extends a job's lease; `Gone` when it is no longer in progress (cancelled,
    /// deleted, or its file removed).
    async fn renew(&self, job: &Job) -> Result<(), Stop> {
        let n = self
            .store
            .write(Write::one(
                "UPDATE vector_store_files SET lease_until = $1 WHERE store_id = $2 \
                 AND file_id = $3 AND status = 'in_progress'",
                vec![
                    ((self.now)() + self.cfg.lease_secs).into(),
                    job.store_id.as_str().into(),
                    job.file_id.as_str().into(),
                ],
            ))
            .await?;
        if n[0] == 1 { Ok(()) } else { Err(Stop::Gone) }
    }

    /// Ingests the job's file: the chunks stored.
    async fn run(&self, job: &Job) -> Result<u64, Stop> {
        let file = match self.files.get(&job.file_id, &job.owner).await {
            Ok(f) => f,
            Err(e) if e.status == 404 => {
                return Err(Stop::Failed(
                    "invalid_file",
                    "the file no longer exists".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let filename = file["filename"].as_str().unwrap_or_default().to_string();
        let ext = crate::files::extension_of(&filename);
        if !SUPPORTED.contains(&ext.as_str()) {
            return Err(Stop::Failed(
                "unsupported_file",
                format!(
                    "Files of type '{ext}' are not supported for file search; supported: {}",
                    SUPPORTED.join(", ")
                ),
            ));
        }
        let Some(embedder) = self.embedder.clone() else {
            return Err(Stop::Failed(
                "server_error",
                "no embedding model is configured (--embedding-model)".into(),
            ));
        };
        if let Some(m) = job.model.as_deref().filter(|m| *m != embedder.model()) {
            return Err(Stop::Failed(
                "server_error",
                format!(
                    "the vector store's chunks are embedded with '{m}'; this gateway embeds with '{}'",
                    embedder.model()
                ),
            ));
        }
        let text = match self
            .files
            .text(&job.file_id, &job.owner, u64::MAX, "file_id")
            .await
        {
            Ok((_, t)) => t,
            Err(e) if e.status < 500 => return Err(Stop::Failed("invalid_file", e.message)),
            Err(e) => return Err(e.into()),
        };
        let chunking = job.chunking;
        let chunks: Vec<Chunk> = tokio::task::spawn_blocking(move || chunking.chunk(&text))
            .await
            .map_err(|_| Stop::Failed("server_error", "chunking failed".into()))?;
        if chunks.is_empty() {
            return Err(Stop::Failed(
                "invalid_file",
                "no text found in the file".into(),
            ));
        }
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(chunks.len());
        let mut renewed = (self.now)();
        for batch in chunks.chunks(self.cfg.embed_batch.max(1)) {
            if (self.now)() - renewed >= self.cfg.lease_secs / 3 {
                self.renew(job).await?;
                renewed = (self.now)();
            }
            let texts: Vec<String> = batch.iter().map(|c| c.text.clone()).collect();
            vectors.extend(self.embed_with_retries(embedder.as_ref(), texts).await?);
        }
        let dims = vectors[0].len() as i64;
        if job.dims.is_some_and(|d| d != dims) {
            return Err(Stop::Failed(
                "server_error",
                format!(
                    "the embedding model now answers {dims} dimensions; the store holds {}",
                    job.dims.unwrap_or_default()
                ),
            ));
        }
        self.ensure_index(dims).await;
        let usage: i64 = chunks.iter().map(|c| c.text.len() as i64 + 4 * dims).sum();
        let (sid, fid) = (job.store_id.as_str(), job.file_id.as_str());
        let mut w = Write::one(
            "UPDATE vector_stores SET dims = $1, embedding_model = $2 \
             WHERE id = $3 AND dims IS NULL",
            vec![dims.into(), embedder.model().into(), sid.into()],
        )
        .then(
            "DELETE FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2",
            vec![sid.into(), fid.into()],
        );
        let pg = self.backend() == Backend::Postgres;
        for (g, group) in chunks.chunks(ROWS_PER_INSERT).enumerate() {
            let per = if pg { 7 } else { 6 };
            let mut sql = if pg {
                "INSERT INTO vector_store_chunks (store_id, file_id, seq, text, tokens, embedding, dims) VALUES ".to_string()
            } else {
                "INSERT INTO vector_store_chunks (store_id, file_id, seq, text, tokens, embedding) VALUES ".to_string()
            };
            let mut args = Vec::with_capacity(group.len() * per);
            for (i, c) in group.iter().enumerate() {
                let seq = g * ROWS_PER_INSERT + i;
                let b = i * per;
                if i > 0 {
                    sql.push_str(", ");
                }
                if pg {
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}::vector, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7
                    ));
                } else {
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6
                    ));
                }
                args.push(sid.into());
                args.push(fid.into());
                args.push((seq as i64).into());
                args.push(c.text.as_str().into());
                args.push((c.tokens as i64).into());
                if pg {
                    args.push(to_text(&vectors[seq]).into());
                    args.push(dims.into());
                } else {
                    args.push(to_blob(&vectors[seq]).into());
                }
            }
            w = w.then(sql, args);
        }
        if !pg {
            w = w.then(
                format!(
                    "INSERT INTO vector_store_vec_{dims} (rowid, store_id, file_id, embedding) \
                     SELECT id, store_id, file_id, embedding FROM vector_store_chunks \
                     WHERE store_id = $1 AND file_id = $2"
                ),
                vec![sid.into(), fid.into()],
            );
        }
        w = w
            .then(
                "UPDATE vector_store_files SET status = 'completed', usage_bytes = $1, \
                 lease_until = NULL WHERE store_id = $2 AND file_id = $3 \
                 AND status = 'in_progress'",
                vec![usage.into(), sid.into(), fid.into()],
            )
            // Cancelled or removed meanwhile: nothing of it stays.
            .then(
                "DELETE FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2 \
                 AND NOT EXISTS (SELECT 1 FROM vector_store_files WHERE store_id = $1 \
                 AND file_id = $2 AND status = 'completed')",
                vec![sid.into(), fid.into()],
            );
        self.store.write(w).await.map_err(ServiceError::from)?;
        self.refresh_statistics(chunks.len() as u64).await;
        Ok(chunks.len() as u64)
    }

    /// PostgreSQL: `ANALYZE` the chunks after every 5000 stored here (autovacuum does
    /// too, but only once the table has grown by a tenth and its next round comes).
    async fn refresh_statistics(&self, added: u64) {
        use std::sync::atomic::Ordering;
        if self.backend() != Backend::Postgres {
            return;
        }
        let before = self.unanalyzed.fetch_add(added, Ordering::Relaxed);
        if before + added < 5000 {
            return;
        }
        self.unanalyzed.store(0, Ordering::Relaxed);
        if let Err(e) = self
            .store
            .write(Write::one("ANALYZE vector_store_chunks", vec![]))
            .await
        {
            tracing::warn!(error = %e, "the chunks' statistics were not refreshed");
        }
    }

    /// One embedding request, retried with backoff on 429 and 5xx.
    async fn embed_with_retries(
        &self,
        embedder: &dyn super::embed::Embedder,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, Stop> {
        let mut wait = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match embedder.embed(texts.clone()).await {
                Ok(v) => return Ok(v),
                Err(e)
                    if (e.status == 429 || e.status >= 500)
                        && attempt < self.cfg.embed_attempts =>
                {
                    tracing::warn!(status = e.status, error = %e.message, attempt, "embedding failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Stop::Failed(
                        "server_error",
                        format!("embedding failed ({}): {}", e.status, e.message),
                    ));
                }
            }
        }
    }

    /// The nearest-neighbour index of the chunks of dimension `dims`, made on first
    /// use. PostgreSQL: a partial HNSW index per dimension (pgvector indexes vectors of
    /// one dimension). SQLite: a sqlite-vec `vec0` table per dimension, partitioned by
    /// store, holding a copy of the chunks' vectors next to their file (ingestion adds
    /// them, a trigger removes them with their chunk); made from the chunks already
    /// stored, so a database from before it gets one too.
    pub(crate) async fn ensure_index(&self, dims: i64) {
        let _one_at_a_time = self.indexing.lock().await;
        if self.indexed.lock().expect("index list").contains(&dims) {
            return;
        }
        if self.backend() == Backend::Sqlite {
            // Made already (by this database's earlier runs): nothing to fill in.
            let made = self
                .store
                .fetch_optional(
                    "SELECT 1 AS made FROM sqlite_master WHERE type = 'table' AND name = $1",
                    &[format!("vector_store_vec_{dims}").into()],
                )
                .await;
            if matches!(made, Ok(Some(_))) {
                self.indexed.lock().expect("index list").push(dims);
                return;
            }
        }
        let w = match self.backend() {
            Backend::Postgres => Write::one(
                format!(
                    "CREATE INDEX IF NOT EXISTS vector_store_chunks_hnsw_{dims} ON \
                     vector_store_chunks USING hnsw ((embedding::vector({dims})) \
                     vector_cosine_ops) WHERE dims = {dims}"
                ),
                vec![],
            ),
            Backend::Sqlite => Write::one(
                format!(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS vector_store_vec_{dims} USING vec0(\
                     store_id text partition key, file_id text, \
                     embedding float[{dims}] distance_metric=cosine)"
                ),
                vec![],
            )
            .then(
                format!(
                    "CREATE TRIGGER IF NOT EXISTS vector_store_vec_{dims}_ad AFTER DELETE ON \
                     vector_store_chunks WHEN length(old.embedding) = {bytes} BEGIN \
                     DELETE FROM vector_store_vec_{dims} WHERE rowid = old.id; END",
                    bytes = 4 * dims
                ),
                vec![],
            )
            .then(
                format!(
                    "INSERT INTO vector_store_vec_{dims} (rowid, store_id, file_id, embedding) \
                     SELECT id, store_id, file_id, embedding FROM vector_store_chunks c \
                     WHERE length(c.embedding) = {bytes} AND NOT EXISTS \
                     (SELECT 1 FROM vector_store_vec_{dims} v WHERE v.rowid = c.id)",
                    bytes = 4 * dims
                ),
                vec![],
            ),
        };
        match self.store.write(w).await {
            Ok(_) => self.indexed.lock().expect("index list").push(dims),
            // Another replica creating it at the same moment: it exists either way.
            Err(e) => tracing::warn!(error = %e, dims, "the vector index was not created"),
        }
    }
}
