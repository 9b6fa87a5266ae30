//! `stratus-agent app deploy`: what the control plane's built-in deploy run executes.
//!
//! ```text
//! stratus-agent app deploy --name NAME --archive FILE --sha256 HEX [--root /srv]
//! ```
//!
//! The archive (already fetched and verified by the agent as an artifact input) is verified
//! again, unpacked into `ROOT/NAME/releases/VERSION` (VERSION: the first 12 hex digits of its
//! SHA-256) and `ROOT/NAME/current` is switched to it in one rename ([`crate::archive`]). Then
//! the activation command runs, if the template gave one (`$STRATUS_APP_ACTIVATE`, run by
//! `/bin/sh` with `STRATUS_APP_DIR` set): if it fails, `current` is switched back to the release
//! that served before and the activation runs again for it, so a release that does not start
//! leaves the previous one serving. A refused archive changes nothing. The newest
//! [`KEEP_RELEASES`] releases are kept (and always the current and previous one).
//!
//! `ROOT` is opened one name at a time, following a link only where only root could have made
//! it (a root-owned directory no one else may write), so `ROOT` or one of its parents planted
//! as a link by another user (`mv www x; ln -s /srv www` in `/home/app`) is refused. Below it
//! nothing is followed through a link, so `ROOT/NAME` may belong to another user
//! (`--root /home/app/www`): a link they plant as `NAME`, `releases`, a release or `current`
//! is refused or replaced, never written through, and pruning removes only releases the agent
//! made (see [`crate::archive`]). `current` is read through the directory's descriptor.
//!
//! The activation command gets `STRATUS_APP_DIR=ROOT/NAME/releases/VERSION` (the release,
//! not `current`). It is a path, so when `ROOT/NAME` belongs to another user they can still
//! swap `releases` between the switch and the command's use of the path: an activation
//! command run as root must treat `$STRATUS_APP_DIR` as that user's data (read it, never
//! follow links in it to write as root).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::archive::{self, Limits};

/// Releases kept per application.
pub const KEEP_RELEASES: usize = 5;
/// Where applications live unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/srv";

const USAGE: &str = "usage: stratus-agent app deploy --name NAME --archive FILE --sha256 HEX [--root DIR]
      unpack the archive as a new release of NAME and switch to it; $STRATUS_APP_ACTIVATE,
      if set, is run after the switch (and again for the previous release if it fails).
      Refused: archives over 100000 entries or 4 GiB, names over 4096 bytes or 128 levels,
      links leaving the release, devices and FIFOs; nothing under ROOT/NAME is followed
      through a link";

/// Entry point for `stratus-agent app ...`: 0 deployed, 1 failed (nothing or a rollback
/// changed), 2 usage.
pub fn command(args: &[String]) -> ExitCode {
    let mut name = None;
    let mut archive_path = None;
    let mut sha256 = None;
    let mut root = PathBuf::from(DEFAULT_ROOT);
    let Some(("deploy", rest)) = args.split_first().map(|(a, r)| (a.as_str(), r)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            eprintln!("stratus-agent app deploy: {flag} needs a value\n{USAGE}");
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--name" => name = Some(v.clone()),
            "--archive" => archive_path = Some(PathBuf::from(v)),
            "--sha256" => sha256 = Some(v.clone()),
            "--root" => root = PathBuf::from(v),
            other => {
                eprintln!("stratus-agent app deploy: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(name), Some(archive_path), Some(sha256)) = (name, archive_path, sha256) else {
        eprintln!("stratus-agent app deploy: --name, --archive and --sha256 are required\n{USAGE}");
        return ExitCode::from(2);
    };
    let activate = std::env::var("STRATUS_APP_ACTIVATE")
        .ok()
        .filter(|a| !a.trim().is_empty());
    match deploy(&root, &name, &archive_path, &sha256, activate.as_deref()) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stratus-agent app deploy: {e}");
            ExitCode::from(1)
        }
    }
}

/// An application name: a directory under the root, so no `/`, `.` or `..`.
fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// The release `current` points at, if any (read through the app directory's descriptor).
pub fn current(app: &Path) -> Option<String> {
    archive::current(app)
}

/// Deploy and activate (see the module docs); the report is for the run's output.
pub fn deploy(root: &Path, name: &str, archive: &Path, sha256: &str, activate: Option<&str>) -> Result<String, String> {
    if !name_ok(name) {
        return Err(format!(
            "{name:?} is not an application name (letters, digits, '-', '_')"
        ));
    }
    if sha256.len() < 12 {
        return Err("--sha256 is not a SHA-256".into());
    }
    let app = root.join(name);
    let version = sha256[..12].to_ascii_lowercase();
    let previous = current(&app);
    let target = archive::deploy(archive, sha256, &app, &version, Limits::default()).map_err(|e| {
        let serving = previous.as_deref().map_or("nothing was serving".to_string(), |p| {
            format!("release {p} keeps serving")
        });
        format!("{e}; {serving}")
    })?;
    println!("{name}: release {version} unpacked in {}", target.display());
    if let Some(cmd) = activate
        && let Err(e) = run_activate(cmd, &app, &version)
    {
        let Some(prev) = previous.filter(|p| *p != version) else {
            return Err(format!(
                "activation failed ({e}); there is no previous release to go back to"
            ));
        };
        archive::switch(&app, &prev).map_err(|s| format!("activation failed ({e}), and switching back failed: {s}"))?;
        let again = match run_activate(cmd, &app, &prev) {
            Ok(()) => "activated again".to_string(),
            Err(e2) => format!("its activation failed too: {e2}"),
        };
        return Err(format!(
            "release {version} failed to activate ({e}); switched back to release {prev}, {again}"
        ));
    }
    let spare: Vec<&str> = [Some(version.as_str()), previous.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    archive::prune(&app, KEEP_RELEASES, &spare);
    let from = previous.map_or(String::new(), |p| format!(" (was {p})"));
    Ok(format!("{name}: current -> releases/{version}{from}"))
}

/// Run the activation command with `STRATUS_APP_DIR` = the release directory itself
/// (`APP/releases/VERSION`, made by the agent), not `APP/current`: the owner of `APP` could
/// point `current` anywhere between the switch and the command.
fn run_activate(cmd: &str, app: &Path, version: &str) -> Result<(), String> {
    println!("activating: {cmd}");
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("STRATUS_APP_DIR", app.join("releases").join(version))
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the activation command {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn tarball(dir: &Path, name: &str, files: &[(&str, &str)]) -> (PathBuf, String) {
        let path = dir.join(name);
        let f = std::fs::File::create(&path).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
        for (n, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, n, content.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
        (path, sha)
    }

    #[test]
    fn deploys_activates_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv");
        let (v1, s1) = tarball(dir.path(), "v1.tgz", &[("index.html", "one")]);
        let (v2, s2) = tarball(dir.path(), "v2.tgz", &[("index.html", "two")]);
        let page = || std::fs::read_to_string(root.join("site/current/index.html")).unwrap();
        let ok = "test -f \"$STRATUS_APP_DIR/index.html\"";

        let r = deploy(&root, "site", &v1, &s1, Some(ok)).unwrap();
        assert!(r.contains(&format!("current -> releases/{}", &s1[..12])), "{r}");
        assert_eq!(page(), "one");
        // An activation that fails for the new release switches back to the old one.
        let picky = "grep -q one \"$STRATUS_APP_DIR/index.html\"";
        let e = deploy(&root, "site", &v2, &s2, Some(picky)).unwrap_err();
        assert!(
            e.contains("switched back to release") && e.contains("activated again"),
            "{e}"
        );
        assert_eq!(page(), "one");
        // A wrong hash changes nothing and says what keeps serving.
        let e = deploy(&root, "site", &v2, &s1, Some(ok)).unwrap_err();
        assert!(e.contains("keeps serving"), "{e}");
        assert_eq!(page(), "one");
        let r = deploy(&root, "site", &v2, &s2, Some(ok)).unwrap();
        assert!(r.contains("(was"), "{r}");
        assert_eq!(page(), "two");
        // Hostile names never leave the root.
        for bad in ["", "..", "a/b", "../etc", "x y"] {
            assert!(deploy(&root, bad, &v1, &s1, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn old_releases_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("srv");
        for i in 0..(KEEP_RELEASES + 3) {
            let (a, s) = tarball(dir.path(), &format!("{i}.tgz"), &[("n", &i.to_string())]);
            deploy(&root, "app", &a, &s, None).unwrap();
        }
        let n = std::fs::read_dir(root.join("app/releases")).unwrap().count();
        assert_eq!(n, KEEP_RELEASES);
        assert_eq!(
            std::fs::read_to_string(root.join("app/current/n")).unwrap(),
            (KEEP_RELEASES + 2).to_string()
        );
    }

    /// A root path through a link planted in a directory another user owns (the root itself,
    /// or one of its parents) is refused, and what the link points at is untouched; a link
    /// only root could have made is followed.
    #[test]
    fn root_through_a_planted_link_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (a, s) = tarball(d, "a.tgz", &[("index.html", "new")]);
        // The sentinel: another deployment, serving release "old".
        let srv = d.join("srv");
        std::fs::create_dir_all(srv.join("web/releases/old")).unwrap();
        std::fs::write(srv.join("web/releases/old/index.html"), "old").unwrap();
        symlink("releases/old", srv.join("web/current")).unwrap();
        // `app`'s home (uid 65534): `www` and `x` are links it planted.
        let home = d.join("home");
        std::fs::create_dir(&home).unwrap();
        symlink(&srv, home.join("www")).unwrap();
        symlink(d, home.join("x")).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
        for root in [home.join("www"), home.join("x/srv"), home.join("x/home/www")] {
            let e = deploy(&root, "web", &a, &s, Some("true")).unwrap_err();
            assert!(e.contains("not followed"), "{}: {e}", root.display());
        }
        let entries: Vec<_> = std::fs::read_dir(srv.join("web/releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["old"]);
        assert_eq!(
            std::fs::read_link(srv.join("web/current")).unwrap(),
            Path::new("releases/old")
        );
        assert!(current(&home.join("www/web")).is_none());
        // A link in a directory only root may change is followed.
        let trusted = d.join("trusted");
        std::fs::create_dir(&trusted).unwrap();
        symlink(&srv, trusted.join("srv")).unwrap();
        // The activation gets the release itself, not a path through `current`.
        let release = format!(
            "test \"$STRATUS_APP_DIR\" = {}/srv/site/releases/{}",
            trusted.display(),
            &s[..12]
        );
        deploy(&trusted.join("srv"), "site", &a, &s, Some(&release)).unwrap();
        assert_eq!(
            std::fs::read_to_string(srv.join("site/current/index.html")).unwrap(),
            "new"
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(command(&s(&[])), ExitCode::from(2));
        assert_eq!(command(&s(&["deploy", "--name"])), ExitCode::from(2));
        assert_eq!(command(&s(&["deploy", "--name", "a"])), ExitCode::from(2));
        assert_eq!(command(&s(&["deploy", "--evil", "x"])), ExitCode::from(2));
    }
}
