//! A small `multipart/form-data` reader (RFC 7578 / RFC 2046) for the audio upload
//! route: it splits a buffered body into named parts (fields and files), is strict
//! about the structure, and returns an error instead of panicking on any input.

use std::fmt;

/// Most parts one form may have (a transcription form has about six).
const MAX_PARTS: usize = 64;
/// Most bytes in one part's header block.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY_LEN: usize = 70;

/// One part of a form: a field (no filename) or a file.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// Why a body is not a readable form.
#[derive(Debug, PartialEq, Eq)]
pub enum MultipartError {
    /// The Content-Type is absent or not `multipart/form-data`.
    NotMultipart,
    /// The Content-Type has no (or an empty) `boundary` parameter.
    MissingBoundary,
    /// The body does not follow the multipart structure.
    Malformed(String),
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultipartError::NotMultipart => f.write_str("Content-Type must be multipart/form-data"),
            MultipartError::MissingBoundary => {
                f.write_str("the multipart/form-data Content-Type has no boundary")
            }
            MultipartError::Malformed(why) => write!(f, "malformed multipart body: {why}"),
        }
    }
}

fn malformed(why: impl Into<String>) -> MultipartError {
    MultipartError::Malformed(why.into())
}

/// The boundary of a `multipart/form-data; boundary=…` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut items = content_type.split(';');
    let mime = items.next().unwrap_or_default().trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }
    let value = items
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim())
        .ok_or(MultipartError::MissingBoundary)?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted
            .strip_suffix('"')
            .ok_or_else(|| malformed("the boundary's closing quote is missing"))?,
        None => value,
    };
    if value.is_empty() {
        return Err(MultipartError::MissingBoundary);
    }
    if value.len() > MAX_BOUNDARY_LEN {
        return Err(malformed(format!(
            "the boundary is longer than {MAX_BOUNDARY_LEN} characters"
        )));
    }
    Ok(value.to_string())
}

/// Splits `body` into its parts. The preamble and epilogue are ignored; the closing
/// delimiter (`--boundary--`) is required.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, MultipartError> {
    let delimiter = [b"--", boundary.as_bytes()].concat();
    // Every delimiter but the first is preceded by the CRLF that ends the part before.
    let next_delimiter = [b"\r\n", delimiter.as_slice()].concat();
    let mut pos = if body.starts_with(&delimiter) {
        delimiter.len()
    } else {
        find(body, &next_delimiter)
            .ok_or_else(|| malformed("the boundary does not occur in the body"))?
            + next_delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding (spaces and tabs) may follow a delimiter before its CRLF.
        let padding = rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        let rest = &rest[padding..];
        if rest.is_empty() {
            return Err(malformed("the closing boundary is missing"));
        }
        if !rest.starts_with(b"\r\n") {
            return Err(malformed("a boundary is not followed by CRLF"));
        }
        if parts.len() == MAX_PARTS {
            return Err(malformed(format!("more than {MAX_PARTS} parts")));
        }
        let start = pos + padding + 2;
        let (headers, content_start) = split_headers(body, start)?;
        let len = find(&body[content_start..], &next_delimiter).ok_or_else(|| {
            malformed(format!(
                "part {} is not terminated by a boundary",
                parts.len()
            ))
        })?;
        let mut part = part_headers(headers, parts.len())?;
        part.data = &body[content_start..content_start + len];
        parts.push(part);
        pos = content_start + len + next_delimiter.len();
    }
}

/// The header block of the part starting at `start`, and where its content starts.
fn split_headers(body: &[u8], start: usize) -> Result<(&[u8], usize), MultipartError> {
    let rest = &body[start..];
    if rest.starts_with(b"\r\n") {
        return Ok((&[], start + 2));
    }
    let window = &rest[..rest.len().min(MAX_HEADER_BYTES + 4)];
    match find(window, b"\r\n\r\n") {
        Some(end) => Ok((&rest[..end], start + end + 4)),
        None if rest.len() > MAX_HEADER_BYTES => Err(malformed(format!(
            "a part's headers exceed {MAX_HEADER_BYTES} bytes"
        ))),
        None => Err(malformed("a part's headers do not end with an empty line")),
    }
}

/// Reads a part's headers: `Content-Disposition: form-data; name=…` is required.
fn part_headers(raw: &[u8], index: usize) -> Result<Part<'static>, MultipartError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| malformed(format!("part {index} has headers that are not UTF-8")))?;
    let mut disposition = None;
    let mut content_type = None;
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("part {index} has a header line without ':'")))?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-disposition") {
            disposition = Some(value.trim());
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    let disposition =
        disposition.ok_or_else(|| malformed(format!("part {index} has no Content-Disposition")))?;
    let (kind, params) = disposition_params(disposition).ok_or_else(|| {
        malformed(format!(
            "part {index} has an unreadable Content-Disposition"
        ))
    })?;
    if !kind.eq_ignore_ascii_case("form-data") {
        return Err(malformed(format!(
            "part {index} is not form-data (Content-Disposition: {kind})"
        )));
    }
    let param = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let name = param("name").ok_or_else(|| {
        malformed(format!(
            "part {index} has no name in its Content-Disposition"
        ))
    })?;
    Ok(Part {
        name,
        filename: param("filename"),
        content_type,
        data: &[],
    })
}

/// `form-data; name="a"; filename="b;c.wav"` → (`form-data`, [(name, a), (filename, b;c.wav)]).
/// Values are tokens or quoted strings (with `\` escapes); `None` when unreadable.
fn disposition_params(value: &str) -> Option<(&str, Vec<(String, String)>)> {
    let (kind, mut rest) = match value.find(';') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, ""),
    };
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Some((kind.trim(), params));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let val;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => out.push(chars.next()?.1),
                    (_, c) => out.push(c),
                }
            };
            val = out;
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            val = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        match rest.strip_prefix(';') {
            Some(r) => rest = r,
            None if rest.is_empty() => {}
            None => return None,
        }
        params.push((key, val));
    }
}

/// First index of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        // Jump to the next occurrence of the first byte, then compare the rest.
        let skip = haystack[i..=last_start].iter().position(|&b| b == first)?;
        i += skip;
        if &haystack[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "XyZ-boundary";

    fn form() -> Vec<u8> {
        let pieces: [&[u8]; 10] = [
            b"preamble to ignore\r\n",
            b"--XyZ-boundary\r\n",
            b"Content-Disposition: form-data; name=\"model\"\r\n\r\n",
            b"whisper-1\r\n",
            b"--XyZ-boundary  \r\n",
            b"content-disposition: form-data; name=\"file\"; filename=\"a;b \\\"c\\\".wav\"\r\n",
            b"Content-Type: audio/wav\r\n\r\n",
            b"RIFF\r\n--XyZ-boundar\0\xff",
            b"\r\n--XyZ-boundary--\r\n",
            b"epilogue",
        ];
        pieces.concat()
    }

    #[test]
    fn boundary_is_read_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("Multipart/Form-Data;charset=utf-8; BOUNDARY=\"a b:c\"").unwrap(),
            "a b:c"
        );
        assert_eq!(
            boundary("application/json"),
            Err(MultipartError::NotMultipart)
        );
        assert_eq!(boundary(""), Err(MultipartError::NotMultipart));
        assert_eq!(
            boundary("multipart/form-data"),
            Err(MultipartError::MissingBoundary)
        );
        assert_eq!(
            boundary("multipart/form-data; boundary="),
            Err(MultipartError::MissingBoundary)
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"\""),
            Err(MultipartError::MissingBoundary)
        );
        assert!(matches!(
            boundary("multipart/form-data; boundary=\"abc"),
            Err(MultipartError::Malformed(_))
        ));
        assert!(matches!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            Err(MultipartError::Malformed(_))
        ));
    }

    #[test]
    fn fields_and_files_are_split_out() {
        let body = form();
        let parts = parse(&body, B).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "model");
        assert_eq!(parts[0].filename, None);
        assert_eq!(parts[0].data, b"whisper-1");
        assert_eq!(parts[1].name, "file");
        assert_eq!(parts[1].filename.as_deref(), Some("a;b \"c\".wav"));
        assert_eq!(parts[1].content_type.as_deref(), Some("audio/wav"));
        // Content that looks almost like a boundary, NULs and invalid UTF-8 are kept.
        assert_eq!(parts[1].data, b"RIFF\r\n--XyZ-boundar\0\xff".as_slice());
    }

    #[test]
    fn empty_form_and_empty_parts() {
        assert_eq!(parse(b"--b--\r\n", "b").unwrap(), vec![]);
        let body = b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n\r\n--b--";
        let parts = parse(body, "b").unwrap();
        assert_eq!(parts[0].name, "x");
        assert!(parts[0].data.is_empty());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"no boundary here",
            b"--b",
            b"--b\r\n",
            b"--bX\r\n",
            b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nvalue",
            b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nvalue\r\n--b",
            b"--b\r\nContent-Disposition: form-data; name=x\r\nvalue\r\n--b--",
            b"--b\r\nno colon\r\n\r\nv\r\n--b--",
            b"--b\r\nContent-Type: text/plain\r\n\r\nv\r\n--b--",
            b"--b\r\nContent-Disposition: attachment; name=x\r\n\r\nv\r\n--b--",
            b"--b\r\nContent-Disposition: form-data; filename=x\r\n\r\nv\r\n--b--",
            b"--b\r\nContent-Disposition: form-data; name=\"x\r\n\r\nv\r\n--b--",
            b"--b\r\nContent-Disposition: form-data; name=\"x\" junk\r\n\r\nv\r\n--b--",
            b"--b\r\nContent-Disposition: form-data; name\r\n\r\nv\r\n--b--",
            b"--b\r\nContent-Disposition: form-data; name=\xff\r\n\r\nv\r\n--b--",
        ];
        for body in cases {
            let got = parse(body, "b");
            assert!(
                matches!(got, Err(MultipartError::Malformed(_))),
                "{:?} -> {got:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn limits_are_enforced() {
        let part = "--b\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n";
        let many = format!("{}--b--", part.repeat(MAX_PARTS + 1));
        assert!(parse(many.as_bytes(), "b").is_err());
        let ok = format!("{}--b--", part.repeat(MAX_PARTS));
        assert_eq!(parse(ok.as_bytes(), "b").unwrap().len(), MAX_PARTS);
        let huge = format!(
            "--b\r\nX-Pad: {}\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n--b--",
            "p".repeat(MAX_HEADER_BYTES)
        );
        assert!(parse(huge.as_bytes(), "b").is_err());
    }

    #[test]
    fn truncated_and_mutated_bodies_never_panic() {
        let body = form();
        for n in 0..=body.len() {
            let _ = parse(&body[..n], B);
            let _ = parse(&body[n..], B);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let mut b = body.clone();
            for _ in 0..rng.usize(1..6) {
                let i = rng.usize(..b.len());
                match rng.u8(..3) {
                    0 => b[i] = rng.u8(..),
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, *rng.choice(b"\r\n-\";=\\".iter()).unwrap()),
                }
            }
            let _ = parse(&b, B);
        }
        for _ in 0..2000 {
            let len = rng.usize(..64);
            let b: Vec<u8> = (0..len)
                .map(|_| *rng.choice(b"-b\r\n:;=\"x".iter()).unwrap())
                .collect();
            let _ = parse(&b, "b");
        }
    }

    #[test]
    fn find_locates_needles() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"abc", b""), None);
        assert_eq!(find(b"aaab", b"ab"), Some(2));
        assert_eq!(find(b"xyz", b"z"), Some(2));
    }
}
