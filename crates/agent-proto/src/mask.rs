//! Masking secret values in streamed output, on both sides of the connection.
//!
//! The agent masks a run's output before it leaves the instance (secrets never reach the control
//! plane's store or its live followers); the control plane masks again on receipt with the same
//! values (defence in depth against an old or broken agent). Both use [`Masker`].
//!
//! Output arrives in chunks cut wherever a pipe read happened to end, so a secret can be split
//! across two chunks: `...pass` then `word...`. The masker therefore keeps a *carry-over*: when
//! the unprocessed end of the text is a proper prefix of some secret, it is held back (never more
//! than the longest secret minus one byte) until the next chunk decides it, and [`Masker::finish`]
//! releases it, masked, at the end of the stream. One masker per stream (stdout, stderr) per run.
//!
//! The rule at each position is *longest secret first*: a secret that contains another
//! (`password`, `pass`) is masked whole. A position is decided only when the text after it is long
//! enough to compare with every secret that could start there, so the result is the same however
//! the stream is cut into chunks — the property tests check exactly that, and that no secret
//! survives. Every non-empty secret is masked wherever it occurs, even a very short one (it makes
//! the output noisier, never leakier); empty secrets are ignored.
//!
//! # Encoded forms
//!
//! `echo "$X" | base64` must not print a secret in another dress, so each secret also brings
//! the forms common tools print it in ([`encoded_forms`]), masked like the secret itself:
//!
//! - lowercase and uppercase hex as one unbroken run (`printf %x`, `xxd -p` for secrets of up to
//!   30 bytes, `od -An -tx1 | tr -d ' \n'`); `od`'s own spaced output and `xxd -p`'s 60-column
//!   lines of longer secrets are not masked;
//! - percent-encoding, RFC 3986 (`curl --data-urlencode`, unreserved characters kept) and
//!   `application/x-www-form-urlencoded` (space as `+`), each with upper- and lowercase hex
//!   digits;
//! - base64, standard and URL-safe alphabets. A secret inside a longer byte stream starts at one
//!   of three alignments to base64's 3-byte groups (`echo "$X" | base64` is X followed by a
//!   newline; `echo "user:$X" | base64` shifts it), and the characters at its edges mix in bits
//!   of its neighbours. For each alignment the *stable middle* — the characters made only of
//!   the secret's bits — is masked, so padding and neighbours do not matter; the up to two
//!   characters at each edge (a few bits of the secret) stay visible.
//!
//! An encoded form shorter than [`ENCODED_MIN`] characters is not masked (it would hide
//! ordinary words all over the output): every form of a secret of 6 bytes or more is masked.
//!
//! Not masked, by design: line-wrapped encodings (`base64` wraps at 76 columns, so a secret over
//! about 54 bytes is cut by a newline; `base64 -w0` is not), other encodings and any
//! transformation a script chooses (xor, rot13, compression, encryption, reversing, printing a
//! secret in pieces). Masking protects against accidents. It is not a boundary: a script that
//! receives a secret can always get it out. The real control is who may make a script receive
//! it — the credential's scope (which deployments, which role may attach it) on the control
//! plane.

use std::fmt;

use crate::ScriptRun;

/// What a masked secret is replaced with.
pub const MASK: &str = "***";

/// The shortest encoded form (see the module docs) that is masked.
pub const ENCODED_MIN: usize = 6;

/// The encoded forms of `secret` that are masked with it: hex, percent-encodings, and the
/// stable middle of each base64 alignment (see the module docs). Each is at least
/// [`ENCODED_MIN`] characters and differs from the secret; duplicates are possible.
pub fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut out = vec![hex::encode(bytes), hex::encode_upper(bytes)];
    for upper in [true, false] {
        out.push(percent(
            bytes,
            |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b),
            false,
            upper,
        ));
        out.push(percent(
            bytes,
            |b| b.is_ascii_alphanumeric() || b"*-._".contains(&b),
            true,
            upper,
        ));
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for align in 0..3usize {
            let mut stream = vec![0u8; align];
            stream.extend_from_slice(bytes);
            let enc = engine.encode(&stream);
            // Character i holds bits 6i..6i+6 of the stream: it is the secret's alone when it
            // starts at or after the secret (bit 8·align) and ends within it (bit 8·len).
            let first = (8 * align).div_ceil(6);
            let end = 8 * stream.len() / 6;
            if first < end {
                out.push(enc[first..end].to_string());
            }
        }
    }
    out.retain(|f| f.len() >= ENCODED_MIN && f != secret);
    out
}

/// Percent-encode `bytes`, keeping those `keep` accepts; `plus` writes a space as `+`
/// (form encoding).
fn percent(bytes: &[u8], keep: impl Fn(u8) -> bool, plus: bool, upper: bool) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if keep(b) {
            s.push(char::from(b));
        } else if plus && b == b' ' {
            s.push('+');
        } else if upper {
            s.push_str(&format!("%{b:02X}"));
        } else {
            s.push_str(&format!("%{b:02x}"));
        }
    }
    s
}

/// Replaces secret values (and their encoded forms) in a stream of text chunks. `Debug` shows
/// only how many secrets it holds.
#[derive(Clone)]
pub struct Masker {
    /// Distinct non-empty patterns (the secrets and their encoded forms), longest first.
    secrets: Vec<String>,
    /// `first[b]`: the patterns that start with byte `b`, longest first (a quick skip for
    /// ordinary text, and fewer comparisons where one may start).
    first: Vec<Vec<usize>>,
    /// Undecided text held back from the previous chunk: a proper prefix of some secret.
    carry: String,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.secrets.len())
            .field("carry_bytes", &self.carry.len())
            .finish()
    }
}

impl Default for Masker {
    /// A masker with nothing to mask.
    fn default() -> Self {
        Self::new([])
    }
}

impl Masker {
    /// A masker for these values and their encoded forms; empty ones are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut list: Vec<String> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .flat_map(|s| std::iter::once(s.to_string()).chain(encoded_forms(s)))
            .collect();
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
        let mut first = vec![vec![]; 256];
        for (i, s) in list.iter().enumerate() {
            first[usize::from(s.as_bytes()[0])].push(i);
        }
        Self {
            secrets: list,
            first,
            carry: String::new(),
        }
    }

    /// A masker for the secret values in a run's environment.
    pub fn for_run(run: &ScriptRun) -> Self {
        Self::new(run.secrets())
    }

    /// Does this masker have anything to mask?
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Mask one chunk of a stream. Returns the text that is safe to emit now; text that may be
    /// the beginning of a secret is held back until the next chunk or [`Masker::finish`].
    pub fn push(&mut self, chunk: &str) -> String {
        if self.secrets.is_empty() {
            return chunk.to_string();
        }
        let mut text = std::mem::take(&mut self.carry);
        text.push_str(chunk);
        let (out, rest) = self.scan(&text, false);
        self.carry = text[rest..].to_string();
        out
    }

    /// End of the stream: release the held-back text, masked.
    pub fn finish(&mut self) -> String {
        let text = std::mem::take(&mut self.carry);
        self.scan(&text, true).0
    }

    /// Mask a whole text at once (an error message, a stored output), leaving the stream state
    /// as it was.
    pub fn mask(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        self.scan(text, true).0
    }

    /// Mask `text`; returns the masked output and the byte offset where undecided text begins
    /// (`text.len()` when `last`, or when everything was decided).
    fn scan(&self, text: &str, last: bool) -> (String, usize) {
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let candidates = &self.first[usize::from(rest.as_bytes()[0])];
            if !candidates.is_empty() {
                if !last && self.undecided(candidates, rest) {
                    return (out, i);
                }
                if let Some(s) = candidates
                    .iter()
                    .map(|&k| &self.secrets[k])
                    .find(|s| rest.starts_with(s.as_str()))
                {
                    out.push_str(MASK);
                    i += s.len();
                    continue;
                }
            }
            let c = rest
                .chars()
                .next()
                .expect("i is on a character boundary before the end");
            out.push(c);
            i += c.len_utf8();
        }
        (out, text.len())
    }

    /// Could a secret longer than `rest` start here? Then more input is needed to decide.
    fn undecided(&self, candidates: &[usize], rest: &str) -> bool {
        candidates
            .iter()
            .map(|&k| &self.secrets[k])
            .any(|s| s.len() > rest.len() && s.as_bytes().starts_with(rest.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(m: &mut Masker, chunks: &[&str]) -> String {
        let mut out: String = chunks.iter().map(|c| m.push(c)).collect();
        out.push_str(&m.finish());
        out
    }

    #[test]
    fn masks_every_occurrence() {
        let m = Masker::new(["p4ssw0rd"]);
        assert_eq!(m.mask("p4ssw0rd and p4ssw0rd again"), "*** and *** again");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked() {
        let mut m = Masker::new(["p4ssw0rd"]);
        assert_eq!(m.push("login: p4ss"), "login: ");
        assert_eq!(m.push("w0rd ok\n"), "*** ok\n");
        assert_eq!(m.finish(), "");
        let mut m = Masker::new(["p4ssw0rd"]);
        assert_eq!(stream(&mut m, &["p", "4", "s", "s", "w", "0", "r", "d"]), "***");
    }

    #[test]
    fn a_held_back_prefix_that_was_not_a_secret_comes_out() {
        let mut m = Masker::new(["p4ssw0rd"]);
        assert_eq!(m.push("p4ss"), "");
        assert_eq!(m.push("port"), "p4ssport");
        assert_eq!(m.push("tail p4ssw"), "tail ");
        assert_eq!(m.finish(), "p4ssw");
    }

    #[test]
    fn secrets_that_contain_each_other_are_masked_whole() {
        let m = Masker::new(["pass", "password", "word"]);
        assert_eq!(m.mask("password pass word swordfish"), "*** *** *** s***fish");
        let mut m = Masker::new(["pass", "password"]);
        // `pass` alone cannot be decided until we know whether `word` follows.
        assert_eq!(m.push("my pass"), "my ");
        assert_eq!(m.push("wor"), "");
        assert_eq!(m.push("d!"), "***!");
        let mut m = Masker::new(["pass", "password"]);
        assert_eq!(stream(&mut m, &["pass", "wo"]), "***wo");
    }

    #[test]
    fn overlapping_secrets_leave_neither() {
        let m = Masker::new(["abc", "bcd"]);
        let out = m.mask("xabcdx");
        assert_eq!(out, "x***dx");
        assert!(!out.contains("abc") && !out.contains("bcd"));
        // Inside a held-back prefix of a long secret, a short one is still masked at the end.
        let mut m = Masker::new(["abcdef", "cd"]);
        assert_eq!(stream(&mut m, &["xabcd"]), "xab***");
    }

    #[test]
    fn empty_secrets_are_ignored_and_short_ones_masked() {
        let m = Masker::new(["", ""]);
        assert!(m.is_empty());
        assert_eq!(m.mask("unchanged"), "unchanged");
        let m = Masker::new(["", "x"]);
        assert_eq!(m.mask("xyx"), "***y***");
    }

    #[test]
    fn multibyte_text_and_secrets() {
        let mut m = Masker::new(["пароль"]);
        assert_eq!(stream(&mut m, &["é па", "роль ✓"]), "é *** ✓");
    }

    #[test]
    fn the_carry_is_bounded_by_the_longest_secret() {
        let mut m = Masker::new(["aaaa"]);
        assert_eq!(m.push(&"a".repeat(10)), "******");
        assert_eq!(m.carry.len(), 2);
        assert_eq!(m.finish(), "aa");
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut m = Masker::new(["hunter2"]);
        m.push("hun");
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("hun"), "{dbg}");
    }
}
