//! Deployment files (TOML and YAML): never panic; what parses also validates consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratus_api::file::{Format, parse};

fuzz_target!(|data: &str| {
    for format in [Format::Toml, Format::Yaml] {
        if let Ok(f) = parse(data, format, "fuzz", None) {
            assert!(f.validate().is_ok(), "parse returned a file that does not validate");
        }
    }
});
