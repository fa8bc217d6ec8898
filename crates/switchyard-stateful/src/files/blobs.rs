//! Where file bytes live: a blob store behind [`Blobs`]. An upload is staged first
//! (streamed to the store while it is counted, hashed and checked for UTF-8, never held
//! whole in memory), then committed under its key once its metadata is stored — or
//! discarded. [`LocalBlobs`] keeps them in a directory, [`ObjectBlobs`] in
//! S3-compatible object storage.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
pub use object_store::aws::AmazonS3Builder;
use object_store::aws::AmazonS3ConfigKey;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Chunks of bytes, as read or as written.
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// More than the limit was sent (the staged bytes are gone).
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the upload broke off: {0}")]
    Upload(std::io::Error),
    #[error("blob not found")]
    NotFound,
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {0}")]
    Object(object_store::Error),
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> BlobError {
        match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound,
            e => BlobError::Object(e),
        }
    }
}

/// A staged upload: its bytes, SHA-256 and whether they are UTF-8 text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Staged {
    pub(crate) token: String,
    pub bytes: u64,
    pub sha256: String,
    pub utf8: bool,
}

/// A blob store.
pub trait Blobs: Send + Sync + 'static {
    /// Streams `chunks` into a new staged blob; more than `limit` bytes fail (and leave
    /// nothing behind).
    fn stage<'a>(
        &'a self,
        chunks: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Staged, BlobError>>;
    /// Keeps a staged blob under `key`.
    fn commit<'a>(
        &'a self,
        staged: &'a Staged,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>>;
    /// Drops a staged blob.
    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()>;
    /// The bytes of `key`, streamed.
    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ByteStream<'static>, BlobError>>;
    /// Removes `key` (gone already is fine).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>>;
}

/// Incremental UTF-8 check across chunk boundaries.
#[derive(Default)]
struct Utf8 {
    /// The bytes of a character cut by the end of the last chunk.
    pending: Vec<u8>,
    ok: bool,
}

impl Utf8 {
    fn new() -> Utf8 {
        Utf8 {
            pending: Vec::new(),
            ok: true,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if !self.ok {
            return;
        }
        let joined;
        let bytes = if self.pending.is_empty() {
            chunk
        } else {
            joined = [self.pending.as_slice(), chunk].concat();
            &joined
        };
        match std::str::from_utf8(bytes) {
            Ok(_) => self.pending.clear(),
            Err(e) if e.error_len().is_none() => {
                // Cut mid-character: keep the tail for the next chunk.
                self.pending = bytes[e.valid_up_to()..].to_vec();
            }
            Err(_) => self.ok = false,
        }
    }

    fn finish(self) -> bool {
        self.ok && self.pending.is_empty()
    }
}

/// What an upload is checked for while it streams: its size against the limit, its
/// SHA-256, whether it is UTF-8.
struct Meter {
    hash: Sha256,
    utf8: Utf8,
    bytes: u64,
    limit: u64,
}

impl Meter {
    fn new(limit: u64) -> Meter {
        Meter {
            hash: Sha256::new(),
            utf8: Utf8::new(),
            bytes: 0,
            limit,
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.limit {
            return Err(BlobError::TooLarge(self.limit));
        }
        self.hash.update(chunk);
        self.utf8.feed(chunk);
        Ok(())
    }

    fn finish(self, token: String) -> Staged {
        Staged {
            token,
            bytes: self.bytes,
            sha256: self
                .hash
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            utf8: self.utf8.finish(),
        }
    }
}

/// Keys are ids the gateway made (`file-…`); nothing else reaches the store.
fn checked(key: &str) -> Result<&str, BlobError> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(BlobError::NotFound);
    }
    Ok(key)
}

/// Blobs as files in a local directory (`--files-dir`), staged under `.staging/`.
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    /// Uses `dir`, creating it (and its staging area) if needed.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<LocalBlobs> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join(".staging"))?;
        Ok(LocalBlobs { dir })
    }

    fn staged_path(&self, token: &str) -> PathBuf {
        self.dir.join(".staging").join(token)
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        Ok(self.dir.join(checked(key)?))
    }
}

impl Blobs for LocalBlobs {
    fn stage<'a>(
        &'a self,
        mut chunks: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Staged, BlobError>> {
        Box::pin(async move {
            let token = crate::responses::service::random_id("upload-");
            let path = self.staged_path(&token);
            let mut file = tokio::fs::File::create(&path).await?;
            let mut meter = Meter::new(limit);
            let written: Result<(), BlobError> = async {
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map_err(BlobError::Upload)?;
                    meter.feed(&chunk)?;
                    file.write_all(&chunk).await?;
                }
                file.flush().await?;
                file.sync_all().await?;
                Ok(())
            }
            .await;
            drop(file);
            if let Err(e) = written {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
            Ok(meter.finish(token))
        })
    }

    fn commit<'a>(
        &'a self,
        staged: &'a Staged,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            tokio::fs::rename(self.staged_path(&staged.token), self.path(key)?).await?;
            Ok(())
        })
    }

    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = tokio::fs::remove_file(self.staged_path(&staged.token)).await;
        })
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ByteStream<'static>, BlobError>> {
        Box::pin(async move {
            let file = match tokio::fs::File::open(self.path(key)?).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BlobError::NotFound);
                }
                Err(e) => return Err(e.into()),
            };
            Ok(Box::pin(tokio_util::io::ReaderStream::new(file)) as ByteStream<'static>)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.path(key)?).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        })
    }
}

/// Blobs in S3-compatible object storage (`--files-url s3://BUCKET/PREFIX`), staged
/// under `PREFIX/.staging/`. An upload is buffered up to [`ObjectBlobs::PART`] bytes and
/// sent in one request, or as a multipart upload of parts that size (two in flight).
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
}

impl ObjectBlobs {
    /// The size of a multipart upload's parts, and of the largest upload sent whole.
    pub const PART: usize = 8 << 20;

    /// Opens `url` — `s3://BUCKET` or `s3://BUCKET/PREFIX`, with S3 settings other
    /// than credentials as query parameters (`?endpoint=…&region=…&allow_http=true`,
    /// object_store's names) — on top of `base`, where credentials come from.
    pub fn s3(url: &str, base: AmazonS3Builder) -> Result<ObjectBlobs, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "s3" {
            return Err(format!(
                "{url:?}: only s3:// URLs are supported (S3-compatible object storage)"
            ));
        }
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("{url:?} names no bucket (s3://BUCKET/PREFIX)"))?;
        let mut builder = base.with_bucket_name(bucket);
        for (key, value) in parsed.query_pairs() {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|_| format!("{url:?}: {key:?} is not an S3 setting"))?;
            if matches!(
                key,
                AmazonS3ConfigKey::AccessKeyId
                    | AmazonS3ConfigKey::SecretAccessKey
                    | AmazonS3ConfigKey::Token
            ) {
                // Not echoing the URL: it holds the secret.
                return Err(
                    "credentials do not belong in the URL (they would show in process lists \
                     and logs); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                        .to_string(),
                );
            }
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| format!("{url:?}: {e}"))?;
        let prefix =
            ObjectPath::from_url_path(parsed.path()).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(ObjectBlobs {
            store: Arc::new(store),
            prefix,
        })
    }

    /// [`ObjectBlobs::s3`] with credentials and other settings from the `AWS_*`
    /// environment variables.
    pub fn from_env(url: &str) -> Result<ObjectBlobs, String> {
        ObjectBlobs::s3(url, AmazonS3Builder::from_env())
    }

    fn path(&self, key: &str) -> Result<ObjectPath, BlobError> {
        Ok(self.prefix.clone().join(checked(key)?))
    }

    fn staged_path(&self, token: &str) -> ObjectPath {
        self.prefix.clone().join(".staging").join(token)
    }
}

impl Blobs for ObjectBlobs {
    fn stage<'a>(
        &'a self,
        mut chunks: ByteStream<'a>,
        limit: u64,
    ) -> BoxFuture<'a, Result<Staged, BlobError>> {
        Box::pin(async move {
            let token = crate::responses::service::random_id("upload-");
            let mut writer =
                BufWriter::with_capacity(self.store.clone(), self.staged_path(&token), Self::PART)
                    .with_max_concurrency(2);
            let mut meter = Meter::new(limit);
            let written: Result<(), BlobError> = async {
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map_err(BlobError::Upload)?;
                    meter.feed(&chunk)?;
                    writer.put(chunk).await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = written {
                // Nothing is stored unless a multipart upload began: abort it.
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "an aborted upload's parts were not removed");
                }
                return Err(e);
            }
            // Sends what is buffered and completes the upload. Past this point the
            // writer cannot be aborted: if completing fails, a multipart upload's parts
            // stay until the bucket's lifecycle rule for incomplete uploads removes them.
            writer.shutdown().await?;
            Ok(meter.finish(token))
        })
    }

    fn commit<'a>(
        &'a self,
        staged: &'a Staged,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            // A copy inside the store and a delete: the bytes do not pass through here.
            self.store
                .rename(&self.staged_path(&staged.token), &self.path(key)?)
                .await?;
            Ok(())
        })
    }

    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = self.store.delete(&self.staged_path(&staged.token)).await;
        })
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<ByteStream<'static>, BlobError>> {
        Box::pin(async move {
            let got = self.store.get(&self.path(key)?).await?;
            Ok(Box::pin(
                got.into_stream()
                    .map(|chunk| chunk.map_err(std::io::Error::other)),
            ) as ByteStream<'static>)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            match self.store.delete(&self.path(key)?).await {
                Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_checked_across_chunk_boundaries() {
        let text = "naïve café — ok".as_bytes();
        for cut in 0..text.len() {
            let mut u = Utf8::new();
            u.feed(&text[..cut]);
            u.feed(&text[cut..]);
            assert!(u.finish(), "cut at {cut}");
        }
        let mut u = Utf8::new();
        u.feed(b"abc\xff");
        assert!(!u.finish());
        let mut u = Utf8::new();
        u.feed("é".as_bytes().split_at(1).0);
        assert!(!u.finish(), "a character cut at the end");
    }
}
