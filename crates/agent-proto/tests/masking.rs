//! Masking and output conversion: the masker never lets a secret through and does not depend on
//! where the stream is cut; lossy decoding does not depend on how the bytes were read; and the
//! agent's whole output pipeline delivers text without the run's secrets.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use stratus_agent_proto::*;
use stratus_types::run::Phase;

#[test]
fn a_masked_pipeline_delivers_output_without_the_secret() {
    // The agent's path for one stream: bytes -> lossy text -> masked -> split into messages.
    let run = script(1, Phase::Operational);
    let mut masker = Masker::for_run(&run);
    let mut utf8 = LossyUtf8::new();
    let raw = format!("connecting with {SECRET}\n\u{0}\u{fffd}done ✓\n").into_bytes();
    let mut text = String::new();
    for read in raw.chunks(5) {
        text.push_str(&masker.push(&utf8.push(read)));
    }
    text.push_str(&masker.push(&utf8.finish()));
    text.push_str(&masker.finish());
    assert_eq!(text, "connecting with ***\n\u{fffd}\u{fffd}done ✓\n");
    for (seq, data) in split_output(&text).enumerate() {
        let msg = AgentMessage::Output(Output {
            run: run.run,
            seq: seq as u64,
            stream: OutputStream::Stdout,
            data: data.into(),
            at: at(),
        });
        let frame = encode_agent(&msg).unwrap();
        assert!(!frame.contains(SECRET));
    }
}

/// Secrets over a small alphabet, so they overlap and contain each other often; a text made of
/// secrets and filler; and the points where the stream is cut.
fn masking_case() -> impl Strategy<Value = (Vec<String>, String, Vec<Index>)> {
    let secrets = prop::collection::vec("[abé✓]{0,5}", 0..4);
    secrets.prop_flat_map(|secrets| {
        let piece = prop_oneof![
            "[abé✓x ]{0,6}".boxed(),
            prop::sample::select(if secrets.is_empty() {
                vec![String::new()]
            } else {
                secrets.clone()
            })
            .boxed(),
        ];
        let text = prop::collection::vec(piece, 0..12).prop_map(|p| p.concat());
        (Just(secrets), text, prop::collection::vec(any::<Index>(), 0..8))
    })
}

/// The masking rule, written the obvious way: at each position, the longest secret that starts
/// there becomes `***`.
fn reference_mask(text: &str, secrets: &[String]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let longest = secrets
            .iter()
            .filter(|s| !s.is_empty() && rest.starts_with(s.as_str()))
            .map(String::len)
            .max();
        let skip = match longest {
            Some(n) => {
                out.push_str(MASK);
                n
            }
            None => {
                out.push(c);
                c.len_utf8()
            }
        };
        rest = &rest[skip..];
    }
    out
}

fn cut(text: &str, points: &[Index]) -> Vec<String> {
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let mut at: Vec<usize> = points.iter().map(|p| bounds[p.index(bounds.len())]).collect();
    at.extend([0, text.len()]);
    at.sort_unstable();
    at.windows(2).map(|w| text[w[0]..w[1]].to_string()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn the_masker_never_lets_a_secret_through((secrets, text, points) in masking_case()) {
        let mut masker = Masker::new(secrets.iter().map(String::as_str));
        let whole = masker.mask(&text);
        let mut streamed: String = cut(&text, &points).iter().map(|c| masker.push(c)).collect();
        streamed.push_str(&masker.finish());
        // Each secret's encoded forms are masked by the same rule (tests/mask_encodings.rs
        // checks the forms themselves).
        let patterns: Vec<String> = secrets
            .iter()
            .filter(|s| !s.is_empty())
            .flat_map(|s| std::iter::once(s.clone()).chain(encoded_forms(s)))
            .collect();
        prop_assert_eq!(&whole, &reference_mask(&text, &patterns));
        prop_assert_eq!(&streamed, &whole, "the result does not depend on where chunks end");
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            prop_assert!(!streamed.contains(s.as_str()), "{:?} survived in {:?}", s, streamed);
        }
        if !secrets.iter().any(|s| !s.is_empty() && text.contains(s.as_str())) {
            prop_assert_eq!(streamed, text, "text without secrets is unchanged");
        }
    }

    #[test]
    fn lossy_decoding_does_not_depend_on_reads(bytes in prop::collection::vec(any::<u8>(), 0..64), points in prop::collection::vec(any::<Index>(), 0..6)) {
        let want = String::from_utf8_lossy(&bytes).replace('\0', "\u{fffd}");
        let mut at: Vec<usize> = points.iter().map(|p| p.index(bytes.len() + 1)).collect();
        at.extend([0, bytes.len()]);
        at.sort_unstable();
        let mut decoder = LossyUtf8::new();
        let mut got: String = at.windows(2).map(|w| decoder.push(&bytes[w[0]..w[1]])).collect();
        got.push_str(&decoder.finish());
        prop_assert_eq!(got, want);
    }
}
