//! Tags and selectors: never panic, and whatever parses prints back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratus_types::tag::{Selector, Tag};

fuzz_target!(|data: &str| {
    if let Ok(t) = Tag::parse(data) {
        assert_eq!(Tag::parse(&t.to_string()).expect("a printed tag parses"), t);
    }
    if let Ok(s) = Selector::parse(data) {
        assert_eq!(Selector::parse(&s.to_string()).expect("a printed selector parses"), s);
        let _ = s.matches(&[]);
    }
});
