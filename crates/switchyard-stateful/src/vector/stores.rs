//! The Vector Stores API (docs/files-and-vector-stores.md): stores, the files in them
//! and file batches, in the database. A file added to a store is a job for ingestion
//! ([`super::ingest`]); its chunks become searchable ([`super::search`]) when it is
//! `completed`. Counts and statuses are computed from the files' rows when read, so they
//! are always true. Every store has an owner; files and chunks are reached through it.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::Notify;

use super::chunk::Chunking;
use super::embed::Embedder;
use super::filter;
use crate::files::Files;
use crate::responses::service::{ServiceError, random_id, unix_now};
use crate::store::{Backend, Store, Val, Write};

/// How ingestion runs.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Files ingested at once by this gateway.
    pub workers: usize,
    /// Texts per embedding request.
    pub embed_batch: usize,
    /// Attempts of one embedding request (errors 429 and 5xx are retried).
    pub embed_attempts: u32,
    /// Seconds a job's lease lasts without renewal (a replica that stops renewing it
    /// has died, and another resumes the job).
    pub lease_secs: i64,
    /// Times a job is started before it is failed (a file that kills its ingester
    /// does not come back forever).
    pub max_starts: i64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            workers: 2,
            embed_batch: 64,
            embed_attempts: 4,
            lease_secs: 60,
            max_starts: 5,
        }
    }
}

/// The Vector Stores service.
#[derive(Clone)]
pub struct VectorStores {
    pub(crate) store: Arc<Store>,
    pub(crate) files: Files,
    pub(crate) embedder: Option<Arc<dyn Embedder>>,
    pub(crate) cfg: IngestConfig,
    pub(crate) now: fn() -> i64,
    /// Woken when a job is added here.
    pub(crate) wake: Arc<Notify>,
    /// PostgreSQL: the dimensions whose HNSW index is known to exist.
    pub(crate) indexed: Arc<std::sync::Mutex<Vec<i64>>>,
    /// Held while an index is created (the workers of one gateway do not race).
    pub(crate) indexing: Arc<tokio::sync::Mutex<()>>,
    /// PostgreSQL: chunks this gateway stored since it last refreshed the planner's
    /// statistics (a bulk load leaves them stale, and the planner then scans instead
    /// of walking the HNSW index).
    pub(crate) unanalyzed: Arc<std::sync::atomic::AtomicU64>,
    /// When this gateway last recorded each store's activity (a search writes it at
    /// most once a minute).
    pub(crate) touched: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// Counts for leaving common terms out of keyword search, and from how many chunks
    /// on they are left out.
    pub(crate) common_terms_from: i64,
    pub(crate) term_counts: Arc<std::sync::Mutex<super::search::TermCounts>>,
}

pub(crate) fn bad(param: &str, message: impl Into<String>) -> ServiceError {
    ServiceError {
        status: 400,
        kind: "invalid_request_error",
        code: None,
        message: message.into(),
        param: Some(param.to_string()),
    }
}

fn bad_field((param, message): (String, String)) -> ServiceError {
    bad(&param, message)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `limit` (1–100, default 20) and `order` (default desc) of a list.
pub(crate) fn page_params(
    limit: Option<i64>,
    order: Option<&str>,
) -> Result<(i64, bool), ServiceError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit", "`limit` must be from 1 to 100"));
    }
    let desc = match order.unwrap_or("desc") {
        "desc" => true,
        "asc" => false,
        _ => return Err(bad("order", "`order` must be asc or desc")),
    };
    Ok((limit, desc))
}

/// A list page as the SDK's cursor pages read it.
fn list_page(data: Vec<Value>, has_more: bool) -> Value {
    let id = |v: Option<&Value>| v.map_or(Value::Null, |v| v["id"].clone());
    json!({
        "object": "list", "first_id": id(data.first()), "last_id": id(data.last()),
        "has_more": has_more, "data": data,
    })
}

/// File counts by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub in_progress: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl Counts {
    fn add(&mut self, status: &str, n: i64) {
        match status {
            "in_progress" => self.in_progress += n,
            "completed" => self.completed += n,
            "failed" => self.failed += n,
            "cancelled" => self.cancelled += n,
            _ => {}
        }
    }

    fn json(&self) -> Value {
        json!({
            "in_progress": self.in_progress, "completed": self.completed,
            "failed": self.failed, "cancelled": self.cancelled,
            "total": self.in_progress + self.completed + self.failed + self.cancelled,
        })
    }
}

/// The request of `POST /v1/vector_stores/{id}/files` (or one file of a batch).
struct NewFile {
    file_id: String,
    attributes: Map<String, Value>,
    chunking: Chunking,
}

impl VectorStores {
    pub fn new(store: Arc<Store>, files: Files, embedder: Option<Arc<dyn Embedder>>) -> Self {
        VectorStores {
            store,
            files,
            embedder,
            cfg: IngestConfig::default(),
            now: unix_now,
            wake: Arc::new(Notify::new()),
            indexed: Default::default(),
            indexing: Default::default(),
            touched: Default::default(),
            unanalyzed: Default::default(),
            term_counts: Default::default(),
            common_terms_from: super::search::COMMON_TERMS_FROM,
        }
    }

    pub fn with_ingest(mut self, cfg: IngestConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Reads the time (unix seconds) from `now` (tests move it).
    pub fn with_clock(mut self, now: fn() -> i64) -> Self {
        self.now = now;
        self
    }

    /// Leaves common terms out of keyword search from `chunks` chunks on (default
    /// 10 000, docs/files-and-vector-stores.md; tests lower it).
    pub fn with_common_terms_from(mut self, chunks: i64) -> Self {
        self.common_terms_from = chunks;
        self
    }

    pub(crate) fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// 503 when this database has no vector search (PostgreSQL without pgvector).
    pub fn available(&self) -> Result<(), ServiceError> {
        self.store
            .vectors()
            .map(|_| ())
            .map_err(|why| ServiceError {
                status: 503,
                kind: "server_error",
                code: Some("vector_search_unavailable".into()),
                message: format!("Vector stores are unavailable on this gateway: {why}"),
                param: None,
            })
    }

    /// A `WHERE` test that `column` is one of the strings in the JSON list bound at `$n`.
    pub(crate) fn in_json_list(&self, column: &str, n: usize) -> String {
        match self.backend() {
            Backend::Sqlite => format!("{column} IN (SELECT value FROM json_each(${n}))"),
            Backend::Postgres => {
                format!("{column} IN (SELECT jsonb_array_elements_text(${n}::jsonb))")
            }
        }
    }

    // ---- stores -------------------------------------------------------------------

    /// A store's row (owned by `owner`), or 404 naming `param`.
    pub(crate) async fn store_row(
        &self,
        owner: &str,
        id: &str,
        param: &str,
    ) -> Result<AnyRow, ServiceError> {
        self.store
            .fetch_optional(
                "SELECT id, created_at, name, description, metadata, expires_days, expires_at, \
                 last_active_at, embedding_model, dims FROM vector_stores \
                 WHERE id = $1 AND owner = $2",
                &[id.into(), owner.into()],
            )
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(param, format!("No vector store found with id '{id}'"))
            })
    }

    /// Counts and bytes of the files in each of `ids`.
    async fn counts(&self, ids: &[String]) -> Result<Vec<(Counts, i64)>, ServiceError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT store_id, status, COUNT(*) AS n, \
                     CAST(COALESCE(SUM(usage_bytes), 0) AS BIGINT) AS bytes \
                     FROM vector_store_files WHERE {} GROUP BY store_id, status",
                    self.in_json_list("store_id", 1)
                ),
                &[json!(ids).to_string().into()],
            )
            .await?;
        let mut out = vec![(Counts::default(), 0i64); ids.len()];
        for r in rows {
            let sid: String = r.get("store_id");
            if let Some(i) = ids.iter().position(|x| *x == sid) {
                out[i].0.add(&r.get::<String, _>("status"), r.get("n"));
                out[i].1 += r.get::<i64, _>("bytes");
            }
        }
        Ok(out)
    }

    fn store_object(&self, r: &AnyRow, counts: Counts, bytes: i64) -> Value {
        let expires_at: Option<i64> = r.get("expires_at");
        let status = if expires_at.is_some_and(|t| t < (self.now)()) {
            "expired"
        } else if counts.in_progress > 0 {
            "in_progress"
        } else {
            "completed"
        };
        let days: Option<i64> = r.get("expires_days");
        let metadata: Value =
            serde_json::from_str(&r.get::<String, _>("metadata")).unwrap_or_else(|_| json!({}));
        let mut v = json!({
            "id": r.get::<String, _>("id"),
            "object": "vector_store",
            "created_at": r.get::<i64, _>("created_at"),
            "name": r.get::<String, _>("name"),
            "usage_bytes": bytes,
            "file_counts": counts.json(),
            "status": status,
            "expires_after": days.map(|d| json!({"anchor": "last_active_at", "days": d})),
            "expires_at": expires_at,
            "last_active_at": r.get::<i64, _>("last_active_at"),
            "metadata": metadata,
        });
        if let Some(d) = r.get::<Option<String>, _>("description") {
            v["description"] = json!(d);
        }
        v
    }

    async fn store_json(&self, owner: &str, id: &str) -> Result<Value, ServiceError> {
        let r = self.store_row(owner, id, "vector_store_id").await?;
        let c = self.counts(&[id.to_string()]).await?;
        Ok(self.store_object(&r, c[0].0, c[0].1))
    }

    /// `POST /v1/vector_stores`.
    pub async fn create(&self, owner: &str, body: &Value) -> Result<Value, ServiceError> {
        self.available()?;
        let o = object_body(body)?;
        let name = opt_string(o, "name", 256)?.unwrap_or_default();
        let description = opt_string(o, "description", 512)?;
        let metadata = crate::responses::request::metadata(o).map_err(ServiceError::invalid)?;
        let days = expires_after(o.get("expires_after"))?;
        let chunking =
            Chunking::parse(o.get("chunking_strategy"), "chunking_strategy").map_err(bad_field)?;
        let file_ids = match o.get("file_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(l)) if l.len() <= 500 => l
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(|s| NewFile {
                            file_id: s.to_string(),
                            attributes: Map::new(),
                            chunking,
                        })
                        .ok_or_else(|| bad(&format!("file_ids[{i}]"), "a file id must be a string"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(bad(
                    "file_ids",
                    "`file_ids` must be a list of at most 500 file ids",
                ));
            }
        };
        self.check_files(owner, &file_ids, "file_ids").await?;
        let id = random_id("vs_");
        let now = (self.now)();
        let w = Write::one(
            "INSERT INTO vector_stores (id, owner, created_at, created_us, name, description, \
             metadata, expires_days, expires_at, last_active_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $3)",
            vec![
                id.as_str().into(),
                owner.into(),
                now.into(),
                now_us().into(),
                name.into(),
                description.into(),
                Value::Object(metadata).to_string().into(),
                days.into(),
                days.map(|d| now + d * 86_400).into(),
            ],
        );
        self.store
            .write(w.and(self.add_rows(&id, &file_ids, None)))
            .await?;
        if !file_ids.is_empty() {
            self.wake.notify_waiters();
        }
        self.store_json(owner, &id).await
    }

    /// `GET /v1/vector_stores/{id}`.
    pub async fn get(&self, owner: &str, id: &str) -> Result<Value, ServiceError> {
        self.store_json(owner, id).await
    }

    /// How many of store `id`'s files are still being ingested (a search does not see
    /// them yet).
    pub async fn files_in_progress(&self, id: &str) -> Result<i64, ServiceError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT COUNT(*) AS n FROM vector_store_files \
                 WHERE store_id = $1 AND status = 'in_progress'",
                &[id.into()],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get("n")))
    }

    /// `POST /v1/vector_stores/{id}`: `name`, `metadata`, `expires_after`.
    pub async fn modify(&self, owner: &str, id: &str, body: &Value) -> Result<Value, ServiceError> {
        let o = object_body(body)?;
        let r = self.store_row(owner, id, "vector_store_id").await?;
        let mut w = Write::default();
        if o.contains_key("name") {
            let name = opt_string(o, "name", 256)?.unwrap_or_default();
            w = w.then(
                "UPDATE vector_stores SET name = $1 WHERE id = $2",
                vec![name.into(), id.into()],
            );
        }
        if o.contains_key("metadata") {
            let m = crate::responses::request::metadata(o).map_err(ServiceError::invalid)?;
            w = w.then(
                "UPDATE vector_stores SET metadata = $1 WHERE id = $2",
                vec![Value::Object(m).to_string().into(), id.into()],
            );
        }
        if o.contains_key("expires_after") {
            let days = expires_after(o.get("expires_after"))?;
            let last: i64 = r.get("last_active_at");
            w = w.then(
                "UPDATE vector_stores SET expires_days = $1, expires_at = $2 WHERE id = $3",
                vec![
                    days.into(),
                    days.map(|d| last + d * 86_400).into(),
                    id.into(),
                ],
            );
        }
        if !w.0.is_empty() {
            self.store.write(w).await?;
        }
        self.store_json(owner, id).await
    }

    /// `DELETE /v1/vector_stores/{id}`: the store, its files' entries and chunks (the
    /// files themselves stay).
    pub async fn delete(&self, owner: &str, id: &str) -> Result<Value, ServiceError> {
        self.store_row(owner, id, "vector_store_id").await?;
        self.store
            .write(Write::one(
                "DELETE FROM vector_stores WHERE id = $1 AND owner = $2",
                vec![id.into(), owner.into()],
            ))
            .await?;
        Ok(json!({"id": id, "object": "vector_store.deleted", "deleted": true}))
    }

    /// `GET /v1/vector_stores?limit=&order=&after=&before=`.
    pub async fn list(
        &self,
        owner: &str,
        after: Option<&str>,
        before: Option<&str>,
        limit: Option<i64>,
        order: Option<&str>,
    ) -> Result<Value, ServiceError> {
        let (limit, desc) = page_params(limit, order)?;
        let mut args: Vec<Val> = vec![owner.into()];
        let mut sql = "SELECT id, created_at, name, description, metadata, expires_days, \
                       expires_at, last_active_at, embedding_model, dims FROM vector_stores \
                       WHERE owner = $1"
            .to_string();
        let cursor = "SELECT created_us FROM vector_stores WHERE id = $1 AND owner = $2";
        let key = [owner.into()];
        let back = self
            .cursor(&mut sql, &mut args, cursor, &key, after, before, desc)
            .await?;
        let rows = self.page_rows(sql, args, limit, desc, back, "id").await?;
        let has_more = rows.len() as i64 > limit;
        let rows = &rows[..rows.len().min(limit as usize)];
        let ids: Vec<String> = rows.iter().map(|r| r.get("id")).collect();
        let counts = self.counts(&ids).await?;
        let data = rows
            .iter()
            .zip(counts)
            .map(|(r, (c, b))| self.store_object(r, c, b))
            .collect();
        Ok(list_page(data, has_more))
    }

    /// Adds `after`/`before` to a list query ordered by `created_us`; the cursor row is
    /// found by `cursor_sql` (`$1` the id, then `key`).
    #[allow(clippy::too_many_arguments)]
    async fn cursor(
        &self,
        sql: &mut String,
        args: &mut Vec<Val>,
        cursor_sql: &str,
        key: &[Val],
        after: Option<&str>,
        before: Option<&str>,
        desc: bool,
    ) -> Result<bool, ServiceError> {
        for (param, id, forward) in [("after", after, true), ("before", before, false)] {
            let Some(id) = id else { continue };
            let mut cargs = vec![id.into()];
            cargs.extend_from_slice(key);
            let row = self
                .store
                .fetch_optional(cursor_sql, &cargs)
                .await?
                .ok_or_else(|| bad(param, format!("`{param}` names no object of this list")))?;
            let at: i64 = row.get("created_us");
            args.push(at.into());
            let op = if forward == desc { "<" } else { ">" };
            sql.push_str(&format!(" AND created_us {op} ${}", args.len()));
        }
        Ok(before.is_some() && after.is_none())
    }

    /// A page's rows (one more than `limit` when there are more). With only `before`,
    /// the rows next to the cursor: read backwards, then put in the list's order.
    async fn page_rows(
        &self,
        mut sql: String,
        args: Vec<Val>,
        limit: i64,
        desc: bool,
        backwards: bool,
        id: &str,
    ) -> Result<Vec<AnyRow>, ServiceError> {
        let dir = if desc != backwards { "DESC" } else { "ASC" };
        sql.push_str(&format!(
            " ORDER BY created_us {dir}, {id} {dir} LIMIT {}",
            limit + 1
        ));
        let mut rows = self.store.fetch_all(&sql, &args).await?;
        if backwards {
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            rows.reverse();
            if more {
                // Keeps "one more than limit" meaning "there are more".
                let first = rows[0].clone();
                rows.push(first);
            }
        }
        Ok(rows)
    }

    // ---- files in a store -----------------------------------------------------------

    /// 404 naming the entry of `param` for a file `owner` does not have.
    async fn check_files(
        &self,
        owner: &str,
        files: &[NewFile],
        param: &str,
    ) -> Result<(), ServiceError> {
        for (i, f) in files.iter().enumerate() {
            self.files.get(&f.file_id, owner).await.map_err(|mut e| {
                e.param = Some(if param == "file_id" {
                    param.to_string()
                } else {
                    format!("{param}[{i}]")
                });
                e
            })?;
        }
        Ok(())
    }

    /// Rows that put `files` in store `id` as jobs (a file already there starts over,
    /// without its chunks: chunks exist only for `completed` files, so searches need
    /// not look at the files' status).
    fn add_rows(&self, id: &str, files: &[NewFile], batch: Option<&str>) -> Write {
        let now = (self.now)();
        let mut w = Write::default();
        for (i, f) in files.iter().enumerate() {
            w = w.then(
                "DELETE FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2",
                vec![id.into(), f.file_id.as_str().into()],
            );
            w = w.then(
                "INSERT INTO vector_store_files (store_id, file_id, created_at, created_us, \
                 status, attributes, chunking, batch_id) \
                 VALUES ($1, $2, $3, $4, 'in_progress', $5, $6, $7) \
                 ON CONFLICT (store_id, file_id) DO UPDATE SET status = 'in_progress', \
                 last_error = NULL, usage_bytes = 0, attributes = excluded.attributes, \
                 chunking = excluded.chunking, batch_id = excluded.batch_id, \
                 lease_until = NULL, attempts = 0",
                vec![
                    id.into(),
                    f.file_id.as_str().into(),
                    now.into(),
                    (now_us() + i as i64).into(),
                    Value::Object(f.attributes.clone()).to_string().into(),
                    f.chunking.json().to_string().into(),
                    batch.into(),
                ],
            );
        }
        w
    }

    fn file_object(&self, r: &AnyRow) -> Value {
        let parse = |c: &str| -> Value {
            r.get::<Option<String>, _>(c)
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(Value::Null)
        };
        json!({
            "id": r.get::<String, _>("file_id"),
            "object": "vector_store.file",
            "created_at": r.get::<i64, _>("created_at"),
            "vector_store_id": r.get::<String, _>("store_id"),
            "status": r.get::<String, _>("status"),
            "last_error": parse("last_error"),
            "usage_bytes": r.get::<i64, _>("usage_bytes"),
            "attributes": parse("attributes"),
            "chunking_strategy": parse("chunking"),
        })
    }

    const FILE_COLUMNS: &'static str =
        "store_id, file_id, created_at, status, last_error, usage_bytes, attributes, chunking";

    async fn file_row(&self, store_id: &str, file_id: &str) -> Result<AnyRow, ServiceError> {
        self.store
            .fetch_optional(
                &format!(
                    "SELECT {} FROM vector_store_files WHERE store_id = $1 AND file_id = $2",
                    Self::FILE_COLUMNS
                ),
                &[store_id.into(), file_id.into()],
            )
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "file_id",
                    format!("No file found with id '{file_id}' in vector store '{store_id}'"),
                )
            })
    }

    fn new_file(o: &Map<String, Value>, prefix: &str) -> Result<NewFile, ServiceError> {
        let file_id = o
            .get("file_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(&format!("{prefix}file_id"), "`file_id` is required"))?;
        Ok(NewFile {
            file_id: file_id.to_string(),
            attributes: filter::attributes(o.get("attributes"), &format!("{prefix}attributes"))
                .map_err(bad_field)?,
            chunking: Chunking::parse(
                o.get("chunking_strategy"),
                &format!("{prefix}chunking_strategy"),
            )
            .map_err(bad_field)?,
        })
    }

    /// `POST /v1/vector_stores/{id}/files`.
    pub async fn add_file(
        &self,
        owner: &str,
        id: &str,
        body: &Value,
    ) -> Result<Value, ServiceError> {
        self.available()?;
        let o = object_body(body)?;
        let f = Self::new_file(o, "")?;
        self.store_row(owner, id, "vector_store_id").await?;
        self.check_files(owner, std::slice::from_ref(&f), "file_id")
            .await?;
        self.store
            .write(self.add_rows(id, std::slice::from_ref(&f), None))
            .await?;
        self.wake.notify_waiters();
        Ok(self.file_object(&self.file_row(id, &f.file_id).await?))
    }

    /// `GET /v1/vector_stores/{id}/files/{file_id}`.
    pub async fn get_file(
        &self,
        owner: &str,
        id: &str,
        file_id: &str,
    ) -> Result<Value, ServiceError> {
        self.store_row(owner, id, "vector_store_id").await?;
        Ok(self.file_object(&self.file_row(id, file_id).await?))
    }

    /// `POST /v1/vector_stores/{id}/files/{file_id}`: new `attributes`.
    pub async fn update_file(
        &self,
        owner: &str,
        id: &str,
        file_id: &str,
        body: &Value,
    ) -> Result<Value, ServiceError> {
        let o = object_body(body)?;
        if !o.contains_key("attributes") {
            return Err(bad("attributes", "`attributes` is required"));
        }
        let attrs = filter::attributes(o.get("attributes"), "attributes").map_err(bad_field)?;
        self.store_row(owner, id, "vector_store_id").await?;
        self.file_row(id, file_id).await?;
        self.store
            .write(Write::one(
                "UPDATE vector_store_files SET attributes = $1 WHERE store_id = $2 AND file_id = $3",
                vec![Value::Object(attrs).to_string().into(), id.into(), file_id.into()],
            ))
            .await?;
        Ok(self.file_object(&self.file_row(id, file_id).await?))
    }

    /// `DELETE /v1/vector_stores/{id}/files/{file_id}`: the entry and its chunks (the
    /// file stays).
    pub async fn delete_file(
        &self,
        owner: &str,
        id: &str,
        file_id: &str,
    ) -> Result<Value, ServiceError> {
        self.store_row(owner, id, "vector_store_id").await?;
        self.file_row(id, file_id).await?;
        self.store
            .write(Write::one(
                "DELETE FROM vector_store_files WHERE store_id = $1 AND file_id = $2",
                vec![id.into(), file_id.into()],
            ))
            .await?;
        Ok(json!({"id": file_id, "object": "vector_store.file.deleted", "deleted": true}))
    }

    /// `GET /v1/vector_stores/{id}/files?filter=&limit=&order=&after=&before=`, or a
    /// batch's files.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_files(
        &self,
        owner: &str,
        id: &str,
        batch: Option<&str>,
        status: Option<&str>,
        after: Option<&str>,
        before: Option<&str>,
        limit: Option<i64>,
        order: Option<&str>,
    ) -> Result<Value, ServiceError> {
        let (limit, desc) = page_params(limit, order)?;
        if let Some(s) = status
            && !["in_progress", "completed", "failed", "cancelled"].contains(&s)
        {
            return Err(bad(
                "filter",
                "`filter` must be in_progress, completed, failed or cancelled",
            ));
        }
        self.store_row(owner, id, "vector_store_id").await?;
        if let Some(b) = batch {
            self.batch_row(id, b).await?;
        }
        let mut sql = format!(
            "SELECT {} FROM vector_store_files WHERE store_id = $1",
            Self::FILE_COLUMNS
        );
        let mut args: Vec<Val> = vec![id.into()];
        if let Some(b) = batch {
            args.push(b.into());
            sql.push_str(&format!(" AND batch_id = ${}", args.len()));
        }
        if let Some(s) = status {
            args.push(s.into());
            sql.push_str(&format!(" AND status = ${}", args.len()));
        }
        let cursor =
            "SELECT created_us FROM vector_store_files WHERE file_id = $1 AND store_id = $2";
        let back = self
            .cursor(
                &mut sql,
                &mut args,
                cursor,
                &[id.into()],
                after,
                before,
                desc,
            )
            .await?;
        let rows = self
            .page_rows(sql, args, limit, desc, back, "file_id")
            .await?;
        let has_more = rows.len() as i64 > limit;
        let data = rows
            .iter()
            .take(limit as usize)
            .map(|r| self.file_object(r))
            .collect();
        Ok(list_page(data, has_more))
    }

    /// `GET /v1/vector_stores/{id}/files/{file_id}/content`: the file's chunks, in order.
    pub async fn file_content(
        &self,
        owner: &str,
        id: &str,
        file_id: &str,
    ) -> Result<Value, ServiceError> {
        self.store_row(owner, id, "vector_store_id").await?;
        self.file_row(id, file_id).await?;
        let rows = self
            .store
            .fetch_all(
                "SELECT text FROM vector_store_chunks WHERE store_id = $1 AND file_id = $2 \
                 ORDER BY seq",
                &[id.into(), file_id.into()],
            )
            .await?;
        let data: Vec<Value> = rows
            .iter()
            .map(|r| json!({"type": "text", "text": r.get::<String, _>("text")}))
            .collect();
        Ok(json!({
            "object": "vector_store.file_content.page", "data": data,
            "has_more": false, "next_page": null,
        }))
    }

    // ---- batches --------------------------------------------------------------------

    async fn batch_row(&self, store_id: &str, batch_id: &str) -> Result<AnyRow, ServiceError> {
        self.store
            .fetch_optional(
                "SELECT id, store_id, created_at, status FROM vector_store_file_batches \
                 WHERE id = $1 AND store_id = $2",
                &[batch_id.into(), store_id.into()],
            )
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "batch_id",
                    format!(
                        "No file batch found with id '{batch_id}' in vector store '{store_id}'"
                    ),
                )
            })
    }

    async fn batch_json(&self, store_id: &str, batch_id: &str) -> Result<Value, ServiceError> {
        let r = self.batch_row(store_id, batch_id).await?;
        let rows = self
            .store
            .fetch_all(
                "SELECT status, COUNT(*) AS n FROM vector_store_files WHERE batch_id = $1 \
                 AND store_id = $2 GROUP BY status",
                &[batch_id.into(), store_id.into()],
            )
            .await?;
        let mut c = Counts::default();
        for row in &rows {
            c.add(&row.get::<String, _>("status"), row.get("n"));
        }
        let stored: String = r.get("status");
        let status = if stored == "cancelled" {
            "cancelled"
        } else if c.in_progress > 0 {
            "in_progress"
        } else if c.failed > 0 && c.completed == 0 && c.cancelled == 0 {
            "failed"
        } else {
            "completed"
        };
        Ok(json!({
            "id": batch_id, "object": "vector_store.files_batch",
            "created_at": r.get::<i64, _>("created_at"), "vector_store_id": store_id,
            "status": status, "file_counts": c.json(),
        }))
    }

    /// `POST /v1/vector_stores/{id}/file_batches`: `file_ids` (with the batch's
    /// `attributes` and `chunking_strategy`) or `files` (each with its own), up to 2000.
    pub async fn create_batch(
        &self,
        owner: &str,
        id: &str,
        body: &Value,
    ) -> Result<Value, ServiceError> {
        self.available()?;
        let o = object_body(body)?;
        let files = match (o.get("file_ids"), o.get("files")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "files",
                    "`file_ids` and `files` are mutually exclusive",
                ));
            }
            (Some(Value::Array(ids)), None) => {
                let shared = Self::new_file(
                    &{
                        let mut m = o.clone();
                        m.insert("file_id".into(), json!("-"));
                        m
                    },
                    "",
                )?;
                ids.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str()
                            .filter(|s| !s.is_empty())
                            .map(|s| NewFile {
                                file_id: s.to_string(),
                                attributes: shared.attributes.clone(),
                                chunking: shared.chunking,
                            })
                            .ok_or_else(|| {
                                bad(&format!("file_ids[{i}]"), "a file id must be a string")
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            (None, Some(Value::Array(list))) => list
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let p = format!("files[{i}].");
                    f.as_object()
                        .ok_or_else(|| bad(&format!("files[{i}]"), "each entry must be an object"))
                        .and_then(|o| Self::new_file(o, &p))
                })
                .collect::<Result<Vec<_>, _>>()?,
            (Some(_), None) => return Err(bad("file_ids", "`file_ids` must be a list")),
            (None, Some(_)) => return Err(bad("files", "`files` must be a list")),
            (None, None) => return Err(bad("file_ids", "`file_ids` or `files` is required")),
        };
        if files.is_empty() || files.len() > 2000 {
            return Err(bad(
                if o.contains_key("files") {
                    "files"
                } else {
                    "file_ids"
                },
                "a batch holds 1 to 2000 files",
            ));
        }
        let param = if o.contains_key("files") {
            "files"
        } else {
            "file_ids"
        };
        self.store_row(owner, id, "vector_store_id").await?;
        self.check_files(owner, &files, param).await?;
        let batch = random_id("vsfb_");
        let w = Write::one(
            "INSERT INTO vector_store_file_batches (id, store_id, created_at, status) \
             VALUES ($1, $2, $3, 'in_progress')",
            vec![batch.as_str().into(), id.into(), (self.now)().into()],
        );
        self.store
            .write(w.and(self.add_rows(id, &files, Some(&batch))))
            .await?;
        self.wake.notify_waiters();
        self.batch_json(id, &batch).await
    }

    /// `GET /v1/vector_stores/{id}/file_batches/{batch_id}`.
    pub async fn get_batch(
        &self,
        owner: &str,
        id: &str,
        batch: &str,
    ) -> Result<Value, ServiceError> {
        self.store_row(owner, id, "vector_store_id").await?;
        self.batch_json(id, batch).await
    }

    /// `POST …/file_batches/{batch_id}/cancel`: the batch's files not yet done are
    /// `cancelled` (a job running one stops at its next step and keeps nothing).
    pub async fn cancel_batch(
        &self,
        owner: &str,
        id: &str,
        batch: &str,
    ) -> Result<Value, ServiceError> {
        self.store_row(owner, id, "vector_store_id").await?;
        self.batch_row(id, batch).await?;
        self.store
            .write(
                Write::one(
                    "UPDATE vector_store_file_batches SET status = 'cancelled' \
                     WHERE id = $1 AND store_id = $2",
                    vec![batch.into(), id.into()],
                )
                .then(
                    "UPDATE vector_store_files SET status = 'cancelled', lease_until = NULL \
                     WHERE batch_id = $1 AND store_id = $2 AND status = 'in_progress'",
                    vec![batch.into(), id.into()],
                )
                .then(
                    "DELETE FROM vector_store_chunks WHERE store_id = $2 AND file_id IN \
                     (SELECT file_id FROM vector_store_files WHERE batch_id = $1 \
                     AND store_id = $2 AND status = 'cancelled')",
                    vec![batch.into(), id.into()],
                ),
            )
            .await?;
        self.batch_json(id, batch).await
    }

    /// Deletes the stores whose expiry has passed (they already show `expired`); how
    /// many.
    pub async fn purge_expired(&self) -> Result<u64, ServiceError> {
        let n = self
            .store
            .write(Write::one(
                "DELETE FROM vector_stores WHERE expires_at IS NOT NULL AND expires_at < $1",
                vec![((self.now)() - 86_400).into()],
            ))
            .await?;
        Ok(n[0])
    }
}

pub(crate) fn object_body(body: &Value) -> Result<&Map<String, Value>, ServiceError> {
    body.as_object()
        .ok_or_else(|| bad("", "the body must be a JSON object"))
}

fn opt_string(
    o: &Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Option<String>, ServiceError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(_) => Err(bad(
            key,
            format!("`{key}` must be a string of at most {max} characters"),
        )),
    }
}

/// `expires_after: {"anchor": "last_active_at", "days": 1–365}`: the days.
fn expires_after(v: Option<&Value>) -> Result<Option<i64>, ServiceError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            if v["anchor"] != "last_active_at" {
                return Err(bad(
                    "expires_after.anchor",
                    "`expires_after.anchor` must be last_active_at",
                ));
            }
            match v["days"].as_i64() {
                Some(d) if (1..=365).contains(&d) => Ok(Some(d)),
                _ => Err(bad(
                    "expires_after.days",
                    "`expires_after.days` must be an integer from 1 to 365",
                )),
            }
        }
    }
}
