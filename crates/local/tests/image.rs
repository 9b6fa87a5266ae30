//! The local image store: spec validation and cache keys, tarball imports (tar, tar.gz,
//! tar.zst of a static busybox tree) and one real debootstrap build.
//!
//! Needs root (tar keeps owners, chroot), GNU tar, zstd, and for the slow test debootstrap plus
//! access to deb.debian.org: `apt-get install -y debootstrap busybox-static zstd`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use proptest::prelude::*;
use stratus_local::image::{BOOT_D, BuildSpec, DEFAULT_PACKAGES, ImageError, ImageSource, ImageStore};

fn spec_with(edit: impl FnOnce(&mut BuildSpec)) -> BuildSpec {
    let mut spec = BuildSpec::default();
    edit(&mut spec);
    spec
}

fn invalid_field(spec: &BuildSpec) -> &'static str {
    match spec.validate() {
        Err(ImageError::InvalidSpec { field, .. }) => field,
        other => panic!("expected InvalidSpec for {spec:?}, got {other:?}"),
    }
}

#[test]
fn default_spec_is_bookworm_minbase_with_the_default_packages_and_valid() {
    let spec = BuildSpec::default();
    assert_eq!((spec.suite.as_str(), spec.variant.as_str()), ("bookworm", "minbase"));
    assert_eq!(spec.mirror, "http://deb.debian.org/debian");
    assert_eq!(spec.packages.len(), DEFAULT_PACKAGES.len());
    for needed in [
        "nginx",
        "haproxy",
        "openssh-server",
        "curl",
        "ca-certificates",
        "iproute2",
        "procps",
        "sudo",
    ] {
        assert!(
            spec.packages.iter().any(|p| p == needed),
            "{needed} missing from the defaults"
        );
    }
    spec.validate().unwrap();
}

#[test]
fn validate_rejects_malformed_and_hostile_values_with_the_field_named() {
    let package = |p: &str| {
        let p = p.to_owned();
        spec_with(move |s| s.packages.push(p))
    };
    for bad in [
        "curl;rm",
        "two words",
        "--option",
        "-x",
        "",
        "a",
        "Nginx",
        "pkg$(id)",
        "pkg:amd64",
        "a/b",
    ] {
        assert_eq!(invalid_field(&package(bad)), "packages", "package {bad:?}");
    }
    let many = spec_with(|s| s.packages = (0..201).map(|i| format!("pkg{i}")).collect());
    assert_eq!(invalid_field(&many), "packages");
    let message = many.validate().unwrap_err().to_string();
    assert!(message.contains("201") && message.contains("200"), "{message}");
    for bad in [
        "ftp://deb.debian.org/debian",
        "deb.debian.org/debian",
        "file:///srv/mirror",
        "http://",
        "http:///x",
    ] {
        assert_eq!(
            invalid_field(&spec_with(|s| s.mirror = bad.into())),
            "mirror",
            "mirror {bad:?}"
        );
    }
    for bad in [
        "http://x/debian;reboot",
        "http://x/ debian",
        "http://x/$(id)",
        "http://x/a\nb",
        "https://x/`id`",
    ] {
        assert_eq!(
            invalid_field(&spec_with(|s| s.mirror = bad.into())),
            "mirror",
            "mirror {bad:?}"
        );
    }
    for bad in [
        "",
        "bookworm/updates",
        "../x",
        "Bookworm",
        "--foreign",
        "book worm",
        "-x",
    ] {
        assert_eq!(
            invalid_field(&spec_with(|s| s.suite = bad.into())),
            "suite",
            "suite {bad:?}"
        );
    }
    for bad in ["", "-", "fakechroot", "minbase --foreign"] {
        assert_eq!(
            invalid_field(&spec_with(|s| s.variant = bad.into())),
            "variant",
            "variant {bad:?}"
        );
    }
    let message = package("curl;rm").validate().unwrap_err().to_string();
    assert!(
        message.contains("curl;rm") && message.contains("Debian package name"),
        "{message}"
    );
}

#[test]
fn validate_accepts_real_world_values() {
    let spec = BuildSpec {
        suite: "bookworm-backports".into(),
        mirror: "https://user@mirror.example:8443/debian/".into(),
        variant: "buildd".into(),
        packages: vec![
            "g++".into(),
            "libstdc++6".into(),
            "python3.11-minimal".into(),
            "0ad".into(),
        ],
    };
    spec.validate().unwrap();
    spec_with(|s| s.packages = (0..200).map(|i| format!("pkg{i}")).collect())
        .validate()
        .unwrap();
}

#[test]
fn cache_key_ignores_order_duplicates_and_trailing_slash_but_not_inputs() {
    let base = BuildSpec::default();
    let key = base.cache_key();
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let shuffled = spec_with(|s| {
        s.packages.reverse();
        s.packages.push("nginx".into());
        s.mirror.push('/');
    });
    assert_eq!(shuffled.cache_key(), key);
    let different = [
        spec_with(|s| s.suite = "trixie".into()),
        spec_with(|s| s.mirror = "http://ftp.de.debian.org/debian".into()),
        spec_with(|s| s.variant = "buildd".into()),
        spec_with(|s| s.packages.push("busybox".into())),
        spec_with(|s| {
            s.packages.pop();
        }),
        // The canonical form is not a plain join: one name with a comma differs from two names.
        spec_with(|s| s.packages = vec!["ab,cd".into()]),
        spec_with(|s| s.packages = vec!["ab".into(), "cd".into()]),
    ];
    for spec in &different {
        assert_ne!(spec.cache_key(), key, "{spec:?}");
    }
    assert_ne!(different[5].cache_key(), different[6].cache_key());
}

fn package_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9+.-]{1,20}"
}

proptest! {
    #[test]
    fn cache_key_is_independent_of_package_order_and_duplicates(
        packages in proptest::collection::vec(package_name(), 0..30),
        seed in any::<u64>(),
    ) {
        let spec = spec_with(|s| s.packages = packages.clone());
        prop_assert!(spec.validate().is_ok());
        let mut permuted = packages.clone();
        // A deterministic shuffle driven by `seed`, plus every other name twice.
        let len = permuted.len();
        for i in 0..len {
            permuted.swap(i, (seed.rotate_left(i as u32) as usize) % len);
        }
        permuted.extend(packages.iter().step_by(2).cloned());
        prop_assert_eq!(spec_with(|s| s.packages = permuted).cache_key(), spec.cache_key());
    }

    #[test]
    fn validate_and_cache_key_never_panic(
        suite in any::<String>(),
        mirror in prop_oneof![any::<String>(), "https?://[ -~]{0,40}"],
        variant in any::<String>(),
        packages in proptest::collection::vec(any::<String>(), 0..5),
    ) {
        let spec = BuildSpec { suite, mirror, variant, packages };
        let _ = spec.validate();
        prop_assert_eq!(spec.cache_key().len(), 64);
    }
}

// --- the store, with imports of a tiny busybox root file system ------------------------------

/// A static busybox tree: bin/busybox, bin/sh -> busybox, etc/ with host-specific leftovers
/// (machine-id, hostname, an SSH host key) and a fake sshd so the hook gets installed.
fn busybox_rootfs(parent: &Path) -> PathBuf {
    let root = parent.join("tree");
    for dir in ["bin", "etc/ssh", "usr/sbin"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "builder\n").unwrap();
    std::fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
    std::fs::write(root.join("usr/sbin/sshd"), "").unwrap();
    root
}

/// `tar -C dir --numeric-owner FLAGS -cf out .`
fn tar(dir: &Path, out: &Path, flags: &[&str]) -> PathBuf {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("--numeric-owner")
        .args(flags)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar {flags:?} failed (is zstd installed?)");
    out.to_path_buf()
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_creates_a_private_directory_and_removes_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("local/images");
    ImageStore::open(&dir).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    std::fs::create_dir_all(dir.join(".tmp-0011223344556677/rootfs/etc")).unwrap();
    std::fs::create_dir_all(dir.join("img-0123456789abcdef/rootfs/etc")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not ours to delete").unwrap();
    let store = ImageStore::open(&dir).unwrap();
    assert_eq!(names_in(&dir), ["notes.txt"]);
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn imports_tar_gzip_and_zstd_detected_by_content_then_lists_gets_and_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = busybox_rootfs(tmp.path());
    let dir = tmp.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    // Names that lie about the format: detection must go by content.
    let files = [
        tar(&tree, &tmp.path().join("plain.tar.gz"), &[]),
        tar(&tree, &tmp.path().join("gzipped.tar.zst"), &["-z"]),
        tar(&tree, &tmp.path().join("zstd.tar"), &["--zstd"]),
    ];
    let mut ids = Vec::new();
    for file in &files {
        let image = store.import("busybox", file).await.unwrap();
        assert!(image.id.starts_with("img-") && image.id.len() == 20, "{}", image.id);
        let ImageSource::Import { file_name, sha256 } = &image.source else {
            panic!("{image:?}")
        };
        assert_eq!(file_name, file.file_name().unwrap().to_str().unwrap());
        assert!(sha256.starts_with(&image.id[4..]));
        assert!(image.size_bytes > std::fs::metadata("/bin/busybox").unwrap().len());
        let rootfs = store.rootfs(&image.id).unwrap();
        assert!(rootfs.join("bin/busybox").metadata().unwrap().permissions().mode() & 0o111 != 0);
        assert_eq!(std::fs::read_link(rootfs.join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(store.get(&image.id), Some(image.clone()));
        ids.push(image.id);
    }
    let listed: Vec<_> = store.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, ids, "three different files, three images, oldest first");
    for id in &ids {
        store.remove(id).unwrap();
        assert_eq!(store.get(id), None);
        assert!(matches!(store.rootfs(id), Err(ImageError::NoSuchImage(_))));
        assert!(matches!(store.remove(id), Err(ImageError::NoSuchImage(_))));
    }
    assert!(names_in(&dir).is_empty());
}

#[tokio::test]
async fn imported_trees_are_generalized() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = busybox_rootfs(tmp.path());
    let file = tar(&tree, &tmp.path().join("rootfs.tar"), &[]);
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let image = store.import("busybox", &file).await.unwrap();
    let rootfs = store.rootfs(&image.id).unwrap();
    assert!(
        !rootfs.join("etc/ssh/ssh_host_ed25519_key").exists(),
        "host keys must not be shared"
    );
    let hook = rootfs.join(BOOT_D).join("10-ssh-host-keys");
    assert!(std::fs::read_to_string(&hook).unwrap().contains("ssh-keygen -A"));
    assert!(hook.metadata().unwrap().permissions().mode() & 0o111 != 0);
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/machine-id")).unwrap(), "");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(), "");
}

#[tokio::test]
async fn importing_the_same_content_twice_or_concurrently_gives_one_image() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = busybox_rootfs(tmp.path());
    let file = tar(&tree, &tmp.path().join("a.tar"), &[]);
    let copy = tmp.path().join("b.tar");
    std::fs::copy(&file, &copy).unwrap();
    let dir = tmp.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    let (first, second) = tokio::join!(store.import("one", &file), store.import("two", &copy));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.id, second.id);
    let again = store.import("three", &copy).await.unwrap();
    assert_eq!(
        again,
        store.get(&first.id).unwrap(),
        "cached: same record, first name kept"
    );
    assert_eq!(
        names_in(&dir),
        [first.id.as_str()],
        "the loser's temporary tree is gone"
    );
}

#[tokio::test]
async fn bad_tarballs_are_refused_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    let empty_dir = tmp.path().join("empty");
    let not_root = tmp.path().join("notroot");
    std::fs::create_dir_all(&empty_dir).unwrap();
    std::fs::create_dir_all(not_root.join("rootfs/etc")).unwrap();
    std::fs::create_dir_all(not_root.join("rootfs/bin")).unwrap();
    std::fs::write(not_root.join("hello.txt"), "hi").unwrap();
    let garbage = tmp.path().join("garbage.tar");
    std::fs::write(&garbage, vec![b'x'; 4096]).unwrap();
    let zero_bytes = tmp.path().join("zero.tar");
    std::fs::write(&zero_bytes, b"").unwrap();
    let broken_gzip = tmp.path().join("broken.tar.gz");
    std::fs::write(&broken_gzip, [&[0x1f, 0x8b, 8, 0][..], &[0x55; 600]].concat()).unwrap();
    let cases = [
        (garbage, "not a tar archive"),
        (zero_bytes, "empty"),
        (broken_gzip, "tar could not extract it"),
        (
            tar(&empty_dir, &tmp.path().join("empty.tar"), &[]),
            "does not hold a root file system",
        ),
        (
            tar(&not_root, &tmp.path().join("nested.tar.gz"), &["-z"]),
            "does not hold a root file system",
        ),
    ];
    for (file, expected) in cases {
        let error = store.import("bad", &file).await.unwrap_err();
        assert!(matches!(error, ImageError::Import { .. }), "{file:?}: {error:?}");
        assert!(error.to_string().contains(expected), "{file:?}: {error}");
        assert!(names_in(&dir).is_empty(), "{file:?} left {:?}", names_in(&dir));
    }
    let missing = store.import("bad", &tmp.path().join("missing.tar")).await.unwrap_err();
    assert!(matches!(missing, ImageError::Io { .. }), "{missing:?}");
}

#[tokio::test]
async fn a_tarball_with_symlinks_to_host_directories_cannot_make_the_store_touch_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let host_ssh = tmp.path().join("host-etc-ssh");
    std::fs::create_dir_all(&host_ssh).unwrap();
    std::fs::write(host_ssh.join("ssh_host_rsa_key"), "host key").unwrap();
    let tree = busybox_rootfs(tmp.path());
    std::fs::remove_dir_all(tree.join("etc/ssh")).unwrap();
    std::os::unix::fs::symlink(&host_ssh, tree.join("etc/ssh")).unwrap();
    let file = tar(&tree, &tmp.path().join("evil.tar"), &[]);
    let dir = tmp.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    let error = store.import("evil", &file).await.unwrap_err();
    assert!(
        matches!(error, ImageError::UnsafeTree { ref path } if path == "etc/ssh"),
        "{error:?}"
    );
    assert!(host_ssh.join("ssh_host_rsa_key").exists());
    assert!(names_in(&dir).is_empty());
}

#[tokio::test]
async fn unknown_or_hostile_ids_are_no_such_image() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    for id in [
        "../images",
        "img-../../etc",
        "img-0123456789ABCDEF",
        "img-0123456789abcdef",
        "",
        "/etc",
    ] {
        assert_eq!(store.get(id), None, "{id:?}");
        assert!(matches!(store.rootfs(id), Err(ImageError::NoSuchImage(_))), "{id:?}");
        assert!(matches!(store.remove(id), Err(ImageError::NoSuchImage(_))), "{id:?}");
    }
}

#[tokio::test]
async fn build_with_an_invalid_spec_or_name_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images");
    let store = ImageStore::open(&dir).unwrap();
    let called = Mutex::new(0);
    let progress = |_: &str| *called.lock().unwrap() += 1;
    let hostile = spec_with(|s| s.packages.push("--foreign".into()));
    let error = store.build("x", &hostile, &progress).await.unwrap_err();
    assert!(
        matches!(error, ImageError::InvalidSpec { field: "packages", .. }),
        "{error:?}"
    );
    let error = store.build("", &BuildSpec::default(), &progress).await.unwrap_err();
    assert!(
        matches!(error, ImageError::InvalidSpec { field: "name", .. }),
        "{error:?}"
    );
    assert_eq!(*called.lock().unwrap(), 0);
    assert!(names_in(&dir).is_empty());
}

// --- the slow one: a real debootstrap -------------------------------------------------------

/// Builds minbase + busybox + openssh-server from deb.debian.org (~40-90 s), then checks the
/// post-processing and that building again returns the cached tree untouched.
#[tokio::test]
async fn debootstrap_build_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("images")).unwrap();
    let spec = spec_with(|s| s.packages = vec!["openssh-server".into(), "busybox".into()]);
    let lines = Mutex::new(Vec::<String>::new());
    let progress = |line: &str| lines.lock().unwrap().push(line.to_owned());
    let image = store.build("debian-12-test", &spec, &progress).await.unwrap();
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    assert!(
        lines.iter().any(|l| l.starts_with("debootstrap: I: ")),
        "debootstrap output is forwarded"
    );
    assert!(lines.iter().any(|l| l.starts_with("cleaning")), "{lines:?}");
    assert_eq!(image.id, format!("img-{}", &spec.cache_key()[..16]));
    assert_eq!(image.source, ImageSource::Debootstrap(spec.clone()));

    let rootfs = store.rootfs(&image.id).unwrap();
    for present in ["usr/bin/apt", "bin/busybox", "usr/sbin/sshd", "usr/sbin/policy-rc.d"] {
        assert!(rootfs.join(present).exists(), "{present} missing");
    }
    let ssh = names_in(&rootfs.join("etc/ssh"));
    assert!(
        !ssh.iter().any(|n| n.starts_with("ssh_host_")),
        "host keys left: {ssh:?}"
    );
    let hook = rootfs.join(BOOT_D).join("10-ssh-host-keys");
    assert!(hook.metadata().unwrap().permissions().mode() & 0o111 != 0);
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/machine-id")).unwrap(), "");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(), "");
    let archives = names_in(&rootfs.join("var/cache/apt/archives"));
    assert!(
        !archives.iter().any(|n| n.ends_with(".deb")),
        "apt-get clean did not run: {archives:?}"
    );
    assert_eq!(names_in(&rootfs.join("var/lib/apt/lists")), ["partial"]);
    assert!(image.size_bytes > 100_000_000, "{}", image.size_bytes);

    let before = rootfs.metadata().unwrap();
    let mut reordered = spec.clone();
    reordered.packages.reverse();
    let cached_lines = Mutex::new(Vec::<String>::new());
    let progress = |line: &str| cached_lines.lock().unwrap().push(line.to_owned());
    let again = store.build("other-name", &reordered, &progress).await.unwrap();
    assert_eq!(again, image, "cached: same record, first name kept");
    let cached_lines = cached_lines.into_inner().unwrap();
    assert!(cached_lines.iter().all(|l| l.starts_with("cached")), "{cached_lines:?}");
    let after = store.rootfs(&again.id).unwrap().metadata().unwrap();
    assert_eq!(
        (before.ino(), before.mtime(), before.mtime_nsec()),
        (after.ino(), after.mtime(), after.mtime_nsec())
    );

    // The hook works in the image: it creates the keys an instance's sshd needs.
    let status = Command::new("chroot")
        .arg(&rootfs)
        .arg("/etc/stratus/boot.d/10-ssh-host-keys")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(rootfs.join("etc/ssh/ssh_host_ed25519_key").exists());
    store.remove(&image.id).unwrap();
}
