//! Parsing: a stored file's bytes to the plain text that is chunked and searched, by
//! the file's extension — PDF (its text layer, page by page), HTML (to text, without
//! markup, scripts or styles), and everything else supported (text, Markdown, JSON,
//! CSV, source code) as the UTF-8 text it is.

/// Why a file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the PDF could not be read: {0}")]
    Pdf(String),
    #[error("the file is not UTF-8 text")]
    NotUtf8,
    #[error("no text found in the file")]
    Empty,
}

/// The text of a document. PDF parsing runs the parser under `catch_unwind`: a
/// malformed PDF that makes it panic is an error, not a crash (call it from a
/// blocking thread: parsing is CPU work).
pub fn to_text(extension: &str, bytes: &[u8]) -> Result<String, ParseError> {
    let text = match extension {
        "pdf" => pdf(bytes)?,
        "html" | "htm" => html(bytes)?,
        _ => std::str::from_utf8(bytes)
            .map_err(|_| ParseError::NotUtf8)?
            .to_string(),
    };
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(text)
}

fn pdf(bytes: &[u8]) -> Result<String, ParseError> {
    let bytes = bytes.to_vec();
    match std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem_by_pages(&bytes)) {
        Ok(Ok(pages)) => Ok(pages.join("\n\n")),
        Ok(Err(e)) => Err(ParseError::Pdf(e.to_string())),
        Err(_) => Err(ParseError::Pdf("the parser failed on its structure".into())),
    }
}

fn html(bytes: &[u8]) -> Result<String, ParseError> {
    std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    html2text::config::plain()
        .string_from_read(bytes, 10_000)
        .map_err(|_| ParseError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_loses_its_markup() {
        let t = to_text(
            "html",
            b"<html><head><style>p{color:red}</style><script>var x=1;</script></head>\
              <body><h1>Title</h1><p>The <b>gateway</b> routes.</p></body></html>",
        )
        .unwrap();
        assert!(t.contains("Title") && t.contains("gateway") && t.contains("routes"));
        assert!(!t.contains("<b>") && !t.contains("color:red") && !t.contains("var x"));
    }

    #[test]
    fn text_types_are_utf8_and_not_empty() {
        assert_eq!(to_text("md", "# Héllo".as_bytes()).unwrap(), "# Héllo");
        assert_eq!(to_text("txt", b"caf\xe9"), Err(ParseError::NotUtf8));
        assert_eq!(to_text("txt", b"  \n "), Err(ParseError::Empty));
    }

    #[test]
    fn a_pdf_gives_its_text() {
        let pdf = crate::testing::tiny_pdf("The gateway keeps files (and reads PDFs).");
        let t = to_text("pdf", &pdf).unwrap();
        assert!(t.contains("gateway keeps files"), "{t:?}");
    }

    #[test]
    fn a_corrupt_pdf_is_an_error() {
        for junk in [
            &b"%PDF-1.4\n1 0 obj << /Type /Catalog"[..],
            b"not a pdf at all",
            b"",
        ] {
            assert!(matches!(
                to_text("pdf", junk),
                Err(ParseError::Pdf(_) | ParseError::Empty)
            ));
        }
    }
}
