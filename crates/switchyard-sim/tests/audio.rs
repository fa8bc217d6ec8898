//! The audio routes over real HTTP: transcriptions (multipart uploads answered from the
//! bytes' length and hash) and speech (deterministic WAV/PCM), their 400/404 answers,
//! their counting in `/sim/stats`; and chat messages with image, audio and video parts.

use serde_json::{Value, json};
use switchyard_testkit::*;

const BOUNDARY: &str = "sim-test-boundary-7MA4YWxkTrZu0gW";

/// A multipart/form-data body: text fields, then optionally a `file` part.
fn form(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((filename, bytes)) = file {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: audio/wav\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

fn form_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// POSTs a form to the transcription route: status, Content-Type and body text.
async fn transcribe(http: &Http, base: &str, body: Vec<u8>) -> (u16, String, String) {
    let resp = http
        .0
        .post(format!("{base}/v1/audio/transcriptions"))
        .header("content-type", form_type())
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    (status, ct, resp.text().await.expect("body read"))
}

/// POSTs JSON to the speech route: status, Content-Type and body bytes.
async fn speak(http: &Http, base: &str, body: &Value) -> (u16, String, Vec<u8>) {
    let resp = http
        .0
        .post(format!("{base}/v1/audio/speech"))
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    (status, ct, resp.bytes().await.expect("body read").to_vec())
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The transcript the simulator gives for `bytes` (FNV-1a 64 computed here independently).
fn expected_text(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("transcript of {} bytes {h:016x}", bytes.len())
}

fn audio(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

async fn stats(http: &Http, base: &str) -> Value {
    http.get(&format!("{base}/sim/stats")).await.1
}

#[tokio::test]
async fn transcription_answers_json_text_and_verbose_json() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let bytes = audio(1, 64_000);
    let want = expected_text(&bytes);

    let (status, ct, body) = transcribe(
        &http,
        &url,
        form(&[("model", MODEL)], Some(("a.wav", &bytes))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"text": want})
    );

    let (status, ct, body) = transcribe(
        &http,
        &url,
        form(
            &[("model", MODEL), ("response_format", "text")],
            Some(("a.wav", &bytes)),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(ct.starts_with("text/plain"), "{ct}");
    assert_eq!(body, want);

    let (status, _, body) = transcribe(
        &http,
        &url,
        form(
            &[
                ("model", MODEL),
                ("response_format", "verbose_json"),
                ("temperature", "0.2"),
                ("prompt", "a hint"),
            ],
            Some(("a.wav", &bytes)),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"task": "transcribe", "language": "english", "duration": 2.0, "text": want, "segments": []})
    );

    let (_, _, body) = transcribe(
        &http,
        &url,
        form(
            &[
                ("model", MODEL),
                ("response_format", "verbose_json"),
                ("language", "fr"),
            ],
            Some(("a.wav", &bytes)),
        ),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["language"], "fr");

    let s = stats(&http, &url).await;
    assert_eq!(s["audio_requests"], 4, "{s}");
    assert_eq!(s["audio_requests_per_route"]["transcriptions"], 4, "{s}");
    assert_eq!(s["requests_per_rank"], json!([4]), "{s}");
    assert_eq!(sim.server(0).audio_requests(), 4);
}

#[tokio::test]
async fn transcription_is_deterministic_in_the_audio_bytes() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let text = |bytes: Vec<u8>, name: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (status, _, body) =
                transcribe(&http, &url, form(&[("model", MODEL)], Some((name, &bytes)))).await;
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<Value>(&body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    // Bytes that look like multipart syntax (CRLF, dashes, the boundary minus one byte).
    let tricky = [
        b"\r\n--".as_slice(),
        &BOUNDARY.as_bytes()[..BOUNDARY.len() - 1],
        b"\r\n\r\n\0\xff",
    ]
    .concat();
    let a = text(tricky.clone(), "a.wav").await;
    assert_eq!(a, expected_text(&tricky));
    // Same bytes under another filename: same text.
    assert_eq!(text(tricky.clone(), "b.mp3").await, a);
    // One byte changed, or one more byte: another text.
    let mut changed = tricky.clone();
    changed[3] ^= 1;
    assert_ne!(text(changed, "a.wav").await, a);
    let mut longer = tricky.clone();
    longer.push(0);
    assert_ne!(text(longer, "a.wav").await, a);
    let big = audio(9, 3 * 1024 * 1024);
    assert_eq!(text(big.clone(), "big.wav").await, expected_text(&big));
}

#[tokio::test]
async fn transcription_bad_requests_are_400() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let bytes = audio(2, 100);
    let path = "/v1/audio/transcriptions";

    // Not multipart, or no boundary: the message says which.
    for (ct, needle) in [
        (Some("application/json"), "multipart/form-data"),
        (None, "multipart/form-data"),
        (Some("multipart/form-data"), "boundary"),
        (Some("multipart/form-data; boundary="), "boundary"),
    ] {
        let (status, body) = http
            .post_raw(
                &url,
                path,
                ct,
                form(&[("model", MODEL)], Some(("a.wav", &bytes))),
            )
            .await;
        assert_eq!(status, 400, "{ct:?} -> {body}");
        assert_error(&body, 400);
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{ct:?} -> {msg}");
    }

    // Malformed multipart bodies.
    let good = form(&[("model", MODEL)], Some(("a.wav", &bytes)));
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"just some bytes".to_vec(),
        good[..good.len() - 10].to_vec(),
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n{MODEL}\r\n--{BOUNDARY}--").into_bytes(),
        format!("--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--").into_bytes(),
        format!("--{BOUNDARY}XX\r\n").into_bytes(),
    ];
    for raw in cases {
        let (status, body) = http
            .post_raw(&url, path, Some(&form_type()), raw.clone())
            .await;
        assert_eq!(status, 400, "{:?} -> {body}", String::from_utf8_lossy(&raw));
        assert_error(&body, 400);
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("malformed multipart"), "{msg}");
    }

    // Missing or bad fields: `param` names the field.
    let cases = [
        (form(&[("model", MODEL)], None), "file"),
        (
            form(&[("model", MODEL), ("file", "not a file")], None),
            "file",
        ),
        (form(&[("model", MODEL)], Some(("empty.wav", b""))), "file"),
        (form(&[], Some(("a.wav", &bytes))), "model"),
        (form(&[("model", "")], Some(("a.wav", &bytes))), "model"),
        (
            form(
                &[("model", MODEL), ("response_format", "srt")],
                Some(("a.wav", &bytes)),
            ),
            "response_format",
        ),
        (
            form(
                &[("model", MODEL), ("temperature", "hot")],
                Some(("a.wav", &bytes)),
            ),
            "temperature",
        ),
        (
            form(
                &[("model", MODEL), ("temperature", "1.5")],
                Some(("a.wav", &bytes)),
            ),
            "temperature",
        ),
    ];
    for (raw, param) in cases {
        let (status, _, text) = transcribe(&http, &url, raw).await;
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 400, "{param}: {body}");
        assert_error(&body, 400);
        assert_eq!(body["error"]["param"], param, "{body}");
    }

    // Nothing reached the counters.
    let s = stats(&http, &url).await;
    assert_eq!(s["audio_requests"], 0, "{s}");
    assert_eq!(sim.server(0).requests(), 0);
}

#[tokio::test]
async fn transcription_over_25_mib_is_413() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let big = vec![7u8; 25 * 1024 * 1024 + 1];
    let (status, _, text) = transcribe(
        &http,
        &sim.url(),
        form(&[("model", MODEL)], Some(("a.wav", &big))),
    )
    .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 413, "{body}");
    assert_error(&body, 413);
    assert_eq!(sim.server(0).audio_requests(), 0);
}

#[tokio::test]
async fn transcription_unknown_model_is_404() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let (status, _, text) = transcribe(
        &http,
        &sim.url(),
        form(&[("model", "whisper-9")], Some(("a.wav", b"abc"))),
    )
    .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 404, "{body}");
    assert_error(&body, 404);
    assert_eq!(body["error"]["type"], "NotFoundError");
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("whisper-9")
    );
    assert_eq!(sim.server(0).audio_requests(), 0);
}

/// Checks a canonical WAV file and returns its samples.
fn wav_samples(wav: &[u8]) -> Vec<i16> {
    let u32_at = |i: usize| u32::from_le_bytes(wav[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_le_bytes(wav[i..i + 2].try_into().unwrap());
    assert!(wav.len() > 44, "{} bytes", wav.len());
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(u32_at(4) as usize, wav.len() - 8, "RIFF size");
    assert_eq!(&wav[8..12], b"WAVE");
    assert_eq!(&wav[12..16], b"fmt ");
    assert_eq!(u32_at(16), 16, "fmt chunk size");
    assert_eq!(u16_at(20), 1, "PCM");
    assert_eq!(u16_at(22), 1, "mono");
    assert_eq!(u32_at(24), 16_000, "sample rate");
    assert_eq!(u32_at(28), 32_000, "byte rate");
    assert_eq!(u16_at(32), 2, "block align");
    assert_eq!(u16_at(34), 16, "bits per sample");
    assert_eq!(&wav[36..40], b"data");
    assert_eq!(u32_at(40) as usize, wav.len() - 44, "data length");
    wav[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[tokio::test]
async fn speech_is_a_valid_deterministic_wav() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let req = json!({"model": MODEL, "input": "Hello, world", "voice": "alloy"});
    let (status, ct, wav) = speak(&http, &url, &req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&wav));
    assert_eq!(ct, "audio/wav");
    let samples = wav_samples(&wav);
    // 10 ms at 16 kHz per character.
    assert_eq!(samples.len(), 12 * 160);
    assert!(
        samples.iter().any(|&s| s.unsigned_abs() > 1000),
        "not silent"
    );

    let (_, _, again) = speak(&http, &url, &req).await;
    assert_eq!(again, wav, "same request, same bytes");
    let explicit = json!({"model": MODEL, "input": "Hello, world", "voice": "alloy", "response_format": "wav", "speed": 1.0});
    assert_eq!(speak(&http, &url, &explicit).await.2, wav);
    let other = json!({"model": MODEL, "input": "Hello, world!", "voice": "alloy"});
    assert_ne!(speak(&http, &url, &other).await.2, wav);
    let other_voice = json!({"model": MODEL, "input": "Hello, world", "voice": "nova"});
    assert_ne!(speak(&http, &url, &other_voice).await.2, wav);
    let fast_speech =
        json!({"model": MODEL, "input": "Hello, world", "voice": "alloy", "speed": 2.0});
    assert_eq!(
        wav_samples(&speak(&http, &url, &fast_speech).await.2).len(),
        12 * 80
    );

    // The longest input allowed.
    let longest = json!({"model": MODEL, "input": "é".repeat(4096), "voice": "alloy"});
    let (status, _, long_wav) = speak(&http, &url, &longest).await;
    assert_eq!(status, 200);
    assert_eq!(wav_samples(&long_wav).len(), 4096 * 160);

    let s = stats(&http, &url).await;
    assert_eq!(s["audio_requests_per_route"]["speech"], 7, "{s}");
    assert_eq!(s["audio_requests"], 7, "{s}");
}

#[tokio::test]
async fn speech_pcm_is_the_wav_data_without_the_header() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let wav = speak(
        &http,
        &url,
        &json!({"model": MODEL, "input": "pcm please", "voice": "echo"}),
    )
    .await
    .2;
    let (status, ct, pcm) = speak(
        &http,
        &url,
        &json!({"model": MODEL, "input": "pcm please", "voice": "echo", "response_format": "pcm"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ct, "audio/pcm");
    assert_eq!(pcm, wav[44..]);
}

#[tokio::test]
async fn speech_bad_requests_are_400() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let path = "/v1/audio/speech";
    for raw in ["{not json", "", "[1]"] {
        let (status, body) = http
            .post_raw(&url, path, Some("application/json"), raw)
            .await;
        assert_eq!(status, 400, "{raw} -> {body}");
        assert_error(&body, 400);
    }
    let cases = [
        (json!({"input": "hi", "voice": "alloy"}), "model"),
        (json!({"model": MODEL, "voice": "alloy"}), "input"),
        (
            json!({"model": MODEL, "input": "", "voice": "alloy"}),
            "input",
        ),
        (
            json!({"model": MODEL, "input": 5, "voice": "alloy"}),
            "input",
        ),
        (
            json!({"model": MODEL, "input": "x".repeat(4097), "voice": "alloy"}),
            "input",
        ),
        (json!({"model": MODEL, "input": "hi"}), "voice"),
        (
            json!({"model": MODEL, "input": "hi", "voice": "alloy", "response_format": "mp3"}),
            "response_format",
        ),
        (
            json!({"model": MODEL, "input": "hi", "voice": "alloy", "speed": 10.0}),
            "speed",
        ),
    ];
    for (body, param) in cases {
        let (status, resp) = http.post(&url, path, &body).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_error(&resp, 400);
        assert_eq!(resp["error"]["param"], param, "{resp}");
    }
    assert_eq!(sim.server(0).audio_requests(), 0);
    assert_eq!(sim.server(0).requests(), 0);
}

#[tokio::test]
async fn speech_unknown_model_is_404() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let (status, body) = http
        .post(
            &sim.url(),
            "/v1/audio/speech",
            &json!({"model": "tts-9", "input": "hi", "voice": "alloy"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_error(&body, 404);
    assert!(body["error"]["message"].as_str().unwrap().contains("tts-9"));
}

#[tokio::test]
async fn chat_accepts_image_audio_and_video_parts() {
    let http = Http::new();
    let sim = sims_with(fast()).await;
    let url = sim.url();
    let text_only = json!({
        "model": MODEL,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe these."}]}],
    });
    let media = json!({
        "model": MODEL,
        "max_tokens": 3,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Describe these."},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(1000))}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}},
            ]},
        ],
    });
    let (status, base) = http.post(&url, "/v1/chat/completions", &text_only).await;
    assert_eq!(status, 200, "{base}");
    let (status, body) = http.post(&url, "/v1/chat/completions", &media).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    // Each media part adds a small fixed placeholder, not its (11 000-character) payload.
    let grown = body["usage"]["prompt_tokens"].as_u64().unwrap()
        - base["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(grown > 3 && grown < 40, "{grown}");
    let mut streamed = media.clone();
    streamed["stream"] = json!(true);
    let (status, events) = http.sse(&url, "/v1/chat/completions", &streamed).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}
