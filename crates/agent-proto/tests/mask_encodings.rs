//! The masker hides a secret's common encodings too: hex, percent-encoding (RFC 3986 and form),
//! and base64 (standard and URL-safe, padded or not, at every alignment inside a longer stream),
//! whatever surrounds it and wherever the stream is cut. The encodings here come from other
//! implementations (the `base64`, `hex`, `percent-encoding` and `form_urlencoded` crates), not from
//! the masker's own code.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;
use proptest::sample::Index;
use stratus_agent_proto::{MASK, Masker};

/// RFC 3986 unreserved characters stay; everything else is escaped.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn lowercase_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        out.push(c);
        if c == '%' {
            out.extend(it.by_ref().take(2).map(|h| h.to_ascii_lowercase()));
        }
    }
    out
}

/// Every whole-secret encoding a tool would print.
fn whole_encodings(secret: &str) -> Vec<(&'static str, String)> {
    let rfc = utf8_percent_encode(secret, RFC3986).to_string();
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![
        ("hex", hex::encode(secret)),
        ("HEX", hex::encode_upper(secret)),
        ("rfc3986", rfc.clone()),
        ("rfc3986 lowercase", lowercase_escapes(&rfc)),
        ("form", form.clone()),
        ("form lowercase", lowercase_escapes(&form)),
    ]
}

/// Mask `text` in chunks cut at `points`.
fn streamed(secret: &str, text: &str, points: &[Index]) -> String {
    let mut m = Masker::new([secret]);
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let mut at: Vec<usize> = points.iter().map(|p| bounds[p.index(bounds.len())]).collect();
    at.extend([0, text.len()]);
    at.sort_unstable();
    let mut out: String = at.windows(2).map(|w| m.push(&text[w[0]..w[1]])).collect();
    out.push_str(&m.finish());
    out
}

/// The characters of `encoded` (the base64 of a stream whose bytes `from..to` are the secret)
/// that depend on the secret's bits only.
fn stable_middle(encoded: &str, from: usize, to: usize) -> &str {
    let first = (8 * from).div_ceil(6);
    let end = (8 * to / 6).min(encoded.len());
    &encoded[first.min(end)..end]
}

fn secret() -> impl Strategy<Value = String> {
    // Printable text of any script: passwords, tokens, phrases with spaces and symbols.
    "[ -~é✓пароль]{6,48}"
}

fn around() -> impl Strategy<Value = String> {
    "[ -~\n]{0,40}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn whole_encodings_never_survive(
        s in secret(),
        before in around(),
        after in around(),
        points in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        for (what, enc) in whole_encodings(&s) {
            let text = format!("{before}{enc}{after}");
            let out = streamed(&s, &text, &points);
            prop_assert!(!out.contains(&enc), "{} form {:?} survived in {:?}", what, enc, out);
            prop_assert!(out.contains(MASK));
        }
    }

    #[test]
    fn base64_never_survives_at_any_alignment(
        s in secret(),
        prefix in prop::collection::vec(any::<u8>(), 0..7),
        suffix in prop::collection::vec(any::<u8>(), 0..4),
        newline in any::<bool>(),
        before in around(),
        points in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        // `echo "$X" | base64` encodes X and a newline; `printf %s "user:$X" | base64` shifts it.
        let mut stream = prefix.clone();
        stream.extend_from_slice(s.as_bytes());
        if newline {
            stream.push(b'\n');
        }
        stream.extend_from_slice(&suffix);
        let (from, to) = (prefix.len(), prefix.len() + s.len());
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            let enc = engine.encode(&stream);
            let middle = stable_middle(&enc, from, to);
            let text = format!("{before}{enc}\n");
            let out = streamed(&s, &text, &points);
            prop_assert!(!out.contains(middle), "{:?} survived in {:?}", middle, out);
            // At most two characters at each edge stay (neighbours' bits mixed in).
            let visible = out.len().saturating_sub(before.len() + 1);
            prop_assert!(visible <= enc.len() - middle.len() + MASK.len(), "{:?}", out);
        }
    }

    #[test]
    fn text_without_secrets_passes_unchanged(
        s in secret(),
        text in "[ -~\n]{0,200}",
        points in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let m = Masker::new([s.as_str()]);
        let mut forms: Vec<String> = stratus_agent_proto::encoded_forms(&s);
        forms.push(s.clone());
        prop_assume!(!forms.iter().any(|f| text.contains(f.as_str())));
        prop_assert_eq!(&m.mask(&text), &text);
        prop_assert_eq!(streamed(&s, &text, &points), text);
    }
}

#[test]
fn echo_piped_to_base64_is_masked() {
    // What `echo "$X" | base64` and `echo -n "$X" | base64` print.
    let s = "correct-horse-battery-staple";
    let m = Masker::new([s]);
    for (stream, shown) in [(format!("{s}\n"), 0), (s.to_string(), 0), (format!("user:{s}"), 6)] {
        let enc = STANDARD.encode(&stream);
        let out = m.mask(&format!("token {enc} end"));
        assert!(out.starts_with("token ") && out.ends_with(" end"), "{out}");
        assert!(out.contains(MASK), "{out}");
        // What stays: the encoded prefix (`dXNlcj` is `user:`) and a few edge characters.
        assert!(
            out.len() <= "token  end".len() + MASK.len() + shown + 5,
            "{enc} -> {out}"
        );
    }
    // Hex from `xxd -p`, a form-encoded body with a space and symbols.
    let out = m.mask(&format!("xxd: {}", hex::encode(s)));
    assert_eq!(out, format!("xxd: {MASK}"));
    let m = Masker::new(["p@ss word&1"]);
    assert_eq!(m.mask("user=me&pass=p%40ss+word%261"), format!("user=me&pass={MASK}"));
    assert_eq!(m.mask("/login?pass=p%40ss%20word%261"), format!("/login?pass={MASK}"));
}

#[test]
fn short_secrets_mask_no_short_encodings() {
    // A 2-byte secret's hex is 4 characters: masked, it would blank ordinary hex everywhere.
    let m = Masker::new(["ab"]);
    assert_eq!(m.mask("6162 deadbeef"), "6162 deadbeef");
    assert_eq!(m.mask("ab"), MASK);
}
