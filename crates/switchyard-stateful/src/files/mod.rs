//! The Files API (docs/files-and-vector-stores.md): uploads streamed to a blob store
//! ([`blobs`]), their metadata (name, purpose, size, SHA-256, expiry) in the database,
//! listed with cursor pagination, read back and deleted. Every file has an owner.

pub mod blobs;

use std::sync::Arc;

use serde_json::{Value, json};

use self::blobs::{BlobError, Blobs, ByteStream, Staged};
use crate::responses::service::{ServiceError, random_id, unix_now};
use crate::store::{Store, Write};

/// The purposes a file may be uploaded for.
pub const PURPOSES: &[&str] = &[
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// Extensions of the documents file search reads (`assistants`, `user_data`): text,
/// Markdown, HTML, PDF, JSON and source code.
pub const SUPPORTED: &[&str] = &[
    "txt", "text", "md", "markdown", "html", "htm", "pdf", "json", "jsonl", "csv", "xml", "yaml",
    "yml", "toml", "c", "h", "cc", "cpp", "hpp", "cs", "css", "go", "java", "js", "mjs", "ts",
    "tsx", "jsx", "py", "rb", "rs", "php", "sh", "sql", "tex", "kt", "swift", "scala", "lua",
];

/// Extensions whose bytes must be UTF-8 (everything supported but PDF).
fn is_text(ext: &str) -> bool {
    ext != "pdf"
}

fn bad(param: &str, message: impl Into<String>) -> ServiceError {
    ServiceError {
        status: 400,
        kind: "invalid_request_error",
        code: None,
        message: message.into(),
        param: Some(param.to_string()),
    }
}

/// The lowercased extension of `filename` ("" without one).
pub fn extension_of(filename: &str) -> String {
    match filename.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// The metadata of an upload, checked.
#[derive(Clone, Debug)]
pub struct FileMeta {
    pub filename: String,
    pub purpose: String,
    /// `expires_after.seconds` (anchored at `created_at`).
    pub expires_after: Option<i64>,
}

impl FileMeta {
    /// From the form's fields: `purpose` (required), `expires_after[anchor]` and
    /// `expires_after[seconds]`, and the file part's name.
    pub fn parse(
        filename: Option<&str>,
        purpose: Option<&str>,
        anchor: Option<&str>,
        seconds: Option<&str>,
    ) -> Result<FileMeta, ServiceError> {
        let filename = filename
            .map(|f| f.rsplit(['/', '\\']).next().unwrap_or(f).trim())
            .filter(|f| !f.is_empty())
            .ok_or_else(|| bad("file", "`file` must be a file part with a filename"))?;
        if filename.len() > 255 {
            return Err(bad("file", "the filename is longer than 255 bytes"));
        }
        let purpose = purpose.ok_or_else(|| bad("purpose", "`purpose` is required"))?;
        if !PURPOSES.contains(&purpose) {
            return Err(bad(
                "purpose",
                format!("`purpose` must be one of {}", PURPOSES.join(", ")),
            ));
        }
        let expires_after = match (anchor, seconds) {
            (None, None) => None,
            (Some("created_at") | None, Some(s)) => match s.parse::<i64>() {
                Ok(n) if (3600..=2_592_000).contains(&n) => Some(n),
                _ => {
                    return Err(bad(
                        "expires_after.seconds",
                        "`expires_after.seconds` must be from 3600 (1 hour) to 2592000 (30 days)",
                    ));
                }
            },
            (Some("created_at"), None) => {
                return Err(bad(
                    "expires_after.seconds",
                    "`expires_after.seconds` is required with `expires_after.anchor`",
                ));
            }
            (Some(_), _) => {
                return Err(bad(
                    "expires_after.anchor",
                    "`expires_after.anchor` must be created_at",
                ));
            }
        };
        let meta = FileMeta {
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            expires_after,
        };
        if meta.searchable() {
            let ext = meta.extension();
            if !SUPPORTED.contains(&ext.as_str()) {
                return Err(bad(
                    "file",
                    format!(
                        "Files of type '{ext}' are not supported for purpose {}; supported: {}",
                        meta.purpose,
                        SUPPORTED.join(", ")
                    ),
                ));
            }
        }
        Ok(meta)
    }

    /// The lowercased extension of the filename ("" without one).
    pub fn extension(&self) -> String {
        extension_of(&self.filename)
    }

    /// Whether the file is for file search (its type must be one it reads).
    fn searchable(&self) -> bool {
        matches!(self.purpose.as_str(), "assistants" | "user_data")
    }
}

/// The Files service.
#[derive(Clone)]
pub struct Files {
    store: Arc<Store>,
    blobs: Arc<dyn Blobs>,
    max_bytes: u64,
    now: fn() -> i64,
}

fn object(row: &sqlx::any::AnyRow) -> Value {
    use sqlx::Row;
    json!({
        "id": row.get::<String, _>("id"),
        "object": "file",
        "bytes": row.get::<i64, _>("bytes"),
        "created_at": row.get::<i64, _>("created_at"),
        "expires_at": row.get::<Option<i64>, _>("expires_at"),
        "filename": row.get::<String, _>("filename"),
        "purpose": row.get::<String, _>("purpose"),
        "status": "processed",
    })
}

const COLUMNS: &str = "id, created_at, filename, purpose, bytes, expires_at, blob";

impl Files {
    pub fn new(store: Arc<Store>, blobs: Arc<dyn Blobs>, max_bytes: u64) -> Files {
        Files {
            store,
            blobs,
            max_bytes,
            now: unix_now,
        }
    }

    /// Reads the time (unix seconds) from `now` (tests move it).
    pub fn with_clock(mut self, now: fn() -> i64) -> Files {
        self.now = now;
        self
    }

    /// The largest upload accepted (`--max-file-size`).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Streams an upload's bytes into the blob store (413 past the limit).
    pub async fn stage(&self, chunks: ByteStream<'_>) -> Result<Staged, ServiceError> {
        self.blobs
            .stage(chunks, self.max_bytes)
            .await
            .map_err(|e| match e {
                BlobError::TooLarge(n) => ServiceError {
                    status: 413,
                    kind: "invalid_request_error",
                    code: Some("file_too_large".into()),
                    message: format!("The file is larger than the limit of {n} bytes"),
                    param: Some("file".into()),
                },
                BlobError::Upload(e) => bad("file", format!("The upload broke off: {e}")),
                e => blob_failure(e),
            })
    }

    /// Drops a staged upload that will not be kept.
    pub async fn discard(&self, staged: &Staged) {
        self.blobs.discard(staged).await;
    }

    /// `POST /v1/files`: keeps a staged upload as a file (or discards it when it is
    /// empty, or a text file that is not UTF-8).
    pub async fn create(
        &self,
        owner: &str,
        meta: &FileMeta,
        staged: Staged,
    ) -> Result<Value, ServiceError> {
        let refused = if staged.bytes == 0 {
            Some(bad("file", "The file is empty"))
        } else if meta.searchable() && is_text(&meta.extension()) && !staged.utf8 {
            Some(bad(
                "file",
                format!("'{}' is not UTF-8 text", meta.filename),
            ))
        } else {
            None
        };
        if let Some(e) = refused {
            self.blobs.discard(&staged).await;
            return Err(e);
        }
        let id = random_id("file-");
        if let Err(e) = self.blobs.commit(&staged, &id).await {
            self.blobs.discard(&staged).await;
            return Err(blob_failure(e));
        }
        let created_at = (self.now)();
        let created_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let expires_at = meta.expires_after.map(|s| created_at + s);
        let stored = self
            .store
            .write(Write::one(
                "INSERT INTO files (id, owner, created_at, created_us, filename, purpose, bytes, \
                 sha256, expires_at, blob) VALUES ($1, $2, $3, $9, $4, $5, $6, $7, $8, $1)",
                vec![
                    id.as_str().into(),
                    owner.into(),
                    created_at.into(),
                    meta.filename.as_str().into(),
                    meta.purpose.as_str().into(),
                    (staged.bytes as i64).into(),
                    staged.sha256.as_str().into(),
                    expires_at.into(),
                    created_us.into(),
                ],
            ))
            .await;
        if let Err(e) = stored {
            let _ = self.blobs.delete(&id).await;
            return Err(e.into());
        }
        Ok(json!({
            "id": id, "object": "file", "bytes": staged.bytes, "created_at": created_at,
            "expires_at": expires_at, "filename": meta.filename, "purpose": meta.purpose,
            "status": "processed",
        }))
    }

    /// A file's row; an expired one only `with_expired` (for its deletion).
    async fn row_of(
        &self,
        id: &str,
        owner: &str,
        with_expired: bool,
    ) -> Result<sqlx::any::AnyRow, ServiceError> {
        let live_at = if with_expired { i64::MIN } else { (self.now)() };
        self.store
            .fetch_optional(
                &format!(
                    "SELECT {COLUMNS} FROM files WHERE id = $1 AND owner = $2 \
                     AND (expires_at IS NULL OR expires_at >= $3)"
                ),
                &[id.into(), owner.into(), live_at.into()],
            )
            .await?
            .ok_or_else(|| ServiceError::not_found("file_id", format!("No such File object: {id}")))
    }

    async fn row(&self, id: &str, owner: &str) -> Result<sqlx::any::AnyRow, ServiceError> {
        self.row_of(id, owner, false).await
    }

    /// `GET /v1/files/{id}`.
    pub async fn get(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        Ok(object(&self.row(id, owner).await?))
    }

    /// The SHA-256 of a file's bytes (hex).
    pub async fn sha256(&self, id: &str, owner: &str) -> Result<String, ServiceError> {
        let row = self
            .store
            .fetch_optional(
                "SELECT sha256 FROM files WHERE id = $1 AND owner = $2",
                &[id.into(), owner.into()],
            )
            .await?
            .ok_or_else(|| {
                ServiceError::not_found("file_id", format!("No such File object: {id}"))
            })?;
        Ok(sqlx::Row::get(&row, "sha256"))
    }

    /// `GET /v1/files/{id}/content`: the file's name and bytes.
    pub async fn content(
        &self,
        id: &str,
        owner: &str,
    ) -> Result<(String, ByteStream<'static>), ServiceError> {
        let row = self.row(id, owner).await?;
        let blob: String = sqlx::Row::get(&row, "blob");
        let bytes = self.blobs.open(&blob).await.map_err(blob_failure)?;
        Ok((sqlx::Row::get(&row, "filename"), bytes))
    }

    /// A file's name and its text (parsed by its type: PDF, HTML, or UTF-8 text), for a
    /// prompt; files over `max_bytes` are refused (400 naming `param`).
    pub async fn text(
        &self,
        id: &str,
        owner: &str,
        max_bytes: u64,
        param: &str,
    ) -> Result<(String, String), ServiceError> {
        let row = self.row(id, owner).await.map_err(|mut e| {
            e.param = Some(param.to_string());
            e
        })?;
        let (filename, size, blob): (String, i64, String) = (
            sqlx::Row::get(&row, "filename"),
            sqlx::Row::get(&row, "bytes"),
            sqlx::Row::get(&row, "blob"),
        );
        if size as u64 > max_bytes {
            return Err(bad(
                param,
                format!("'{filename}' is larger than the {max_bytes} bytes a prompt takes"),
            ));
        }
        let mut stream = self.blobs.open(&blob).await.map_err(blob_failure)?;
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            bytes.extend_from_slice(&chunk.map_err(|e| blob_failure(e.into()))?);
        }
        let ext = extension_of(&filename);
        let text = tokio::task::spawn_blocking(move || crate::vector::parse::to_text(&ext, &bytes))
            .await
            .map_err(|_| bad(param, "the file could not be read"))?
            .map_err(|e| bad(param, format!("'{filename}': {e}")))?;
        Ok((filename, text))
    }

    /// `GET /v1/files?purpose=&after=&limit=&order=`: newest first by default; `limit`
    /// 1–10000 (default 10000).
    pub async fn list(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: Option<i64>,
        order: Option<&str>,
    ) -> Result<Value, ServiceError> {
        let limit = limit.unwrap_or(10_000);
        if !(1..=10_000).contains(&limit) {
            return Err(bad("limit", "`limit` must be from 1 to 10000"));
        }
        let desc = match order.unwrap_or("desc") {
            "desc" => true,
            "asc" => false,
            _ => return Err(bad("order", "`order` must be asc or desc")),
        };
        if let Some(p) = purpose
            && !PURPOSES.contains(&p)
        {
            return Err(bad(
                "purpose",
                format!("`purpose` must be one of {}", PURPOSES.join(", ")),
            ));
        }
        let mut sql = format!(
            "SELECT {COLUMNS} FROM files WHERE owner = $1 \
             AND (expires_at IS NULL OR expires_at >= $2)"
        );
        let mut args: Vec<crate::store::Val> = vec![owner.into(), (self.now)().into()];
        if let Some(p) = purpose {
            args.push(p.into());
            sql.push_str(&format!(" AND purpose = ${}", args.len()));
        }
        if let Some(a) = after {
            let cursor = self
                .store
                .fetch_optional(
                    "SELECT created_us FROM files WHERE id = $1 AND owner = $2",
                    &[a.into(), owner.into()],
                )
                .await?
                .ok_or_else(|| bad("after", "`after` names no file"))?;
            let at: i64 = sqlx::Row::get(&cursor, "created_us");
            args.push(at.into());
            args.push(a.into());
            let (n, m) = (args.len() - 1, args.len());
            let op = if desc { "<" } else { ">" };
            sql.push_str(&format!(" AND (created_us, id) {op} (${n}, ${m})"));
        }
        let dir = if desc { "DESC" } else { "ASC" };
        sql.push_str(&format!(
            " ORDER BY created_us {dir}, id {dir} LIMIT {}",
            limit + 1
        ));
        let rows = self.store.fetch_all(&sql, &args).await?;
        let has_more = rows.len() as i64 > limit;
        let data: Vec<Value> = rows.iter().take(limit as usize).map(object).collect();
        let id = |v: Option<&Value>| v.map_or(json!(""), |v| v["id"].clone());
        Ok(json!({
            "object": "list", "first_id": id(data.first()), "last_id": id(data.last()),
            "has_more": has_more, "data": data,
        }))
    }

    /// `DELETE /v1/files/{id}`: the row, then the bytes.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<Value, ServiceError> {
        let row = self.row_of(id, owner, true).await?;
        let blob: String = sqlx::Row::get(&row, "blob");
        self.store
            .write(Write::one(
                "DELETE FROM files WHERE id = $1 AND owner = $2",
                vec![id.into(), owner.into()],
            ))
            .await?;
        if let Err(e) = self.blobs.delete(&blob).await {
            tracing::warn!(error = %e, file = id, "a deleted file's bytes were not removed");
        }
        Ok(json!({"id": id, "object": "file", "deleted": true}))
    }

    /// Deletes the files whose expiry has passed (they are already hidden); how many.
    pub async fn purge_expired(&self) -> Result<u64, ServiceError> {
        let rows = self
            .store
            .fetch_all(
                "SELECT id, owner FROM files WHERE expires_at IS NOT NULL AND expires_at < $1",
                &[(self.now)().into()],
            )
            .await?;
        let mut n = 0;
        for r in rows {
            let (id, owner): (String, String) =
                (sqlx::Row::get(&r, "id"), sqlx::Row::get(&r, "owner"));
            if self.delete(&id, &owner).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn blob_failure(e: BlobError) -> ServiceError {
    match e {
        BlobError::NotFound => {
            ServiceError::not_found("file_id", "The file's bytes are gone".into())
        }
        e => {
            tracing::error!(error = %e, "file blob store failed");
            ServiceError {
                status: 503,
                kind: "server_error",
                code: Some("file_store_unavailable".into()),
                message: "The file store is unavailable; try again shortly".into(),
                param: None,
            }
        }
    }
}
