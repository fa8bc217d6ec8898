//! Prompt block hashing: the prompt is cut into fixed-size blocks and each block's hash
//! covers the whole prefix up to it (chained), so equal prompt prefixes give equal
//! leading hashes. The request parser streams the prompt into a [`BlockHasher`].

use crate::request::PromptSink;

/// Cuts the bytes fed to it into blocks of `size` and hashes them, chained.
pub struct BlockHasher {
    size: usize,
    buf: Vec<u8>,
    parent: u64,
    out: Vec<u64>,
}

impl BlockHasher {
    /// A hasher for blocks of `size` bytes; 0 hashes nothing.
    pub fn new(size: usize) -> Self {
        BlockHasher {
            size,
            buf: Vec::with_capacity(size),
            parent: 0x243F_6A88_85A3_08D3,
            out: Vec::new(),
        }
    }

    /// The hashes of every full block.
    pub fn finish(self) -> Vec<u64> {
        self.out
    }
}

impl PromptSink for BlockHasher {
    fn feed(&mut self, mut bytes: &[u8]) {
        if self.size == 0 {
            return;
        }
        while !bytes.is_empty() {
            let take = (self.size - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == self.size {
                self.parent = hash_block(self.parent, &self.buf);
                self.out.push(self.parent);
                self.buf.clear();
            }
        }
    }
}

/// Chained hash of one block (FxHash-style over 8-byte words, with a final mix).
pub fn hash_block(parent: u64, block: &[u8]) -> u64 {
    let mut h = parent;
    let mut chunks = block.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{RequestView, Route, SessionHeaders};

    fn blocks(body: &str) -> Vec<u64> {
        let mut h = BlockHasher::new(16);
        RequestView::parse(
            Route::Chat,
            &http::HeaderMap::new(),
            body.as_bytes(),
            &SessionHeaders::default(),
            &mut h,
        )
        .unwrap();
        h.finish()
    }

    #[test]
    fn shared_prefixes_share_leading_blocks() {
        let sys = "s".repeat(200);
        let a = blocks(&format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"one"}}]}}"#
        ));
        let b = blocks(&format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{sys}"}},{{"role":"user","content":"two!"}}]}}"#
        ));
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        // "system\n" + 200 + "\x1e" + "user\n" = 213 shared bytes: 13 full blocks of 16.
        assert_eq!(common, 13);
        assert!(a.len() >= 13);
    }

    #[test]
    fn blocks_do_not_depend_on_how_the_bytes_arrive() {
        let mut one = BlockHasher::new(4);
        one.feed(b"abcdefghij");
        let mut many = BlockHasher::new(4);
        for c in b"abcdefghij".chunks(3) {
            many.feed(c);
        }
        assert_eq!(one.finish(), many.finish());
        let mut none = BlockHasher::new(0);
        none.feed(b"abcdefgh");
        assert!(none.finish().is_empty());
    }
}
