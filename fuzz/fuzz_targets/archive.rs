//! Application archives from untrusted bytes: unpacking never panics and never writes outside
//! the release directory (no path, and no link, that leads out of it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stratus_agent::archive::{Limits, unpack};

fn inside(root: &std::path::Path, dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).expect("read").flatten() {
        let p = e.path();
        assert!(p.starts_with(root), "{} escaped", p.display());
        let m = std::fs::symlink_metadata(&p).expect("meta");
        if m.file_type().is_symlink() {
            let target = std::fs::read_link(&p).expect("link");
            let resolved = p.parent().expect("parent").strip_prefix(root).expect("inside").join(&target);
            assert!(!target.is_absolute(), "{} -> {}", p.display(), target.display());
            let depth_ok = resolved.components().fold(Some(0i32), |d, c| match (d, c) {
                (Some(d), std::path::Component::ParentDir) => (d > 0).then_some(d - 1),
                (Some(d), std::path::Component::Normal(_)) => Some(d + 1),
                (d, _) => d,
            });
            assert!(depth_ok.is_some(), "{} -> {} leaves the root", p.display(), target.display());
        } else if m.is_dir() {
            inside(root, &p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tmp");
    let archive = tmp.path().join("a");
    std::fs::write(&archive, data).expect("write");
    let dest = tmp.path().join("release");
    std::fs::create_dir(&dest).expect("mkdir");
    let limits = Limits {
        max_entries: 1000,
        max_bytes: 1 << 20,
    };
    let _ = unpack(&archive, &dest, limits);
    inside(&dest, &dest);
    // Nothing but the archive and the release directory next to it.
    assert_eq!(std::fs::read_dir(tmp.path()).expect("read").count(), 2);
});
