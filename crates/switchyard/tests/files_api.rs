//! The Files API over real HTTP: an upload is streamed to the files directory (its
//! SHA-256 recorded) and kept across a restart; deleting a file removes its bytes; an
//! upload over `--max-file-size` is a 413 that leaves nothing behind; malformed forms
//! are 400s naming `file`. (The OpenAI SDK suite covers the API's shapes.)

use sha2::{Digest, Sha256};
use switchyard_testkit::*;

/// Files left in the directory (staging included).
fn stored(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join(".staging")).unwrap())
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn files_are_streamed_to_disk_kept_limited_and_deleted() {
    let dir = std::env::temp_dir().join(format!("switchyard-files-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("state.db").display());
    let files = dir.join("files");
    let settings = |c: &mut switchyard::Config| {
        c.database_url = Some(db.clone());
        c.files_dir = Some(files.clone());
        c.max_file_size = 64 * 1024;
    };
    let t = TestBed::with(sims(1).await, settings).await;
    let http = Http::new();

    // Kept: its bytes in the directory under its id, with their SHA-256.
    let data: Vec<u8> = "a line of a document\n".repeat(2000).into_bytes();
    let (s, f) = upload_form(
        &http,
        &t.url,
        multipart_form(&[
            ("purpose", None, b"assistants"),
            ("file", Some("doc.txt"), &data),
        ]),
        &multipart_type(),
    )
    .await;
    assert_eq!(s, 200, "{f}");
    let id = f["id"].as_str().unwrap().to_string();
    assert_eq!(f["bytes"], data.len());
    assert_eq!(stored(&files), vec![id.clone()]);
    assert_eq!(std::fs::read(files.join(&id)).unwrap(), data);
    let sha: String = Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        t.gateway.state.files.sha256(&id, "default").await.unwrap(),
        sha
    );

    // Over the limit: 413, and nothing staged or kept.
    let big = vec![b'x'; 64 * 1024 + 1];
    let (s, e) = upload_form(
        &http,
        &t.url,
        multipart_form(&[
            ("purpose", None, b"assistants"),
            ("file", Some("big.txt"), &big),
        ]),
        &multipart_type(),
    )
    .await;
    assert_eq!(s, 413, "{e}");
    assert_eq!(e["error"]["param"], "file");
    assert_eq!(stored(&files), vec![id.clone()]);

    // Malformed forms.
    for (body, content_type, param) in [
        (b"{}".to_vec(), "application/json".to_string(), "file"),
        (
            multipart_form(&[("purpose", None, b"assistants")]),
            multipart_type(),
            "file",
        ),
        (
            multipart_form(&[("file", Some("a.txt"), b"text")]),
            multipart_type(),
            "purpose",
        ),
        (b"--nope".to_vec(), multipart_type(), "file"),
    ] {
        let (s, e) = upload_form(&http, &t.url, body, &content_type).await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    assert_eq!(
        stored(&files),
        vec![id.clone()],
        "refused uploads leave nothing"
    );

    // Kept across a restart on the same database and directory.
    drop(t);
    let t = TestBed::with(sims(1).await, settings).await;
    let (s, got) = http.get(&format!("{}/v1/files/{id}", t.url)).await;
    assert_eq!(s, 200, "{got}");
    let content = http
        .0
        .get(format!("{}/v1/files/{id}/content", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(content.bytes().await.unwrap().as_ref(), data.as_slice());

    // Deleted: the row and the bytes.
    let resp = http
        .0
        .delete(format!("{}/v1/files/{id}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(stored(&files).is_empty());
    let (s, _) = http.get(&format!("{}/v1/files/{id}", t.url)).await;
    assert_eq!(s, 404);
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--files-url`: the gateway binary keeps uploads in S3-compatible object storage (an
/// S3 server of the test's own, credentials from the `AWS_*` environment), ingests them
/// into a vector store from there, serves their content, and deletes them.
#[cfg(unix)]
#[tokio::test]
async fn files_can_live_in_object_storage() {
    use futures_util::StreamExt;
    use switchyard_stateful::files::blobs::{AmazonS3Builder, BlobError, Blobs, ObjectBlobs};

    let s3 = tokio::task::spawn_blocking(switchyard_stateful::testing::S3Server::start)
        .await
        .unwrap();
    let files_url = s3.files_url("gateway/files");
    let sims = sims(1).await;
    let dir = std::env::temp_dir().join(format!("switchyard-files-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _gateway = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--log-level", "warn"])
            .args([
                "--database-url",
                &format!("sqlite://{}", dir.join("state.db").display()),
            ])
            .args(["--files-url", &files_url])
            .args(["--embedding-model", MODEL])
            .args(["--worker-urls", &sims.urls().join(",")])
            .args(["--port", &port.to_string()])
            .args(["--admin-port", &free_port().to_string()])
            .args(["--prometheus-port", &free_port().to_string()])
            .env("AWS_ACCESS_KEY_ID", "switchyard-test")
            .env("AWS_SECRET_ACCESS_KEY", "switchyard-secret")
            .current_dir(&dir)
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .expect("the binary starts"),
    );
    let http = Http::new();
    eventually("the gateway is ready", || async {
        matches!(http.0.get(format!("{url}/readiness")).send().await, Ok(r) if r.status() == 200)
    })
    .await;

    let text = b"Lighthouses warn ships away from rocky coasts at night.";
    let id = upload_file(&http, &url, "lights.txt", "assistants", text).await;
    // The bytes are in the bucket under the prefix, not on local disk.
    let bucket = ObjectBlobs::s3(
        &files_url,
        AmazonS3Builder::new()
            .with_access_key_id("switchyard-test")
            .with_secret_access_key("switchyard-secret"),
    )
    .unwrap();
    let mut stored = Vec::new();
    let mut stream = bucket.open(&id).await.expect("the upload is in the bucket");
    while let Some(chunk) = stream.next().await {
        stored.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(stored, text);
    assert!(!dir.join("switchyard-files").exists());
    let content = http
        .0
        .get(format!("{url}/v1/files/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(content.bytes().await.unwrap().as_ref(), text);

    // Ingested from the bucket and searchable.
    let (s, vs) = http
        .post(
            &url,
            "/v1/vector_stores",
            &serde_json::json!({"file_ids": [id]}),
        )
        .await;
    assert_eq!(s, 200, "{vs}");
    let store = format!("{url}/v1/vector_stores/{}", vs["id"].as_str().unwrap());
    eventually("ingestion to finish", || async {
        http.get(&store).await.1["status"] != "in_progress"
    })
    .await;
    let (_, got) = http.get(&store).await;
    assert_eq!(got["file_counts"]["completed"], 1, "{got}");
    let (s, found) = http
        .post(
            &format!("{store}/search"),
            "",
            &serde_json::json!({"query": "lighthouses and ships"}),
        )
        .await;
    assert_eq!(s, 200, "{found}");
    assert_eq!(found["data"][0]["file_id"], id.as_str(), "{found}");

    // Deleted: the object too.
    let resp = http
        .0
        .delete(format!("{url}/v1/files/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(matches!(bucket.open(&id).await, Err(BlobError::NotFound)));
    drop(_gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
