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
