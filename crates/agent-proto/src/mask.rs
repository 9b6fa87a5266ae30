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
//! the output noisier, never leakier); empty secrets are ignored. Encoded forms of a secret
//! (base64, URL-escaped) are not recognised.

use std::fmt;

use crate::ScriptRun;

/// What a masked secret is replaced with.
pub const MASK: &str = "***";

/// Replaces secret values in a stream of text chunks. `Debug` shows only how many secrets it
/// holds.
#[derive(Clone)]
pub struct Masker {
    /// Distinct non-empty secrets, longest first.
    secrets: Vec<String>,
    /// `first[b]`: some secret starts with byte `b` (a quick skip for ordinary text).
    first: Vec<bool>,
    /// Undecided text held back from the previous chunk: a proper prefix of some secret.
    carry: String,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("secrets", &self.secrets.len())
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
    /// A masker for these values; empty ones are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut list: Vec<String> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        list.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        list.dedup();
        let mut first = vec![false; 256];
        for s in &list {
            first[usize::from(s.as_bytes()[0])] = true;
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
            if self.first[usize::from(rest.as_bytes()[0])] {
                if !last && self.undecided(rest) {
                    return (out, i);
                }
                if let Some(s) = self.secrets.iter().find(|s| rest.starts_with(s.as_str())) {
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
    fn undecided(&self, rest: &str) -> bool {
        self.secrets
            .iter()
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
