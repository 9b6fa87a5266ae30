//! The `stratus` binary against a real `stratus serve` child process.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Std, Stdio};
use std::time::Duration;

use assert_cmd::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `stratus serve` on a free loopback port, killed on drop; its output is kept for inspection.
struct Served {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), &[])
    }

    /// `stratus serve` on `dir` with `extra` arguments.
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let cmd = Std::new(assert_cmd::cargo::cargo_bin("stratus"));
        Self::spawn(cmd, dir, extra)
    }

    /// `stratus serve` in a mount namespace of its own whose /etc/hosts is `hosts` (names a
    /// test resolves without touching the machine's), with `env` set.
    fn start_with_hosts(dir: tempfile::TempDir, hosts: &Path, env: &[(&str, &str)], extra: &[&str]) -> Self {
        let mut cmd = Std::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
            .arg(hosts)
            .arg(assert_cmd::cargo::cargo_bin("stratus"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(cmd, dir, extra)
    }

    fn spawn(mut cmd: Std, dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("STRATUS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            l2.lock().expect("log").push_str(&s);
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let url = loop {
            let line = lines.next().expect("serve printed its address").expect("line");
            log.lock().expect("log").push_str(&line);
            if let Some(rest) = line.strip_prefix("Stratus control plane listening on ") {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        let l3 = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l3.lock().expect("log").push_str(&line);
            }
        });
        Self { child, url, dir, log }
    }

    /// Stop serving; the data directory is the caller's.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("stratus").expect("binary");
        c.env("STRATUS_URL", &self.url)
            .env("STRATUS_DATA_DIR", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env_remove("STRATUS_TOKEN")
            .current_dir(workspace());
        c
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn wait_operational(&self, key: &str) {
        for _ in 0..200 {
            let v: serde_json::Value =
                serde_json::from_str(&self.stdout(&["server", "show", key, "--json"])).expect("json");
            if v["state"] == "operational" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{key} never became operational");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_local_cloud_examples_are_valid() {
    let s = Served::start();
    let dry = s.stdout(&["apply", "-f", "examples/local-cloud.toml", "--dry-run"]);
    assert!(dry.contains("1 to create"), "{dry}");
    // The second file needs the image `stratus image build` registers; without it the plan
    // says exactly that.
    let out = s
        .cmd()
        .args(["apply", "-f", "examples/local-web.toml", "--dry-run"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("debian-12"), "{err}");
}

/// `examples/rebundle.toml` plans cleanly where its cloud, image and credential exist (here a
/// fake cloud named like the local one stands in).
#[test]
fn the_rebundle_example_is_valid() {
    let s = Served::start();
    let dir = tempfile::tempdir().expect("tmp");
    let stand_in = dir.path().join("stand-in.toml");
    std::fs::write(
        &stand_in,
        "[[cloud]]\nname = \"local\"\ndriver = \"fake\"\nregions = [{ name = \"local\" }]\n\
         sizes = [{ name = \"small\", cpus = 1, memory = \"512MiB\" }]\n\
         [[image]]\nname = \"debian-12\"\n[image.clouds.local]\nnative_id = \"debian-12-base\"\n",
    )
    .expect("write");
    s.stdout(&["apply", "-f", stand_in.to_str().expect("path")]);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "example-secret").expect("write");
    s.stdout(&[
        "credential",
        "create",
        "db-pass",
        "--value-file",
        secret.to_str().expect("path"),
    ]);
    let dry = s.stdout(&["apply", "-f", "examples/rebundle.toml", "--dry-run"]);
    assert!(dry.contains("to create"), "{dry}");
    assert!(dry.contains("workers") && dry.contains("build-dataset"), "{dry}");
}

/// `stratus admin migrate-store`: a SQLite control plane's state, copied into PostgreSQL, is
/// what `stratus serve --store` serves next (servers, credentials, the same admin token); the
/// database password never shows; a second copy and bad URLs are refused.
#[test]
fn a_sqlite_control_plane_moves_to_postgres() {
    let pg = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(stratus_store::testing::TestDatabase::create());
    // Trust authentication ignores the password, which lets the test look for it in output.
    let url = pg.url.replacen("postgres@", "postgres:hunter2-pw@", 1);
    assert!(url.contains("hunter2-pw"), "{url}");
    let s = Served::start();
    s.stdout(&["apply", "-f", "examples/quickstart.toml"]);
    s.wait_operational("example/app-1");
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, "moved-secret").expect("write");
    s.stdout(&[
        "credential",
        "create",
        "moved",
        "--value-file",
        secret.to_str().expect("path"),
    ]);
    let servers = s.stdout(&["--json", "server", "list"]);
    let dir = s.stop();
    let migrate = |to: &str| {
        Command::cargo_bin("stratus")
            .expect("binary")
            .args(["admin", "migrate-store", "--to", to])
            .env("STRATUS_DATA_DIR", dir.path())
            .output()
            .expect("run")
    };
    for bad in [
        "mysql://x@127.0.0.1/db",
        "postgres://postgres:hunter2-pw@127.0.0.1:1/none",
    ] {
        let out = migrate(bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(!err.contains("hunter2-pw"), "the password never shows: {err}");
    }
    let out = migrate(&url);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("copied") && said.contains("sealed credential values"),
        "{said}"
    );
    assert!(!said.contains("hunter2-pw"), "{said}");
    let again = migrate(&url);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && err.contains("empty database"), "{err}");

    let p = Served::start_in(dir, &["--store", &url]);
    assert_eq!(p.stdout(&["--json", "server", "list"]), servers, "the same servers");
    assert!(p.stdout(&["credential", "list"]).contains("moved"));
    assert!(p.stdout(&["whoami"]).contains("admin"), "the same admin token");
    // The state is in PostgreSQL now: a server launched here is there.
    p.stdout(&["server", "launch", "app-3", "-d", "example", "-t", "nginx-app"]);
    p.wait_operational("example/app-3");
    // Its stderr is read to the end, which comes when it stops.
    let log = p.log.clone();
    drop(p.stop());
    let mut text = String::new();
    for _ in 0..50 {
        text = log.lock().expect("log").clone();
        if text.contains("state in PostgreSQL") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = text;
    assert!(log.contains("state in PostgreSQL"), "{log}");
    assert!(!log.contains("hunter2-pw"), "{log}");
}

/// `stratus serve --artifacts s3://…?style=virtual`: the bucket in the host name, as on AWS,
/// against a real S3 server (SeaweedFS; scripts/test-s3.sh) that the control plane reaches as
/// BUCKET.s3.stratus.test, a name only its own mount namespace resolves. Objects go up, come
/// back whole, and reach instances through signed URLs.
#[test]
fn artifacts_in_s3_with_virtual_hosted_requests() {
    let endpoint = std::env::var("STRATUS_TEST_S3")
        .expect("STRATUS_TEST_S3 is not set: run the tests with scripts/test.sh, which starts an S3 server");
    let port = endpoint.rsplit_once(':').expect("port").1.to_string();
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).expect("random");
    let bucket = format!("stratus-v-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>());
    // The bucket, through SeaweedFS's filer (S3 port + 3).
    let filer = format!("http://127.0.0.1:{}", port.parse::<u16>().expect("port") + 3);
    let ok = Std::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            &format!("{filer}/buckets/{bucket}/"),
        ])
        .status()
        .expect("curl");
    assert!(ok.success());
    let dir = tempfile::tempdir().expect("tmp");
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n127.0.0.1 {bucket}.s3.stratus.test\n"),
    )
    .expect("hosts");
    let url = format!("s3://{bucket}/stratus?endpoint=http://s3.stratus.test:{port}&style=virtual");
    let s = Served::start_with_hosts(
        tempfile::tempdir().expect("tmp"),
        &hosts,
        &[
            ("AWS_ACCESS_KEY_ID", "stratus-test-key"),
            ("AWS_SECRET_ACCESS_KEY", "stratus-test-secret-0123456789"),
        ],
        &["--artifacts", &url],
    );
    s.stdout(&["artifact", "mb", "apps"]);
    let file = dir.path().join("site.tar.gz");
    let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_be_bytes()).collect();
    std::fs::write(&file, &body).expect("write");
    s.stdout(&["artifact", "put", file.to_str().expect("path"), "apps/site.tar.gz"]);
    let back = dir.path().join("back");
    s.stdout(&[
        "artifact",
        "get",
        "apps/site.tar.gz",
        "-o",
        back.to_str().expect("path"),
    ]);
    assert_eq!(std::fs::read(&back).expect("read"), body, "the same bytes back");
    let u: serde_json::Value =
        serde_json::from_str(&s.stdout(&["--json", "artifact", "url", "apps/site.tar.gz"])).expect("json");
    let fetched = Std::new("curl")
        .args(["-sf", u["url"].as_str().expect("url")])
        .output()
        .expect("curl");
    assert!(fetched.status.success());
    assert_eq!(fetched.stdout, body, "an instance's signed URL reads it");
    s.stdout(&["artifact", "rm", "apps/site.tar.gz"]);
    drop(s);
    let _ = Std::new("curl")
        .args([
            "-s",
            "-X",
            "DELETE",
            &format!("{filer}/buckets/{bucket}/?recursive=true"),
        ])
        .status();
}

#[test]
fn apply_is_idempotent_and_dry_run_changes_nothing() {
    let s = Served::start();
    let out = s.stdout(&["credential", "list"]);
    assert!(out.contains("(none)"), "{out}");
    let dry = s.stdout(&["apply", "-f", "examples/quickstart.toml", "--dry-run"]);
    assert!(dry.contains("dry run") && dry.contains("11 to create"), "{dry}");
    let servers: serde_json::Value = serde_json::from_str(&s.stdout(&["server", "list", "--json"])).expect("json");
    assert_eq!(servers.as_array().map(Vec::len), Some(0), "dry run created servers");
    let first = s.stdout(&["apply", "-f", "examples/quickstart.toml"]);
    assert!(
        first.contains("applied: 11 to create, 0 to update, 0 unchanged"),
        "{first}"
    );
    let second = s.stdout(&["apply", "-f", "examples/quickstart.toml"]);
    assert!(
        second.contains("applied: 0 to create, 0 to update, 11 unchanged"),
        "{second}"
    );
    for name in ["lb-1", "app-1", "app-2"] {
        s.wait_operational(&format!("example/{name}"));
    }
    let table = s.stdout(&["server", "list", "--deployment", "example"]);
    assert!(
        table.contains("app-2") && table.contains("operational") && table.contains("lb:pool=www"),
        "{table}"
    );
    let runs = s.stdout(&["runs", "list", "--server", "example/app-1"]);
    assert!(runs.contains("nginx-install") && runs.contains("succeeded"), "{runs}");
}

#[test]
fn launch_terminate_and_exit_codes() {
    let s = Served::start();
    s.stdout(&["apply", "-f", "examples/quickstart.toml"]);
    let launched = s.stdout(&[
        "server",
        "launch",
        "app-3",
        "-d",
        "example",
        "-t",
        "nginx-app",
        "--size",
        "cpus=2,memory=1GiB",
        "--wait",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&launched).expect("json");
    assert_eq!(
        (v["state"].as_str(), v["size"].as_str()),
        (Some("operational"), Some("medium")),
        "{v}"
    );
    s.stdout(&["server", "terminate", "example/app-3", "--wait"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout(&["server", "show", "example/app-3", "--json"]))
        .ok()
        .unwrap_or_default();
    assert!(v.is_null() || v["state"] == "terminated", "{v}");

    let bad = s
        .cmd()
        .args([
            "server",
            "launch",
            "x",
            "-d",
            "example",
            "-t",
            "nginx-app",
            "--tag",
            "no-colon",
        ])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid tag \"no-colon\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let missing = s.cmd().args(["server", "show", "example/nope"]).output().expect("run");
    assert_eq!(missing.status.code(), Some(3));
    let unauth = s
        .cmd()
        .env("STRATUS_TOKEN", "stratus_bogus")
        .args(["server", "list"])
        .output()
        .expect("run");
    assert_eq!(unauth.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&unauth.stderr).contains("stratus login"));
    let dupe = s
        .cmd()
        .args(["deployment", "create", "-f", "/dev/null"])
        .output()
        .expect("run");
    assert!(!dupe.status.success());
}

#[test]
fn credential_values_never_come_back() {
    let s = Served::start();
    let secret = "zq-UNIQUE-credential-value-8812";
    s.cmd()
        .args(["credential", "create", "db-password"])
        .write_stdin(secret)
        .assert()
        .success();
    let mut seen = String::new();
    for args in [
        &["credential", "list", "--json"][..],
        &["credential", "show", "db-password", "--json"],
        &["audit", "--json"],
    ] {
        seen.push_str(&s.stdout(args));
    }
    let again = s
        .cmd()
        .args(["credential", "create", "db-password"])
        .write_stdin(secret)
        .output()
        .expect("run");
    assert_eq!(again.status.code(), Some(4), "duplicate name is a conflict");
    seen.push_str(&String::from_utf8_lossy(&again.stderr));
    std::thread::sleep(Duration::from_millis(200));
    seen.push_str(&s.log.lock().expect("log"));
    assert!(seen.contains("db-password"));
    assert!(!seen.contains(secret), "the credential value leaked");
}

#[test]
fn credential_scope_flags_set_and_keep_the_scope() {
    let s = Served::start();
    let show = |name: &str| -> serde_json::Value {
        serde_json::from_str(&s.stdout(&["credential", "show", name, "--json"])).expect("json")
    };
    // Defaults: admins attach, every deployment.
    s.cmd()
        .args(["credential", "create", "plain"])
        .write_stdin("v-1")
        .assert()
        .success();
    let v = show("plain");
    assert_eq!(
        (v["attach"].as_str(), v["deployments"].clone()),
        (Some("admin"), serde_json::json!(["*"]))
    );
    s.cmd()
        .args([
            "credential",
            "create",
            "db",
            "-d",
            "prod-*",
            "--deployment",
            "staging",
            "--attach",
            "operator",
        ])
        .write_stdin("v-2")
        .assert()
        .success();
    let v = show("db");
    assert_eq!(v["attach"], "operator");
    assert_eq!(v["deployments"], serde_json::json!(["prod-*", "staging"]));
    // A new value keeps the scope; new flags change it.
    s.cmd()
        .args(["credential", "set", "db"])
        .write_stdin("v-3")
        .assert()
        .success();
    assert_eq!(show("db")["deployments"], serde_json::json!(["prod-*", "staging"]));
    s.cmd()
        .args(["credential", "set", "db", "--attach", "admin", "-d", "prod-eu"])
        .write_stdin("v-4")
        .assert()
        .success();
    let v = show("db");
    assert_eq!(
        (v["attach"].as_str(), v["deployments"].clone()),
        (Some("admin"), serde_json::json!(["prod-eu"]))
    );
    // Bad scopes: a clear error, nothing changed.
    let out = s
        .cmd()
        .args(["credential", "set", "db", "-d", "Prod EU"])
        .write_stdin("v-5")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("deployments[0]"), "{err}");
    assert_eq!(show("db")["deployments"], serde_json::json!(["prod-eu"]));
    let out = s
        .cmd()
        .args(["credential", "create", "x", "--attach", "observer"])
        .write_stdin("v")
        .output()
        .expect("run");
    assert!(!out.status.success(), "clap refuses an unknown role");
}

#[test]
fn malformed_files_name_the_problem() {
    let s = Served::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[template]]\nname = \"web\"\nimage = \"x\"\nboot_script = []\n").expect("write");
    let out = s.cmd().args(["apply", "-f"]).arg(&bad).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("template[0]") && err.contains("boot_script"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "[[template]]\nname = \"web\"\nimage = \"nope\"\nboot_scripts = [\"missing\"]\n",
    )
    .expect("write");
    let out = s.cmd().args(["apply", "-f"]).arg(&bad).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("template[0].image: no image named nope")
            && err.contains("boot_scripts[0]: no script named missing"),
        "{err}"
    );
    assert!(
        s.stdout(&["template", "list"]).contains("(none)"),
        "a failed apply created something"
    );
}

/// A deployment file (or a `script put -f` file) written by someone else cannot make the person
/// applying it upload their own files: `body_file` stays beneath the file's directory.
#[test]
fn body_file_cannot_reach_outside_the_file_directory() {
    let s = Served::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("cli.toml");
    std::fs::write(&secret, "token = \"stratus_TOPSECRET_token\"\n").expect("write");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("scripts")).expect("mkdir");
    std::os::unix::fs::symlink(&secret, repo.join("scripts/setup.sh")).expect("symlink");
    std::os::unix::fs::symlink("..", repo.join("up")).expect("symlink");
    let deployment = repo.join("deploy.toml");
    let script = repo.join("script.toml");
    for target in [
        secret.display().to_string(),
        "../cli.toml".into(),
        "scripts/setup.sh".into(),
        "up/cli.toml".into(),
    ] {
        std::fs::write(
            &deployment,
            format!("[[script]]\nname = \"setup\"\nbody_file = {target:?}\n"),
        )
        .expect("write");
        std::fs::write(&script, format!("name = \"setup\"\nbody_file = {target:?}\n")).expect("write");
        for args in [vec!["apply", "-f"], vec!["script", "put", "-f"]] {
            let file = if args[0] == "apply" { &deployment } else { &script };
            let out = s.cmd().args(&args).arg(file).output().expect("run");
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{args:?} {target}: {all}");
            assert!(all.contains("body_file"), "{args:?} {target}: {all}");
            assert!(!all.contains("TOPSECRET"), "{args:?} {target}: {all}");
        }
    }
    let listed = s.stdout(&["script", "list", "--json"]);
    assert!(!listed.contains("setup"), "nothing was uploaded: {listed}");
}

#[test]
fn the_sandbox_quickstart_up_again_and_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let run = |extra: &[&str]| {
        let mut c = Command::cargo_bin("stratus").expect("binary");
        c.current_dir(workspace())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .arg("--data-dir")
            .arg(dir.path());
        c.args(["quickstart", "--sandbox", "--exit", "--listen", &listen])
            .args(extra)
            .output()
            .expect("run")
    };
    let up = run(&[]);
    let text = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success() && text.contains("3 servers operational"),
        "{text}{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(dir.path().join("admin.token").exists());
    let again = run(&[]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("11 unchanged"),
        "second run reuses what exists"
    );
    let down = run(&["--down"]);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let up2 = run(&[]);
    assert!(
        String::from_utf8_lossy(&up2.stdout).contains("11 to create"),
        "down removed everything it created"
    );
}

#[test]
fn artifacts_put_get_ls_and_refusals() {
    let s = Served::start();
    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("site.tar.gz");
    let content: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(&file, &content).expect("write");

    // No bucket yet: the error says how to make one.
    let out = s
        .cmd()
        .args(["artifact", "put"])
        .arg(&file)
        .arg("apps/web/site.tar.gz")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stratus artifact mb apps"), "{err}");

    s.stdout(&["artifact", "mb", "apps"]);
    let put = s.stdout(&["artifact", "put", file.to_str().unwrap(), "apps/web/site.tar.gz"]);
    assert!(put.contains("1200000 bytes"), "{put}");
    let ls = s.stdout(&["artifact", "ls", "apps/web/"]);
    assert!(ls.contains("web/site.tar.gz"), "{ls}");
    assert!(s.stdout(&["artifact", "ls"]).contains("apps"));

    let got = work.path().join("got.tgz");
    let get = s.stdout(&["artifact", "get", "apps/web/site.tar.gz", "-o", got.to_str().unwrap()]);
    assert!(get.contains("sha256 verified"), "{get}");
    assert_eq!(std::fs::read(&got).expect("read"), content);
    let stdout = s
        .cmd()
        .args(["artifact", "get", "apps/web/site.tar.gz", "-o", "-"])
        .output()
        .expect("run");
    assert_eq!(stdout.stdout, content);

    let url = s.stdout(&["artifact", "url", "apps/web/site.tar.gz", "--ttl", "60"]);
    assert!(url.trim().starts_with(&s.url) && url.contains("sig="), "{url}");
    let info: serde_json::Value =
        serde_json::from_str(&s.stdout(&["artifact", "info", "apps/web/site.tar.gz", "--json"])).expect("json");
    assert_eq!(info["size"], 1_200_000);

    // Hostile paths are refused before anything is sent; a missing object is a clear error.
    for bad in ["apps", "apps/../x", "apps//x", "Apps/x"] {
        let out = s.cmd().args(["artifact", "get", bad]).output().expect("run");
        assert!(!out.status.success(), "{bad}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    let out = s
        .cmd()
        .args(["artifact", "get", "apps/missing", "-o"])
        .arg(work.path().join("m"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!work.path().join("m").exists());

    s.stdout(&["artifact", "rm", "apps/web/site.tar.gz"]);
    s.stdout(&["artifact", "rb", "apps"]);
    assert!(s.stdout(&["artifact", "ls"]).contains("(none)"));
}

#[test]
fn admin_tasks_lists_the_background_tasks() {
    let s = Served::start();
    s.stdout(&["apply", "-f", "examples/quickstart.toml"]);
    s.wait_operational("example/app-1");
    let table = s.stdout(&["admin", "tasks"]);
    for task in ["lifecycle", "drift", "arrays", "lb-sync", "rollouts", "gc"] {
        assert!(table.contains(task), "{task} missing from:\n{table}");
    }
    assert!(table.contains("(leader)"), "{table}");
    let json = s.stdout(&["admin", "tasks", "--json"]);
    let v: stratus_api::views::BackgroundTasks = serde_json::from_str(&json).expect("typed JSON");
    let life = v
        .tasks
        .iter()
        .find(|t| t.name.starts_with("lifecycle/"))
        .expect("a lifecycle task per cloud");
    assert!(life.runs > 0, "{life:?}");
}
