//! Request paths → the segments the tree is walked with.
//!
//! * Empty segments are dropped, so `//latest///meta-data/` is `latest/meta-data/` (clients
//!   that join URLs carelessly still work).
//! * Each segment is percent-decoded (`tags/instance/Name%3Aweb` asks for the tag
//!   `Name:web`). A `%` not followed by two hex digits stays as it is; a segment that decodes
//!   to bytes that are not UTF-8 makes the whole path unanswerable (404).
//! * `.` and `..` are ordinary names (no such entry exists, so they 404): the tree is data, not
//!   a file system, and nothing is ever resolved relative to anything.
//! * `%2F` decodes to a `/` *inside* a segment, which no entry has: 404.
//! * At most [`MAX_SEGMENTS`] segments; deeper paths cannot exist (404) and are not decoded.
//!
//! `canonical` re-joins the raw (still encoded) non-empty segments with single slashes; the
//! service redirects a directory asked for without its slash to `canonical + "/"`, which can
//! never be `//host…` (a network-path reference) however many slashes the request had.

/// The deepest path the tree has is 7 segments (`latest/meta-data/network/interfaces/macs/<mac>/
/// public-ipv4s`); anything much deeper is refused without decoding.
pub(crate) const MAX_SEGMENTS: usize = 16;

/// A request path, split and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestPath {
    /// Decoded, non-empty segments.
    pub segments: Vec<String>,
    /// The path ended in `/` (and is not just `/`).
    pub trailing_slash: bool,
    /// `/` + the raw non-empty segments joined by `/`.
    pub canonical: String,
}

/// `None` when the path cannot name anything: too deep, or not UTF-8 once decoded.
pub(crate) fn parse(raw: &str) -> Option<RequestPath> {
    let raw_segments: Vec<&str> = raw.split('/').filter(|s| !s.is_empty()).collect();
    if raw_segments.len() > MAX_SEGMENTS {
        return None;
    }
    let segments = raw_segments
        .iter()
        .map(|s| percent_decode(s))
        .collect::<Option<Vec<_>>>()?;
    Some(RequestPath {
        trailing_slash: raw.ends_with('/') && !segments.is_empty(),
        canonical: format!("/{}", raw_segments.join("/")),
        segments,
    })
}

/// Decode `%XX` escapes; other bytes (including a stray `%`) are kept. `None` if the result is
/// not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_value(hi).zip(hex_value(lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segments(raw: &str) -> Vec<String> {
        parse(raw).unwrap().segments
    }

    #[test]
    fn splits_and_flags_the_trailing_slash() {
        let p = parse("/latest/meta-data/").unwrap();
        assert_eq!(p.segments, ["latest", "meta-data"]);
        assert!(p.trailing_slash);
        assert_eq!(p.canonical, "/latest/meta-data");
        let p = parse("/latest/meta-data").unwrap();
        assert!(!p.trailing_slash);
        let root = parse("/").unwrap();
        assert!(root.segments.is_empty() && !root.trailing_slash);
        assert_eq!(root.canonical, "/");
    }

    #[test]
    fn collapses_empty_segments_into_a_safe_canonical_form() {
        let p = parse("//latest///meta-data").unwrap();
        assert_eq!(p.segments, ["latest", "meta-data"]);
        assert_eq!(p.canonical, "/latest/meta-data");
        assert!(segments("////").is_empty());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(segments("/a%3Ab"), ["a:b"]);
        assert_eq!(segments("/a%3ab"), ["a:b"]);
        assert_eq!(segments("/100%"), ["100%"]);
        assert_eq!(segments("/%zz%4"), ["%zz%4"]);
        assert_eq!(segments("/a%2Fb"), ["a/b"]);
        assert_eq!(segments("/caf%C3%A9"), ["café"]);
        assert_eq!(segments("/%2E%2E"), [".."]);
        assert_eq!(parse("/%FF"), None);
        assert_eq!(parse("/%C3"), None);
    }

    #[test]
    fn refuses_very_deep_paths() {
        assert!(parse(&"/a".repeat(MAX_SEGMENTS)).is_some());
        assert_eq!(parse(&"/a".repeat(MAX_SEGMENTS + 1)), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_canonical_is_a_single_slash_path(raw in ".{0,300}") {
            if let Some(p) = parse(&raw) {
                prop_assert!(p.canonical.starts_with('/'));
                prop_assert!(!p.canonical.starts_with("//"));
                prop_assert!(!p.canonical.contains("//"));
                prop_assert!(p.segments.iter().all(|s| !s.is_empty()));
            }
        }

        #[test]
        fn encoding_then_decoding_is_identity(s in "[^/%]{1,40}") {
            let encoded: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(segments(&format!("/{encoded}")), vec![s]);
        }
    }
}
