//! Turning a process's raw output into the text chunks that [`crate::Output`] messages carry.
//!
//! Frames are JSON text, so output travels as UTF-8. A script may print anything, so the agent
//! converts its bytes *lossily*: each invalid sequence becomes U+FFFD (`�`), and so does a NUL
//! byte (the control plane stores text; `\0` would end it early in some tools). A valid character
//! whose bytes were split between two pipe reads is kept whole: [`LossyUtf8`] holds back up to
//! three bytes of an incomplete sequence until the next read. The pipeline on the agent, per
//! stream of a run, is
//!
//! ```text
//! pipe read (bytes) -> LossyUtf8::push -> Masker::push -> split_output -> Output { seq, data }
//! ```
//!
//! and at end of stream `LossyUtf8::finish` then `Masker::finish` release what they held back.
//! Conversion and masking can make text longer than what was read (a NUL byte becomes three
//! bytes; a one-byte secret becomes `***`), so [`split_output`] cuts the result into pieces no
//! larger than [`crate::limits::MAX_OUTPUT_DATA`], on character boundaries.

/// Which stream of the process a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A lossy, streaming UTF-8 decoder (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct LossyUtf8 {
    /// The start of a character whose remaining bytes have not been read yet (at most 3 bytes).
    pending: Vec<u8>,
}

impl LossyUtf8 {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode the next bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(bytes);
        let mut out = String::with_capacity(input.len());
        let mut rest = &input[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    push_text(&mut out, s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    push_text(&mut out, std::str::from_utf8(good).expect("valid up to here"));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            // An incomplete character at the end: wait for its other bytes.
                            self.pending = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// End of the stream: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if std::mem::take(&mut self.pending).is_empty() {
            String::new()
        } else {
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

fn push_text(out: &mut String, s: &str) {
    for c in s.chars() {
        out.push(if c == '\0' { char::REPLACEMENT_CHARACTER } else { c });
    }
}

/// Cut `text` into pieces of at most [`crate::limits::MAX_OUTPUT_DATA`] bytes, on character
/// boundaries. Empty text gives no pieces.
pub fn split_output(text: &str) -> impl Iterator<Item = &str> {
    split_at_most(text, crate::limits::MAX_OUTPUT_DATA)
}

fn split_at_most(mut text: &str, max: usize) -> impl Iterator<Item = &str> {
    std::iter::from_fn(move || {
        if text.is_empty() {
            return None;
        }
        let mut cut = text.len().min(max);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut == 0 {
            // `max` is smaller than the first character: the character goes alone.
            cut = text.chars().next().map_or(text.len(), char::len_utf8);
        }
        let (piece, rest) = text.split_at(cut);
        text = rest;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_OUTPUT_DATA;

    fn decode(reads: &[&[u8]]) -> String {
        let mut d = LossyUtf8::new();
        let mut out: String = reads.iter().map(|r| d.push(r)).collect();
        out.push_str(&d.finish());
        out
    }

    #[test]
    fn valid_text_passes_through() {
        assert_eq!(decode(&[b"hello ", "wörld ✓\n".as_bytes()]), "hello wörld ✓\n");
    }

    #[test]
    fn a_character_split_between_reads_is_kept_whole() {
        let bytes = "é✓😀".as_bytes();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decode(&[a, b]), "é✓😀", "cut at {cut}");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&one_by_one), "é✓😀");
    }

    #[test]
    fn binary_and_nul_become_replacement_characters() {
        assert_eq!(decode(&[b"a\xffb\x00c\xc3"]), "a\u{fffd}b\u{fffd}c\u{fffd}");
        assert_eq!(decode(&[b"\xe2\x9c", b"x"]), "\u{fffd}x");
        assert_eq!(decode(&[b"\xf0\x9f\x98", b""]), "\u{fffd}");
        let garbage: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let out = decode(&[&garbage]);
        assert!(!out.contains('\0'));
    }

    #[test]
    fn split_respects_the_limit_and_characters() {
        assert_eq!(split_output("").count(), 0);
        let text = "é".repeat(MAX_OUTPUT_DATA);
        let pieces: Vec<&str> = split_output(&text).collect();
        assert!(pieces.iter().all(|p| p.len() <= MAX_OUTPUT_DATA && !p.is_empty()));
        assert_eq!(pieces.concat(), text);
        assert_eq!(split_at_most("ab✓c", 3).collect::<Vec<_>>(), ["ab", "✓", "c"]);
    }
}
