//! `POST /v1/audio/transcriptions`: OpenAI's multipart upload, answered at once with a
//! transcript derived from the audio bytes only (their length and FNV-1a hash), so a
//! gateway test can tell which upload an engine received and that it arrived intact.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde_json::json;

use super::super::{ApiError, ServerState};
use super::multipart::{self, MultipartError, Part};

/// Largest upload accepted, as OpenAI's 25 MB limit.
pub const MAX_UPLOAD_BYTES: usize = 25 * 1024 * 1024;

/// Most bytes of an oversized upload read and discarded before answering 413.
const MAX_DRAIN_BYTES: usize = 4 * 1024 * 1024;

/// Bytes per second of the audio the simulator pretends to hear (16 kHz, 16-bit mono).
const BYTES_PER_SECOND: f64 = 32_000.0;

/// FNV-1a, 64-bit: a stable fingerprint of the audio bytes (and of voices for speech).
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The transcript of an upload: `transcript of {n} bytes {fnv1a64 as 16 hex digits}`.
pub fn transcript(audio: &[u8]) -> String {
    format!(
        "transcript of {} bytes {:016x}",
        audio.len(),
        fnv1a64(audio)
    )
}

/// The transcription's `response_format`.
#[derive(Clone, Copy)]
enum Format {
    Json,
    Text,
    VerboseJson,
}

pub async fn transcriptions(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multipart::boundary(content_type).map_err(form_error)?;
    let body = read_upload(body).await?;
    let parts = multipart::parse(&body, &boundary).map_err(form_error)?;
    let form = Form(&parts);

    let model = form
        .text("model")?
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("Field required: `model`", Some("model")))?;
    let model = st.resolve_model(Some(model))?;
    let file = form
        .get("file")
        .ok_or_else(|| ApiError::bad_request("Field required: `file`", Some("file")))?;
    if file.filename.is_none() {
        return Err(ApiError::bad_request(
            "`file` must be a file upload (a part with a filename)",
            Some("file"),
        ));
    }
    if file.data.is_empty() {
        return Err(ApiError::bad_request(
            "The audio file is empty",
            Some("file"),
        ));
    }
    let format = match form.text("response_format")? {
        None | Some("json") => Format::Json,
        Some("text") => Format::Text,
        Some("verbose_json") => Format::VerboseJson,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!(
                    "response_format must be \"json\", \"text\" or \"verbose_json\", not {other:?}"
                ),
                Some("response_format"),
            ));
        }
    };
    if let Some(t) = form.text("temperature")? {
        let ok = t
            .trim()
            .parse::<f64>()
            .is_ok_and(|t| (0.0..=1.0).contains(&t));
        if !ok {
            return Err(ApiError::bad_request(
                format!("temperature must be a number between 0 and 1, not {t:?}"),
                Some("temperature"),
            ));
        }
    }
    let language = form.text("language")?.filter(|l| !l.is_empty());
    // `prompt` is accepted (it must be text) and does not change the transcript.
    form.text("prompt")?;

    let rank = st.pick_rank(&headers, None)?;
    st.requests[rank].fetch_add(1, Ordering::Relaxed);
    st.transcription_requests.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%model, bytes = file.data.len(), "transcription");

    let text = transcript(file.data);
    Ok(match format {
        Format::Json => Json(json!({ "text": text })).into_response(),
        Format::Text => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        Format::VerboseJson => Json(json!({
            "task": "transcribe",
            "language": language.unwrap_or("english"),
            "duration": file.data.len() as f64 / BYTES_PER_SECOND,
            "text": text,
            "segments": [],
        }))
        .into_response(),
    })
}

/// The parts of a form, looked up by name (the first part of a name wins).
struct Form<'p, 'a>(&'p [Part<'a>]);

impl<'p, 'a> Form<'p, 'a> {
    fn get(&self, name: &str) -> Option<&'p Part<'a>> {
        self.0.iter().find(|p| p.name == name)
    }

    /// A text field's value; 400 when it is not UTF-8.
    fn text(&self, name: &str) -> Result<Option<&'p str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(p) => std::str::from_utf8(p.data).map(Some).map_err(|_| {
                ApiError::bad_request(format!("`{name}` must be UTF-8 text"), Some(name))
            }),
        }
    }
}

fn form_error(e: MultipartError) -> ApiError {
    ApiError::bad_request(e.to_string(), None)
}

/// Reads the body whole; 413 when it is over [`MAX_UPLOAD_BYTES`]. An oversized body
/// is still read (up to [`MAX_DRAIN_BYTES`] more, then dropped) so the client, still
/// sending, receives the 413 instead of a connection reset.
async fn read_upload(mut body: Body) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::new();
    let mut over = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| ApiError::bad_request("The request body could not be read", None))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if over == 0 && buf.len() + data.len() <= MAX_UPLOAD_BYTES {
            buf.extend_from_slice(&data);
        } else {
            over += data.len();
            if over > MAX_DRAIN_BYTES {
                break;
            }
        }
    }
    if over > 0 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The upload exceeds {MAX_UPLOAD_BYTES} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn transcript_names_length_and_hash() {
        assert_eq!(transcript(b"a"), "transcript of 1 bytes af63dc4c8601ec8c");
        assert_ne!(transcript(b"ab"), transcript(b"ba"));
    }
}
