//! Where file bytes live: a blob store behind [`Blobs`]. An upload is staged first
//! (streamed to the store while it is counted, hashed and checked for UTF-8, never held
//! whole in memory), then committed under its key once its metadata is stored — or
//! discarded.

use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
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

    /// Keys are ids the gateway made (`file-…`); nothing else reaches the file system.
    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(BlobError::NotFound);
        }
        Ok(self.dir.join(key))
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
            let (mut hash, mut utf8, mut bytes) = (Sha256::new(), Utf8::new(), 0u64);
            let written: Result<(), BlobError> = async {
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map_err(BlobError::Upload)?;
                    bytes += chunk.len() as u64;
                    if bytes > limit {
                        return Err(BlobError::TooLarge(limit));
                    }
                    hash.update(&chunk);
                    utf8.feed(&chunk);
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
            let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            Ok(Staged {
                token,
                bytes,
                sha256,
                utf8: utf8.finish(),
            })
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
