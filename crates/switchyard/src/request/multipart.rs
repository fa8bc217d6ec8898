//! Just enough of `multipart/form-data` (RFC 7578) for the gateway to read an audio
//! upload's small fields (`model`, `stream`) and know where `model` sits, so selection
//! can replace it in place; the file part is located, never copied. Written here
//! because the crates that parse multipart stream the parts and do not give their
//! place in the body.

use std::ops::Range;

use memchr::memmem;

/// One part: its name, its file name if it is a file, and where its value is.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub value: Range<usize>,
}

/// The boundary of a `multipart/form-data` Content-Type; `None` for anything else.
pub fn boundary(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 70).then_some(v)
    })
}

/// A `name="value"` parameter of a Content-Disposition header.
fn param(header: &str, key: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Every part of `body`, in order; `Err` says what is malformed.
pub fn parts(body: &[u8], boundary: &str) -> Result<Vec<Part>, String> {
    let delimiter = format!("--{boundary}");
    let next_delimiter = format!("\r\n--{boundary}");
    let d = delimiter.as_bytes();
    let mut at = memmem::find(body, d).ok_or("no boundary in the body")? + d.len();
    let mut out = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        if !rest.starts_with(b"\r\n") {
            return Err("a boundary is not followed by CRLF".into());
        }
        let head_start = at + 2;
        let head_len =
            memmem::find(&body[head_start..], b"\r\n\r\n").ok_or("a part's headers do not end")?;
        let head = std::str::from_utf8(&body[head_start..head_start + head_len])
            .map_err(|_| "a part's headers are not UTF-8")?;
        let disposition = head
            .split("\r\n")
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then_some(v.trim())
            })
            .ok_or("a part has no Content-Disposition")?;
        let name = param(disposition, "name").ok_or("a part has no name")?;
        let value_start = head_start + head_len + 4;
        let value_len = memmem::find(&body[value_start..], next_delimiter.as_bytes())
            .ok_or("the body does not end with the closing boundary")?;
        out.push(Part {
            name,
            filename: param(disposition, "filename"),
            value: value_start..value_start + value_len,
        });
        at = value_start + value_len + next_delimiter.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--\x00\x01\r\n--XyZ--\r\n";

    #[test]
    fn finds_parts_and_their_places() {
        assert_eq!(boundary("multipart/form-data; boundary=XyZ"), Some("XyZ"));
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\""),
            Some("XyZ")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        let p = parts(BODY, "XyZ").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].name.as_str(), &BODY[p[0].value.clone()]),
            ("model", &b"whisper"[..])
        );
        assert_eq!(p[1].filename.as_deref(), Some("a.wav"));
        assert_eq!(&BODY[p[1].value.clone()], b"RIFF\r\n--\x00\x01");
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for cut in 0..BODY.len() {
            let _ = parts(&BODY[..cut], "XyZ");
        }
        assert!(parts(b"no boundary here", "XyZ").is_err());
        assert!(
            parts(
                b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--",
                "XyZ"
            )
            .is_err()
        );
        assert!(parts(b"--XyZ\r\nX: y\r\n\r\nx\r\n--XyZ--", "XyZ").is_err());
        assert!(parts(b"--XyZ garbage", "XyZ").is_err());
    }
}
