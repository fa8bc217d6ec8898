//! File bytes in S3-compatible object storage (`ObjectBlobs`), against an S3 server of
//! the test's own (moto, on loopback): staged, committed, read back and deleted; a
//! large upload goes as a multipart upload; one over the limit leaves nothing behind,
//! not even a multipart upload's parts.

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use switchyard_stateful::files::blobs::{AmazonS3Builder, BlobError, Blobs, ObjectBlobs};
use switchyard_stateful::testing::S3Server;

fn credentials() -> AmazonS3Builder {
    AmazonS3Builder::new()
        .with_access_key_id("switchyard-test")
        .with_secret_access_key("switchyard-secret")
}

fn chunks(data: &[u8], size: usize) -> switchyard_stateful::files::blobs::ByteStream<'static> {
    let parts: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(parts).boxed()
}

async fn read(blobs: &ObjectBlobs, key: &str) -> Vec<u8> {
    let mut stream = blobs.open(key).await.expect("the blob opens");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// A listing of the bucket by S3's own API: (object keys, multipart uploads in progress).
async fn bucket(s3: &S3Server) -> (Vec<String>, usize) {
    let base = format!("{}/{}", s3.endpoint(), s3.bucket());
    let get = |query: &str| {
        let url = format!("{base}?{query}");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let objects = get("list-type=2").await;
    let mut keys: Vec<String> = objects
        .split("<Key>")
        .skip(1)
        .map(|k| k.split("</Key>").next().unwrap().to_string())
        .collect();
    keys.sort();
    (keys, get("uploads").await.matches("<UploadId>").count())
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn blobs_in_object_storage_are_staged_committed_read_and_deleted() {
    let s3 = tokio::task::spawn_blocking(S3Server::start).await.unwrap();
    let blobs = ObjectBlobs::s3(&s3.files_url("files/a"), credentials()).unwrap();

    // A small upload, cut mid-character: one request, counted, hashed, UTF-8.
    let text = "naïve café, line after line\n".repeat(500).into_bytes();
    let staged = blobs.stage(chunks(&text, 1001), 1 << 20).await.unwrap();
    assert_eq!(staged.bytes, text.len() as u64);
    assert_eq!(staged.sha256, sha256(&text));
    assert!(staged.utf8);
    let (keys, _) = bucket(&s3).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("files/a/.staging/upload-"), "{keys:?}");
    blobs.commit(&staged, "file-small").await.unwrap();
    assert_eq!(
        bucket(&s3).await,
        (vec!["files/a/file-small".to_string()], 0)
    );
    assert_eq!(read(&blobs, "file-small").await, text);

    // Larger than a part: a multipart upload, read back whole; not UTF-8.
    let mut big: Vec<u8> = (0..ObjectBlobs::PART + 3 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    big[5] = 0xff;
    let staged = blobs
        .stage(chunks(&big, 256 * 1024), 64 << 20)
        .await
        .unwrap();
    assert_eq!(staged.bytes, big.len() as u64);
    assert_eq!(staged.sha256, sha256(&big));
    assert!(!staged.utf8);
    blobs.commit(&staged, "file-big").await.unwrap();
    assert!(read(&blobs, "file-big").await == big);

    // Over the limit after a part was sent: refused, and the multipart upload aborted.
    let before = bucket(&s3).await;
    let limit = (ObjectBlobs::PART + 1024 * 1024) as u64;
    match blobs.stage(chunks(&big, 256 * 1024), limit).await {
        Err(BlobError::TooLarge(n)) => assert_eq!(n, limit),
        other => panic!("{other:?}"),
    }
    assert_eq!(bucket(&s3).await, before);

    // A discarded upload is gone.
    let staged = blobs.stage(chunks(b"draft", 2), 100).await.unwrap();
    blobs.discard(&staged).await;
    assert_eq!(bucket(&s3).await, before);

    // Deleted (twice is fine); a missing or foreign key is not found.
    blobs.delete("file-small").await.unwrap();
    blobs.delete("file-small").await.unwrap();
    assert!(matches!(
        blobs.open("file-small").await,
        Err(BlobError::NotFound)
    ));
    assert!(matches!(
        blobs.open("../file-big").await,
        Err(BlobError::NotFound)
    ));
    assert_eq!(bucket(&s3).await, (vec!["files/a/file-big".to_string()], 0));

    // Another prefix in the same bucket does not see them.
    let other = ObjectBlobs::s3(&s3.files_url("files/b"), credentials()).unwrap();
    assert!(matches!(
        other.open("file-big").await,
        Err(BlobError::NotFound)
    ));
}

#[test]
fn object_storage_urls_are_checked() {
    for (url, says) in [
        ("gs://bucket/files", "only s3://"),
        ("s3:///files", "names no bucket"),
        (
            "s3://bucket/files?colour=blue",
            "\"colour\" is not an S3 setting",
        ),
        ("not a url", "is not a URL"),
    ] {
        let e = ObjectBlobs::s3(url, credentials()).err().unwrap();
        assert!(e.contains(says), "{url}: {e}");
    }
    // Credentials are refused in the URL, and the message does not repeat them.
    let e = ObjectBlobs::s3("s3://bucket/f?secret_access_key=hunter2", credentials())
        .err()
        .unwrap();
    assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}
