//! `POST /v1/audio/speech`: a short deterministic "voice" for the input text, as WAV
//! (16-bit mono PCM at 16 kHz) or the same samples without the header (`pcm`). Each
//! character is a few milliseconds of a sine whose pitch depends on the character and
//! the voice, whitespace is silence, so the same request always gets the same bytes.

use std::f64::consts::TAU;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::super::{ApiError, ServerState};
use super::audio::fnv1a64;
use super::wire::{SpeechRequest, parse};

/// Sample rate of the synthesized audio.
pub const SAMPLE_RATE: u32 = 16_000;
/// Longest input accepted, in characters (as OpenAI).
pub const MAX_INPUT_CHARS: usize = 4096;
/// Audio per input character at speed 1.
const MS_PER_CHAR: f64 = 10.0;
/// Peak amplitude of the tones (about -10 dBFS).
const AMPLITUDE: f64 = 0.3 * i16::MAX as f64;

pub async fn speech(
    State(st): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: SpeechRequest = parse(&body)?;
    let model = req
        .model
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("Field required: `model`", Some("model")))?;
    st.resolve_model(Some(model))?;
    let input = req
        .input
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("Field required: `input`", Some("input")))?;
    if input.is_empty() {
        return Err(ApiError::bad_request(
            "`input` must not be empty",
            Some("input"),
        ));
    }
    let chars = input.chars().count();
    if chars > MAX_INPUT_CHARS {
        return Err(ApiError::bad_request(
            format!("`input` is {chars} characters long; at most {MAX_INPUT_CHARS} are allowed"),
            Some("input"),
        ));
    }
    let voice = req
        .voice
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request("Field required: `voice`", Some("voice")))?;
    let wav = match req.response_format.as_deref() {
        None | Some("wav") => true,
        Some("pcm") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("response_format must be \"wav\" or \"pcm\", not {other:?}"),
                Some("response_format"),
            ));
        }
    };
    let speed = req.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return Err(ApiError::bad_request(
            format!("speed must be between 0.25 and 4.0, got {speed}"),
            Some("speed"),
        ));
    }

    let rank = st.pick_rank(&headers, None)?;
    st.requests[rank].fetch_add(1, Ordering::Relaxed);
    st.speech_requests.fetch_add(1, Ordering::Relaxed);

    let pcm = pcm_bytes(&samples(input, voice, speed));
    let (content_type, body) = if wav {
        ("audio/wav", wav_file(&pcm))
    } else {
        ("audio/pcm", pcm)
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The samples for `text`: per character `MS_PER_CHAR / speed` of a tone (silence for
/// whitespace), pitched by the character and shifted by the voice.
pub fn samples(text: &str, voice: &str, speed: f64) -> Vec<i16> {
    let per_char = ((f64::from(SAMPLE_RATE) * MS_PER_CHAR / 1000.0) / speed)
        .round()
        .max(1.0) as usize;
    let base = 110.0 + (fnv1a64(voice.as_bytes()) % 64) as f64 * 5.0;
    let mut out = Vec::with_capacity(per_char * text.chars().count());
    let mut phase = 0.0f64;
    for c in text.chars() {
        if c.is_whitespace() {
            out.extend(std::iter::repeat_n(0, per_char));
            continue;
        }
        let step = TAU * (base + f64::from(u32::from(c) % 48) * 20.0) / f64::from(SAMPLE_RATE);
        for _ in 0..per_char {
            out.push((phase.sin() * AMPLITUDE).round() as i16);
            // The phase carries over between characters, so tones join without clicks.
            phase = (phase + step) % TAU;
        }
    }
    out
}

/// Little-endian 16-bit samples.
fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A canonical 44-byte-header RIFF/WAVE file around 16-bit mono PCM data.
pub fn wav_file(pcm: &[u8]) -> Vec<u8> {
    let data_len = u32::try_from(pcm.len()).unwrap_or(u32::MAX);
    let channels: u16 = 1;
    let bits: u16 = 16;
    let block_align = channels * bits / 8;
    let mut out = Vec::with_capacity(44 + pcm.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36u32.saturating_add(data_len)).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
    out.extend_from_slice(&(SAMPLE_RATE * u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(pcm);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_and_depend_on_text_voice_and_speed() {
        let a = samples("hello world", "alloy", 1.0);
        assert_eq!(a.len(), 11 * 160);
        assert_eq!(a, samples("hello world", "alloy", 1.0));
        assert_ne!(a, samples("hello world!", "alloy", 1.0));
        assert_ne!(a, samples("hello world", "echo", 1.0));
        assert_eq!(samples("hello world", "alloy", 2.0).len(), 11 * 80);
        // The space is silence; the letters are not.
        assert!(a[5 * 160..6 * 160].iter().all(|&s| s == 0));
        assert!(a[..160].iter().any(|&s| s.unsigned_abs() > 1000));
        assert!(a.iter().all(|&s| f64::from(s).abs() <= AMPLITUDE + 1.0));
    }

    #[test]
    fn wav_header_is_canonical() {
        let pcm = pcm_bytes(&[1, -1, 300]);
        let wav = wav_file(&pcm);
        assert_eq!(wav.len(), 44 + 6);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[4..8].try_into().unwrap()), 36 + 6);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1);
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
        assert_eq!(u32::from_le_bytes(wav[28..32].try_into().unwrap()), 32_000);
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()), 6);
        assert_eq!(&wav[44..], &[1, 0, 0xff, 0xff, 0x2c, 0x01]);
    }
}
