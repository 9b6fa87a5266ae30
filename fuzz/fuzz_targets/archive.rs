//! Application archives from untrusted bytes: unpacking never panics and never reaches outside
//! the release directory, checked on the real file system afterwards: a sentinel file and a
//! sentinel directory next to the release are untouched (same bytes, mode, link count and
//! entries), nothing new appears next to it, and every path under the release, links
//! followed (`canonicalize`; a dangling link as far as it exists, the rest lexically),
//! resolves inside it.
//!
//! The first input byte picks the format: even, the rest is the archive file as it is (zip,
//! tar.gz or junk); odd, the rest is a tar stream that the target gzips, so the fuzzer works on
//! tar headers directly.
#![no_main]

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use stratus_agent::archive::{Limits, unpack};

/// `p` with links followed as far as it exists, the rest of it resolved lexically.
fn resolve(p: &Path) -> PathBuf {
    let comps: Vec<Component> = p.components().collect();
    for i in (0..=comps.len()).rev() {
        let prefix: PathBuf = comps[..i].iter().collect();
        if let Ok(mut out) = prefix.canonicalize() {
            for c in &comps[i..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(n) => out.push(n),
                    _ => {}
                }
            }
            return out;
        }
    }
    unreachable!("/ exists")
}

fn inside(root: &Path, dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read").flatten() {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).expect("meta");
        let real = if m.file_type().is_symlink() {
            let target = std::fs::read_link(&p).expect("link");
            resolve(&p.parent().expect("parent").join(&target))
        } else {
            resolve(&p)
        };
        assert!(
            real.starts_with(root),
            "{} resolves to {}, outside",
            p.display(),
            real.display()
        );
        if m.is_dir() {
            inside(root, &p);
        }
    }
}

/// What must not change outside: bytes, mode and link count (a hard link raises it) of the
/// sentinel files, and the names next to the release and in the sentinel directory.
fn outside(base: &Path) -> Vec<(PathBuf, Vec<u8>, u32, u64)> {
    let mut all = Vec::new();
    for dir in [base.to_path_buf(), base.join("etc")] {
        for e in std::fs::read_dir(&dir).expect("read") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("meta");
            let bytes = if m.is_file() && !p.ends_with("a") {
                std::fs::read(&p).expect("read")
            } else {
                vec![]
            };
            all.push((p, bytes, m.mode(), if m.is_file() { m.nlink() } else { 0 }));
        }
    }
    all.sort();
    all
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let base = tmp.path().canonicalize().expect("canon");
    let archive = base.join("a");
    if mode % 2 == 0 {
        std::fs::write(&archive, data).expect("write");
    } else {
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).expect("create"),
            flate2::Compression::fast(),
        );
        gz.write_all(data).expect("gzip");
        gz.finish().expect("gzip");
    }
    let sentinel = base.join("sentinel");
    std::fs::write(&sentinel, b"outside the release").expect("sentinel");
    let outside_dir = base.join("etc");
    std::fs::create_dir(&outside_dir).expect("mkdir");
    std::fs::write(outside_dir.join("shadow"), b"root:*:").expect("shadow");
    let dest = base.join("release");
    std::fs::create_dir(&dest).expect("mkdir");
    let before = outside(&base);
    let limits = Limits {
        max_entries: 1000,
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    if let Err(e) = unpack(&archive, &dest, limits) {
        // Errors quote archive names bounded: an error is small whatever the input.
        assert!(e.to_string().len() < 2048, "an error of {} bytes", e.to_string().len());
    }
    inside(&dest, &dest);
    // Nothing changed, and nothing new, next to the release or in the sentinel directory.
    let after = outside(&base);
    assert!(after == before, "outside the release: {before:?} became {after:?}");
});
