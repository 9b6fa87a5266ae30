//! End to end on the local cloud: `stratus serve` (a child process, killed and restarted),
//! a `local` cloud, an imported busybox image, a server that is a real instance; the instance
//! outlives the control plane, its death is noticed, elastic IPs reach it, terminate removes
//! it. Needs root, iproute2, nftables and busybox-static (installed by scripts/test.sh).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Plane {
    child: Option<Child>,
    url: String,
    data: PathBuf,
}

impl Plane {
    fn start(data: &Path) -> Self {
        Self::start_at(data, "127.0.0.1:0")
    }

    /// Start on `listen`: a restart on the same address keeps the URL its instances' agents
    /// were given.
    fn start_at(data: &Path, listen: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(["serve", "--listen", listen, "--boot-deadline", "600", "--data-dir"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let url = loop {
            let line = lines.next().expect("serve printed its address").expect("line");
            if let Some(rest) = line.strip_prefix("Stratus control plane listening on ") {
                break rest.split_whitespace().next().expect("url").to_string();
            }
        };
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Self {
            child: Some(child),
            url,
            data: data.to_path_buf(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stratus(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .args(args)
            .env("STRATUS_URL", &self.url)
            .env("STRATUS_DATA_DIR", &self.data)
            .env("XDG_CONFIG_HOME", self.data.join("config"))
            .env_remove("STRATUS_TOKEN")
            .output()
            .expect("run stratus");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.stratus(args);
        assert!(ok, "stratus {args:?} failed: {out}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stratus {args:?}: not JSON ({e}):\n{out}"))
    }

    /// Poll a server until `want` holds (bounded: 120 s; several local-cloud tests run at once
    /// on two cores, each building a Debian image, so boots can take a while).
    fn wait_server(&self, key: &str, want: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..1200 {
            let v = self.json(&["server", "show", key]);
            if want(&v) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "server {key} never got there: {}\nconsole:\n{}",
            self.json(&["server", "show", key]),
            self.stratus(&["server", "console", key]).1
        );
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes the cloud's host-side pieces even when the test fails.
struct Cleanup {
    tag: String,
    state: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        stratus_local::purge::purge(&self.tag, Some(&self.state));
    }
}

fn busybox_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "etc/stratus/boot.d", "www"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "httpd", "hostname", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
    }
    let boot = root.join("etc/stratus/boot.d/50-httpd");
    std::fs::write(&boot, "#!/bin/sh\nhostname > /www/index.html\nhttpd -p 8080 -h /www\n").expect("boot");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&boot, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tar = dir.join("busybox.tar.gz");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-czf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success());
    tar
}

/// GET `http://host:port/` with a plain socket; the body of a 200.
/// Writes (argv[1]) a tar.gz whose links each pass a textual check but climb out once followed,
/// with a hard link through them to /etc/shadow (finding 3 of the security review).
const CHAIN_ARCHIVE: &str = r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w:gz") as t:
    def add(name, kind, target=""):
        i = tarfile.TarInfo(name); i.type = kind; i.linkname = target
        i.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
        if kind == tarfile.REGTYPE:
            data = b"chain\n"; i.size = len(data); t.addfile(i, io.BytesIO(data))
        else:
            t.addfile(i)
    add("index.html", tarfile.REGTYPE)
    add("d", tarfile.DIRTYPE)
    add("d/up", tarfile.SYMTYPE, "..")
    add("r1", tarfile.SYMTYPE, "d/up/..")
    add("r2", tarfile.SYMTYPE, "d/up/r1/..")
    add("r3", tarfile.SYMTYPE, "d/up/r2/..")
    add("r4", tarfile.SYMTYPE, "d/up/r3/..")
    add("r5", tarfile.SYMTYPE, "d/up/r4/..")
    add("shadow", tarfile.LNKTYPE, "r5/etc/shadow")
"#;

fn http(url: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://")?.trim_end_matches('/');
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.trim().to_string())
}

/// GET from inside a network namespace (host busybox `nc`, in the instance's network).
fn in_netns(netns: &str, addr: &str, path: &str) -> Option<String> {
    request_in_netns(netns, addr, &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n"))
}

/// GET a metadata path from inside a network namespace the IMDSv2 way, as the agent does: a
/// session token first (a new local cloud answers nothing without one).
fn metadata_in_netns(netns: &str, path: &str) -> Option<String> {
    let md = "169.254.169.254:80";
    let put = "PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
    let token = request_in_netns(netns, md, put)?;
    let get = format!(
        "GET {path} HTTP/1.0\r\nX-aws-ec2-metadata-token: {}\r\n\r\n",
        token.trim()
    );
    request_in_netns(netns, md, &get)
}

/// Send a raw HTTP/1.0 request from inside a network namespace; the body of a 200.
fn request_in_netns(netns: &str, addr: &str, request: &str) -> Option<String> {
    use std::io::Write;
    let (host, port) = addr.rsplit_once(':')?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "busybox", "nc", "-w", "2", host, port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    // Keep our end open until the answer is in: the API server (hyper) drops a client that
    // half-closes before it has answered.
    let mut stdin = child.stdin.take()?;
    stdin.write_all(request.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

/// POST a JSON body from inside a network namespace; (status line, body).
fn post_in_netns(netns: &str, addr: &str, path: &str, json: &str) -> Option<(String, String)> {
    use std::io::Write;
    let (host, port) = addr.rsplit_once(':')?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "busybox", "nc", "-w", "2", host, port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    );
    stdin.write_all(request.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

fn eventually_http(url: &str) -> Option<String> {
    for _ in 0..100 {
        if let Some(b) = http(url) {
            return Some(b);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn random_octet() -> u8 {
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).expect("random");
    b[0]
}

/// A scratch directory under /var/tmp, the control plane's data directory in it, and the
/// clean-up of local cloud `cloud`'s host-side pieces (bound before the plane, so it runs after
/// the plane is gone, and before the directory is).
fn scratch(prefix: &str, cloud: &str) -> (tempfile::TempDir, PathBuf, Cleanup) {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let cleanup = Cleanup {
        tag: stratus_server::drivers::network_tag(&data, cloud),
        state: data.join("local/clouds").join(cloud),
    };
    (tmp, data, cleanup)
}

/// Declare local cloud `name` on its own subnet `10.a.b.0/24` (no outbound NAT, one 512 MiB
/// size), with `extra` lines in its `[[cloud]]` table (address pools).
fn declare_local_cloud(plane: &Plane, dir: &Path, name: &str, (a, b): (u8, u8), extra: &str) {
    let file = dir.join(format!("cloud-{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[[cloud]]\nname = \"{name}\"\ndriver = \"local\"\nregions = [{{ name = \"local\" }}]\n\
             sizes = [{{ name = \"small\", cpus = 1, memory = \"512MiB\" }}]\n{extra}\n[cloud.local]\n\
             subnet = \"10.{a}.{b}.0/24\"\noutbound_nat = false\n"
        ),
    )
    .expect("write");
    plane.ok(&["apply", "-f", file.to_str().expect("path")]);
}

#[test]
fn a_server_on_the_local_cloud_is_a_real_instance_that_outlives_the_control_plane() {
    let tmp = tempfile::Builder::new()
        .prefix("stratus-e2e-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let _cleanup = Cleanup {
        tag: stratus_server::drivers::network_tag(&data, "home"),
        state: data.join("local/clouds/home"),
    };
    let (a, b) = (100 + random_octet() % 50, random_octet());
    let mut plane = Plane::start(&data);
    let file = tmp.path().join("deploy.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[cloud]]
name = "home"
driver = "local"
regions = [{{ name = "here" }}]
sizes = [{{ name = "tiny", cpus = 1, memory = "128MiB" }}]
address_pools = [{{ name = "public", cidr = "10.{pool}.{b}.0/28" }}]
[cloud.local]
subnet = "10.{a}.{b}.0/24"
outbound_nat = false
"#,
            pool = a + 50
        ),
    )
    .expect("write");
    plane.ok(&["apply", "-f", file.to_str().expect("path")]);

    // Import an image and register it; the same tarball again is the same native image.
    let tar = busybox_tarball(tmp.path());
    let first = plane.ok(&[
        "image",
        "import",
        tar.to_str().expect("path"),
        "--name",
        "tiny",
        "--cloud",
        "home",
    ]);
    let again = plane.ok(&[
        "image",
        "import",
        tar.to_str().expect("path"),
        "--name",
        "tiny",
        "--cloud",
        "home",
    ]);
    let native = |s: &str| s.split(": ").last().map(str::trim).map(str::to_string);
    assert_eq!(native(&first), native(&again), "{first} / {again}");
    let (ok, out) = plane.stratus(&[
        "image",
        "import",
        "/nonexistent.tar",
        "--name",
        "tiny",
        "--cloud",
        "home",
    ]);
    assert!(
        !ok && out.contains("nonexistent"),
        "a missing file is a clear error: {out}"
    );

    std::fs::write(
        &file,
        r#"
[[template]]
name = "web"
image = "tiny"
size = "tiny"
[deployment]
name = "demo"
cloud = "home"
[[server]]
name = "web-1"
template = "web"
"#,
    )
    .expect("write");
    plane.ok(&["apply", "-f", file.to_str().expect("path")]);
    let s = plane.wait_server("demo/web-1", |v| v["state"] == "booting" && v["private_ip"].is_string());
    let ip = s["private_ip"].as_str().expect("ip").to_string();
    let instance = s["instance_id"].as_str().expect("instance").to_string();
    assert_eq!(eventually_http(&format!("http://{ip}:8080/")).as_deref(), Some("web-1"));

    // From inside, the instance reads its user-data from the metadata service, and the
    // control-plane URL there (the bridge's gateway) answers.
    let netns = format!(
        "stratus-{}-{instance}",
        stratus_server::drivers::network_tag(&data, "home")
    );
    // A cloud declared without `metadata_tokens` requires them (IMDSv2 only).
    assert_eq!(
        in_netns(&netns, "169.254.169.254:80", "/latest/user-data"),
        None,
        "IMDSv1 is refused on a new cloud"
    );
    let user_data = metadata_in_netns(&netns, "/latest/user-data").expect("user-data");
    let url: Value = serde_json::from_str(&user_data).expect("user-data is JSON");
    let cp = url["stratus_url"]
        .as_str()
        .expect("url")
        .trim_start_matches("http://")
        .to_string();
    assert!(cp.starts_with(&format!("10.{a}.{b}.1:")), "the gateway address: {cp}");
    let health = in_netns(&netns, &cp, "/api/v1/health").expect("the control plane answers instances");
    assert!(health.contains("ok"), "{health}");

    // Enrolment from inside, as the agent does it: the signed identity document is required
    // on this cloud, a forged one is refused, the real one works once.
    let doc = metadata_in_netns(&netns, "/latest/dynamic/instance-identity/document").expect("doc");
    let sig = metadata_in_netns(&netns, "/latest/dynamic/instance-identity/signature").expect("sig");
    let enrol = |body: Value| post_in_netns(&netns, &cp, "/api/v1/agent/enroll", &body.to_string());
    let base = serde_json::json!({ "server_id": url["server_id"], "enrolment_token": url["enrolment_token"] });
    let (status, _) = enrol(base.clone()).expect("answer");
    assert!(
        status.contains(" 400 "),
        "the identity document is required here: {status}"
    );
    let mut forged = base.clone();
    forged["identity_document"] = doc.replace(&instance, "i-00000000000000000").into();
    forged["identity_signature"] = sig.clone().into();
    let (status, _) = enrol(forged).expect("answer");
    assert!(status.contains(" 401 "), "a forged document is refused: {status}");
    let mut real = base;
    real["identity_document"] = doc.into();
    real["identity_signature"] = sig.into();
    let (status, body) = enrol(real.clone()).expect("answer");
    assert!(
        status.contains(" 200 ") && body.contains("stratus_agent_"),
        "{status} {body}"
    );
    let (status, _) = enrol(real).expect("answer");
    assert!(status.contains(" 409 "), "a token works once: {status}");

    // The control plane dies; the instance does not. A new control plane finds it.
    plane.kill();
    assert_eq!(
        http(&format!("http://{ip}:8080/")).as_deref(),
        Some("web-1"),
        "serving without a control plane"
    );
    let plane = Plane::start(&data);
    let s = plane.json(&["server", "show", "demo/web-1"]);
    assert_eq!(
        (s["state"].as_str(), s["instance_id"].as_str()),
        (Some("booting"), Some(instance.as_str()))
    );

    // A reboot keeps the instance and its address; init runs the boot hooks again.
    plane.ok(&["server", "reboot", "demo/web-1"]);
    assert_eq!(
        eventually_http(&format!("http://{ip}:8080/")).as_deref(),
        Some("web-1"),
        "back after a reboot"
    );
    assert_eq!(
        plane.json(&["server", "show", "demo/web-1"])["instance_id"],
        instance.as_str()
    );

    // An elastic IP reaches it.
    plane.ok(&["address", "allocate", "vip", "--cloud", "home"]);
    plane.ok(&["address", "associate", "vip", "demo/web-1"]);
    let vip = plane.json(&["address", "show", "vip"])["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    assert_eq!(
        eventually_http(&format!("http://{vip}:8080/")).as_deref(),
        Some("web-1")
    );

    // Its processes die behind our back: the server is stranded with the cloud's reason.
    let procs = std::fs::read_dir("/sys/fs/cgroup")
        .ok()
        .and_then(|_| {
            let tag = stratus_server::drivers::network_tag(&data, "home");
            ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
                .iter()
                .map(|r| {
                    Path::new(r)
                        .join("stratus")
                        .join(&tag)
                        .join(&instance)
                        .join("cgroup.procs")
                })
                .find(|p| p.exists())
        })
        .expect("the instance's cgroup");
    for pid in std::fs::read_to_string(&procs).expect("procs").lines() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let s = plane.wait_server("demo/web-1", |v| v["state"] == "stranded");
    let why = s["stranded"]["message"].as_str().unwrap_or_default();
    assert!(why.contains("processes are gone"), "{s}");
    // The console shows what init printed, for finding out why.
    let console = plane.ok(&["server", "console", "demo/web-1"]);
    assert!(
        console.contains("stratus-init:") && console.contains("50-httpd"),
        "{console}"
    );

    // Terminate removes the instance from the host.
    plane.ok(&["server", "terminate", "demo/web-1"]);
    plane.wait_server("demo/web-1", |v| v["state"] == "terminated");
    let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&instance),
        "namespace removed"
    );
    assert!(http(&format!("http://{ip}:8080/")).is_none());

    // Deleting the cloud removes its network from the host.
    plane.ok(&["address", "release", "vip"]);
    for (kind, name) in [
        ("deployment", "demo"),
        ("template", "web"),
        ("image", "tiny"),
        ("cloud", "home"),
    ] {
        plane.ok(&[kind, "delete", name]);
    }
    let tag = stratus_server::drivers::network_tag(&data, "home");
    assert!(
        !Path::new("/sys/class/net").join(format!("st-{tag}")).exists(),
        "bridge removed"
    );
}

/// What the host holds of local cloud `tag`: its links (bridge `st-TAG`, the veth `veth`),
/// namespaces, nftables tables, cgroups, mounts under `data`, and listeners on `gateway`.
fn on_host(tag: &str, veth: &str, data: &Path, gateway: &str) -> Vec<String> {
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().expect("host tool");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut found: Vec<String> = run(&["ip", "-o", "link", "show"])
        .lines()
        .filter(|l| l.contains(&format!("st-{tag}")) || l.contains(veth))
        .map(|l| format!("link: {l}"))
        .collect();
    let mine = |text: String, what: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(tag))
            .map(|l| format!("{what}: {l}"))
            .collect()
    };
    found.extend(mine(run(&["ip", "netns", "list"]), "netns"));
    found.extend(mine(run(&["nft", "list", "tables"]), "nftables"));
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/pids",
    ] {
        let group = Path::new(root).join("stratus").join(tag);
        if group.exists() {
            found.push(format!("cgroup: {}", group.display()));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let data = data.to_string_lossy().into_owned();
    found.extend(
        mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&data))
            .map(|m| format!("mount: {m}")),
    );
    found.extend(
        run(&["ss", "-ltnH"])
            .lines()
            .filter(|l| l.contains(&format!("{gateway}:")))
            .map(|l| format!("listener: {l}")),
    );
    found
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").map(|e| e.expect("entry")) {
            if e.file_type().expect("type").is_dir() {
                todo.push(e.path());
            }
            out.insert(e.path().strip_prefix(dir).expect("under").display().to_string());
        }
    }
    out
}

/// Create then delete every kind of resource on a local cloud (an imported image, a server
/// with an elastic IP, the cloud itself): nothing is left on the host (links, namespaces,
/// nftables tables and rules, cgroups, mounts, listeners) or in the data directory (the
/// image's tree, the instance's directory, the cloud's state and identity key). The same
/// on the fake cloud, for every resource: `crates/server/tests/cleanup.rs`.
#[test]
fn every_delete_on_the_local_cloud_leaves_nothing_behind() {
    let (tmp, data, _cleanup) = scratch("stratus-tidy-", "tidy");
    let (a, b) = (100 + random_octet() % 50, random_octet());
    let gateway = format!("10.{a}.{b}.1");
    let tag = stratus_server::drivers::network_tag(&data, "tidy");
    let plane = Plane::start(&data);
    plane.ok(&["cloud", "list"]);
    let before = tree(&data);
    let pool = format!(
        "address_pools = [{{ name = \"public\", cidr = \"10.{}.{b}.0/28\" }}]",
        a + 50
    );
    declare_local_cloud(&plane, tmp.path(), "tidy", (a, b), &pool);
    let tar = busybox_tarball(tmp.path());
    let tar = tar.to_str().expect("path");
    plane.ok(&["image", "import", tar, "--name", "tidy", "--cloud", "tidy"]);
    let native = plane.json(&["image", "show", "tidy"])["clouds"]["tidy"]["native_id"]
        .as_str()
        .expect("native id")
        .to_string();
    let file = tmp.path().join("servers.toml");
    std::fs::write(
        &file,
        "[[template]]\nname = \"web\"\nimage = \"tidy\"\nsize = \"small\"\n\
         [deployment]\nname = \"tidy\"\ncloud = \"tidy\"\n[[server]]\nname = \"web-1\"\ntemplate = \"web\"\n",
    )
    .expect("write");
    plane.ok(&["apply", "-f", file.to_str().expect("path")]);
    let s = plane.wait_server("tidy/web-1", |v| v["state"] == "booting" && v["private_ip"].is_string());
    let instance = s["instance_id"].as_str().expect("instance").to_string();
    let veth = format!("sv{}", &instance[2..15]);
    assert!(
        data.join("local/images").join(&native).exists() && !on_host(&tag, &veth, &data, &gateway).is_empty(),
        "the image is on disk and the cloud on the host"
    );

    // An elastic IP: associated, it is a NAT rule; released, the rule is gone.
    plane.ok(&["address", "allocate", "vip", "--cloud", "tidy"]);
    plane.ok(&["address", "associate", "vip", "tidy/web-1"]);
    let vip = plane.json(&["address", "show", "vip"])["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let nat = || {
        let out = Command::new("nft")
            .args(["list", "table", "ip", &format!("stratus-{tag}")])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(nat().contains(&vip), "the address is NATed: {}", nat());
    plane.ok(&["address", "disassociate", "vip"]);
    plane.ok(&["address", "release", "vip"]);
    assert!(!nat().contains(&vip), "no rule for a released address: {}", nat());

    // The image is in use: refused, and it stays on disk.
    let (ok, out) = plane.stratus(&["image", "delete", "tidy"]);
    assert!(!ok && out.contains("web"), "{out}");
    assert!(data.join("local/images").join(&native).exists());

    plane.ok(&["server", "terminate", "tidy/web-1"]);
    plane.wait_server("tidy/web-1", |v| v["state"] == "terminated");
    // Terminating removed the instance itself, before the cloud goes.
    let of_instance: Vec<String> = on_host(&tag, &veth, &data, &gateway)
        .into_iter()
        .filter(|l| l.contains(&instance) || l.contains(&veth))
        .collect();
    assert_eq!(of_instance, Vec::<String>::new(), "left of the terminated instance");
    let cgroup_v2 = Path::new("/sys/fs/cgroup/stratus").join(&tag).join(&instance);
    assert!(!cgroup_v2.exists(), "its cgroup is gone");
    let dir = data.join("local/clouds/tidy/instances").join(&instance);
    assert!(!dir.exists(), "its directory is gone");
    for (kind, name) in [
        ("deployment", "tidy"),
        ("template", "web"),
        ("image", "tidy"),
        ("cloud", "tidy"),
    ] {
        plane.ok(&[kind, "delete", name]);
    }
    assert_eq!(
        on_host(&tag, &veth, &data, &gateway),
        Vec::<String>::new(),
        "left on the host"
    );
    // The local cloud's store directories stay (empty): the image store is shared by every
    // local cloud of the data directory.
    let infrastructure = ["local", "local/clouds", "local/images"];
    let left: Vec<String> = tree(&data)
        .difference(&before)
        .filter(|p| !p.starts_with("stratus.db") && !infrastructure.contains(&p.as_str()))
        .cloned()
        .collect();
    assert_eq!(left, Vec::<String>::new(), "left in the data directory");
}

/// The whole path on a real Debian image: the agent inside the instance reads its user-data
/// and identity from the metadata service, enrols, runs the boot script, and the server turns
/// operational; a failing script strands its server with the exit code.
#[test]
fn the_agent_inside_a_debian_instance_boots_its_server() {
    let (tmp, data, _cleanup) = scratch("stratus-e2e-", "deb");
    let plane = Plane::start(&data);
    declare_local_cloud(
        &plane,
        tmp.path(),
        "deb",
        (100 + random_octet() % 50, random_octet()),
        "",
    );
    let file = tmp.path().join("deploy.toml");
    // The real image path: debootstrap minbase (about 40 s).
    plane.ok(&[
        "image",
        "build",
        "--cloud",
        "deb",
        "--name",
        "debian",
        "--package",
        "procps",
    ]);
    std::fs::write(
        &file,
        r##"
[[script]]
name = "hello"
frequency = "per-instance"
inputs = [{ name = "WHO", default = "world" }]
body = """#!/bin/sh
set -e
echo "hello $WHO from $(hostname)"
test -x /usr/local/sbin/stratus-agent
"""

[[script]]
name = "every"
frequency = "every-boot"
body = """#!/bin/sh
set -e
echo "booted at $(cut -d' ' -f22 /proc/1/stat)"
stratus-agent tag add app:booted=yes
stratus-agent tag query app:role=web
"""

[[script]]
name = "broken"
frequency = "per-instance"
body = """#!/bin/sh
echo "going down"
exit 7
"""

[[script]]
name = "report"
frequency = "on-demand"
body = """#!/bin/sh
echo "report from $(hostname): $(cat /etc/os-release | head -1)"
"""

[[script]]
name = "slow"
frequency = "on-demand"
body = """#!/bin/sh
for i in 1 2 3 4 5 6 7 8; do echo "tick $i"; sleep 1; done
"""

[[script]]
name = "bye"
frequency = "on-demand"
body = """#!/bin/sh
echo "bye from $(hostname)"
"""

[[template]]
name = "good"
image = "debian"
size = "small"
boot_scripts = ["hello", "every"]
operational_scripts = ["report", "slow"]
decommission_scripts = ["bye"]
default_tags = ["app:role=web"]

[[template]]
name = "bad"
image = "debian"
size = "small"
boot_scripts = ["broken"]

[deployment]
name = "demo"
cloud = "deb"

[[server]]
name = "ok-1"
template = "good"

[[server]]
name = "ok-2"
template = "good"

[[server]]
name = "ko-1"
template = "bad"
"##,
    )
    .expect("write");
    plane.ok(&["apply", "-f", file.to_str().expect("path")]);
    let settled = |v: &Value| matches!(v["state"].as_str(), Some("operational" | "stranded"));
    for name in ["demo/ok-1", "demo/ok-2"] {
        let ok = plane.wait_server(name, settled);
        assert_eq!(
            ok["state"],
            "operational",
            "{ok}\nconsole:\n{}",
            plane.stratus(&["server", "console", name]).1
        );
    }
    let runs = plane.json(&["runs", "list", "--server", "demo/ok-1"]);
    let output_of = |runs: &Value, script: &str| -> Vec<String> {
        runs.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["script"] == script)
            .map(|r| r["output"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(output_of(&runs, "hello")[0].contains("hello world from ok-1"), "{runs}");
    // A boot script tagged its own server and saw its peers through the agent.
    let every = &output_of(&runs, "every")[0];
    assert!(every.contains("ok-2"), "tag query from a boot script: {every}");
    let ok1 = plane.json(&["server", "show", "demo/ok-1"]);
    assert!(
        ok1["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&"app:booted=yes".into())),
        "{ok1}"
    );

    // An operational script through the agent, followed live; then on every web server.
    let followed = plane.ok(&["run", "report", "--on", "demo/ok-1", "--follow"]);
    assert!(
        followed.contains("report from ok-1: PRETTY_NAME=\"Debian GNU/Linux 12"),
        "{followed}"
    );
    assert!(followed.contains("succeeded"), "{followed}");
    let rollout = plane.ok(&[
        "run",
        "report",
        "--tag",
        "app:role=web",
        "--concurrency",
        "1",
        "--follow",
    ]);
    assert!(
        rollout.contains("demo/ok-1: succeeded") && rollout.contains("demo/ok-2: succeeded"),
        "{rollout}"
    );
    assert!(rollout.contains("2 succeeded, 0 failed"), "{rollout}");

    // Cancel: the agent stops the script's processes.
    let started = plane.json(&["run", "slow", "--on", "demo/ok-1"]);
    let id = started["id"].as_str().expect("run id").to_string();
    wait_run(&plane, &id, |r| {
        r["output"].as_str().is_some_and(|o| o.contains("tick 1"))
    });
    plane.ok(&["runs", "cancel", &id]);
    let cancelled = wait_run(&plane, &id, |r| r["status"] != "running");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        !cancelled["output"].as_str().unwrap_or_default().contains("tick 8"),
        "{cancelled}"
    );

    // The control plane goes away mid-run: the agent keeps the output and delivers it, once.
    let started = plane.json(&["run", "slow", "--on", "demo/ok-2"]);
    let id = started["id"].as_str().expect("run id").to_string();
    wait_run(&plane, &id, |r| {
        r["output"].as_str().is_some_and(|o| o.contains("tick 2"))
    });
    let mut plane = plane;
    plane.kill();
    std::thread::sleep(Duration::from_secs(3));
    let listen = plane.url.trim_start_matches("http://").to_string();
    let plane = Plane::start_at(&data, &listen);
    let done = wait_run(&plane, &id, |r| r["status"] != "running" && r["status"] != "queued");
    assert_eq!(done["status"], "succeeded", "{done}");
    let lines: Vec<&str> = done["output"].as_str().unwrap_or_default().lines().collect();
    let want: Vec<String> = (1..=8).map(|i| format!("tick {i}")).collect();
    assert_eq!(lines, want, "every line exactly once, in order");

    // A reboot runs the every-boot script again, not the per-instance one.
    plane.ok(&["server", "reboot", "demo/ok-1"]);
    let rebooted = plane.wait_server("demo/ok-1", |_| {
        let runs = plane.json(&["runs", "list", "--server", "demo/ok-1"]);
        output_of(&runs, "every").len() == 2
    });
    let s = plane.wait_server("demo/ok-1", settled);
    assert_eq!(s["state"], "operational", "{s} {rebooted}");
    let runs = plane.json(&["runs", "list", "--server", "demo/ok-1"]);
    assert_eq!(output_of(&runs, "hello").len(), 1, "per-instance ran once: {runs}");
    let boots = output_of(&runs, "every");
    assert_ne!(
        boots[0].lines().next(),
        boots[1].lines().next(),
        "a new boot: {boots:?}"
    );

    // Terminating runs the decommission script first.
    plane.ok(&["server", "terminate", "demo/ok-2"]);
    plane.wait_server("demo/ok-2", |v| v["state"] == "terminated");
    let runs = plane.json(&["runs", "list", "--server", "demo/ok-2"]);
    let bye: Vec<&Value> = runs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["script"] == "bye")
        .collect();
    assert_eq!(bye.len(), 1, "{runs}");
    assert_eq!(
        (&bye[0]["status"], &bye[0]["phase"]),
        (&"succeeded".into(), &"decommission".into()),
        "{runs}"
    );
    assert!(bye[0]["output"].as_str().unwrap_or_default().contains("bye from ok-2"));

    let ko = plane.wait_server("demo/ko-1", settled);
    assert_eq!(ko["state"], "stranded", "{ko}");
    assert_eq!(ko["stranded"]["exit_code"], 7, "{ko}");
    assert!(
        ko["stranded"]["output_tail"]
            .as_str()
            .is_some_and(|o| o.contains("going down")),
        "{ko}"
    );
}

/// Poll a run until `want` holds (bounded: 60 s).
fn wait_run(plane: &Plane, id: &str, want: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        let r = plane.json(&["runs", "show", id]);
        if want(&r) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("run {id} never got there: {}", plane.json(&["runs", "show", id]));
}

/// The example deployment, unchanged: `stratus apply -f examples/lb-and-app.toml` on a local
/// cloud brings up a real HAProxy in front of two real nginx servers; a client requesting all
/// the time sees both, then a third one added, then one fewer when one is terminated, and not
/// one failed request throughout.
#[test]
fn the_lb_and_app_example_keeps_serving_through_pool_changes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (tmp, data, _cleanup) = scratch("stratus-lb-", "local");
    let (a, b) = (150 + random_octet() % 50, random_octet());
    let plane = Plane::start(&data);
    // The example's cloud is `local` (examples/local-cloud.toml); here on a subnet of its own,
    // with an elastic-IP pool.
    let pool = format!(
        "address_pools = [{{ name = \"public\", cidr = \"10.{}.{b}.16/28\" }}]",
        u16::from(a) + 50
    );
    declare_local_cloud(&plane, tmp.path(), "local", (a, b), &pool);
    // `stratus image build`: debian-12 with the default packages (nginx, haproxy, curl, ...).
    plane.ok(&["image", "build", "--cloud", "local"]);
    // The application, as the example's instructions upload it.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let site = |name: &str, dir: &Path| -> String {
        let out = tmp.path().join(name);
        let ok = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-czf")
            .arg(&out)
            .arg(".")
            .status()
            .expect("tar");
        assert!(ok.success());
        out.to_str().expect("path").to_string()
    };
    plane.ok(&["artifact", "mb", "www"]);
    plane.ok(&[
        "artifact",
        "put",
        &site("site.tar.gz", &examples.join("site")),
        "www/site.tar.gz",
    ]);
    plane.ok(&["apply", "-f", examples.join("lb-and-app.toml").to_str().expect("path")]);
    let operational = |v: &Value| matches!(v["state"].as_str(), Some("operational" | "stranded"));
    let mut ips = std::collections::BTreeMap::new();
    for name in ["lb-1", "app-1", "app-2"] {
        let key = format!("www/{name}");
        let s = plane.wait_server(&key, operational);
        assert_eq!(
            s["state"],
            "operational",
            "{s}\nconsole:\n{}",
            plane.stratus(&["server", "console", &key]).1
        );
        ips.insert(name, s["private_ip"].as_str().expect("ip").to_string());
    }
    let lb = format!("http://{}:80/", ips["lb-1"]);
    // Both app servers answer through the load balancer.
    let seen = |want: &[&str], within: Duration| -> bool {
        let until = std::time::Instant::now() + within;
        let mut got = std::collections::BTreeSet::new();
        while std::time::Instant::now() < until {
            if let Some(body) = http(&lb) {
                got.insert(body.rsplit(' ').next().unwrap_or_default().to_string());
            }
            if want.iter().all(|w| got.contains(*w)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(
        seen(&["app-1", "app-2"], Duration::from_secs(30)),
        "the load balancer does not route to both: {:?}",
        http(&lb)
    );
    let page = http(&lb).expect("an answer");
    assert!(page.starts_with("v1 from app-"), "the application's page: {page}");

    // A client that keeps requesting through every change (bounded: 4000 requests, 5 min).
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, lb) = (stop.clone(), lb.clone());
        std::thread::spawn(move || {
            let mut answers: Vec<(std::time::Instant, String)> = vec![];
            let mut failures = vec![];
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed)
                && answers.len() + failures.len() < 4000
                && started.elapsed() < Duration::from_secs(300)
            {
                match http(&lb) {
                    Some(body) => answers.push((std::time::Instant::now(), body)),
                    None => failures.push(std::time::Instant::now()),
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            (answers, failures)
        })
    };

    // A third server joins the pool once it is operational.
    plane.ok(&["server", "launch", "app-3", "-d", "www", "-t", "www-app", "--wait"]);
    let joined = std::time::Instant::now();
    assert!(seen(&["app-3"], Duration::from_secs(30)), "app-3 never got requests");
    println!(
        "app-3 operational -> first answer through the load balancer: {:?}",
        joined.elapsed()
    );

    // One leaves: terminating it takes it out of rotation before its instance goes.
    let leaving = std::time::Instant::now();
    plane.ok(&["server", "terminate", "www/app-1"]);
    plane.wait_server("www/app-1", |v| v["state"] == "terminated");
    println!("terminate app-1 -> terminated: {:?}", leaving.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let pool_changed = std::time::Instant::now();

    // A member that fails its health check (nginx stopped) leaves the rotation by HAProxy's own
    // checks, and comes back after the next good one; requests caught in between are retried
    // on another member, so none fails.
    plane.ok(&["run", "www-pause", "--on", "www/app-2", "--follow"]);
    std::thread::sleep(Duration::from_secs(3));
    let paused = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let resumed = std::time::Instant::now();
    plane.ok(&["run", "www-resume", "--on", "www/app-2", "--follow"]);
    assert!(seen(&["app-2"], Duration::from_secs(15)), "app-2 never came back");

    // A new release, one server at a time, while the client keeps requesting.
    let v2 = tmp.path().join("v2");
    std::fs::create_dir_all(&v2).expect("mkdir");
    std::fs::write(v2.join("index.html"), "v2 from <!--# echo var=\"hostname\" -->\n").expect("write");
    let deployed = plane.ok(&[
        "deploy",
        &site("site-v2.tar.gz", &v2),
        "--to",
        "lb:pool=www",
        "--follow",
    ]);
    assert!(deployed.contains("2 succeeded, 0 failed"), "{deployed}");
    let v2_done = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(500));

    // A hostile release (a link out of the release directory) is refused; v2 keeps serving.
    let evil = tmp.path().join("evil");
    std::fs::create_dir_all(&evil).expect("mkdir");
    std::fs::write(evil.join("index.html"), "evil\n").expect("write");
    std::os::unix::fs::symlink("/etc/shadow", evil.join("shadow")).expect("symlink");
    plane.ok(&["artifact", "put", &site("evil.tar.gz", &evil), "www/evil.tar.gz"]);
    let (ok, refused) = plane.stratus(&["deploy", "www/evil.tar.gz", "--to", "lb:pool=www", "--follow"]);
    assert!(!ok, "{refused}");
    assert!(refused.contains("unsafe archive entry"), "{refused}");
    assert!(refused.contains("keeps serving"), "{refused}");
    // Links that each stay inside when read as text, but climb a level each once the kernel
    // follows the earlier ones, and a hard link through them to the instance's /etc/shadow:
    // refused too, and nothing of it is served.
    let chain = tmp.path().join("chain.tar.gz");
    let made = Command::new("python3")
        .arg("-c")
        .arg(CHAIN_ARCHIVE)
        .arg(&chain)
        .status()
        .expect("python3");
    assert!(made.success());
    plane.ok(&["artifact", "put", chain.to_str().expect("path"), "www/chain.tar.gz"]);
    let (ok, refused) = plane.stratus(&["deploy", "www/chain.tar.gz", "--to", "lb:pool=www", "--follow"]);
    assert!(!ok, "{refused}");
    assert!(refused.contains("keeps serving"), "{refused}");
    assert!(
        http(&format!("{lb}shadow")).is_none_or(|b| !b.contains("root:")),
        "the instance's /etc/shadow is served"
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = client.join().expect("client");
    let after = |t: std::time::Instant| answers.iter().filter(move |(at, _)| *at > t);
    let last_app1 = answers
        .iter()
        .filter(|(_, b)| b.ends_with("app-1"))
        .map(|(at, _)| *at)
        .max();
    if let Some(last) = last_app1 {
        println!(
            "terminate app-1 -> its last answer: {:?}",
            last.saturating_duration_since(leaving)
        );
    }
    println!(
        "{} requests during the changes, {} failed",
        answers.len() + failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed",
        failures.len(),
        answers.len() + failures.len()
    );
    let while_paused: Vec<&String> = answers
        .iter()
        .filter(|(at, _)| *at > paused && *at < resumed)
        .map(|(_, b)| b)
        .collect();
    assert!(
        !while_paused.is_empty(),
        "the client made no request while app-2 was paused"
    );
    assert!(
        while_paused.iter().all(|b| !b.ends_with("app-2")),
        "app-2 answered while its nginx was stopped: {while_paused:?}"
    );
    assert!(
        answers.len() > 50,
        "the client made too few requests to tell: {}",
        answers.len()
    );
    let done = plane.json(&["server", "show", "www/app-1"]);
    let terminated_for = Duration::from_secs(2);
    assert!(
        after(pool_changed - terminated_for).all(|(_, b)| !b.ends_with("app-1")),
        "app-1 still answered after it was terminated: {done}"
    );
    let recent: std::collections::BTreeSet<String> = after(pool_changed)
        .map(|(_, b)| b.rsplit(' ').next().unwrap_or_default().to_string())
        .collect();
    let versions: std::collections::BTreeSet<&str> = after(v2_done)
        .map(|(_, b)| b.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        ["v2"],
        "every server serves v2, also after the refused release"
    );
    // The newest server started with the template's archive, v1; the deploy brought it to v2.
    let runs = plane.json(&["runs", "list", "--server", "www/app-3"]);
    let deploys = runs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["script"] == "stratus-deploy")
        .count();
    assert!(deploys >= 2, "a boot deploy and a rollout deploy: {runs}");
    assert_eq!(
        recent.into_iter().collect::<Vec<_>>(),
        ["app-2", "app-3"],
        "the pool after the changes"
    );

    // Replacement keeps an elastic IP answering: the load balancer itself is replaced while a
    // client polls its elastic IP.
    plane.ok(&["address", "allocate", "vip", "--cloud", "local"]);
    plane.ok(&["address", "associate", "vip", "www/lb-1"]);
    let vip = plane.json(&["address", "show", "vip"])["ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let vip_addr = format!("http://{vip}:80/");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while http(&vip_addr).is_none() {
        assert!(std::time::Instant::now() < until, "the elastic IP never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, vip_addr) = (stop.clone(), vip_addr.clone());
        std::thread::spawn(move || {
            let mut log = vec![];
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && log.len() < 5000 && started.elapsed() < Duration::from_secs(120) {
                log.push((std::time::Instant::now(), http(&vip_addr).is_some()));
                std::thread::sleep(Duration::from_millis(20));
            }
            log
        })
    };
    let replaced = plane.ok(&["server", "replace", "www/lb-1"]);
    assert!(replaced.contains("www/lb-1-r2 replaced www/lb-1"), "{replaced}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let log = poller.join().expect("poller");
    // The longest stretch of failed requests: the switch-over.
    let (mut longest, mut since) = (Duration::ZERO, None);
    for (at, ok) in &log {
        match (ok, since) {
            (false, None) => since = Some(*at),
            (true, Some(s)) => {
                longest = longest.max(at.duration_since(s));
                since = None;
            }
            _ => {}
        }
    }
    let failed = log.iter().filter(|(_, ok)| !ok).count();
    println!(
        "replace the load balancer: {} requests to its elastic IP, {failed} failed, longest gap {longest:?}",
        log.len()
    );
    assert!(
        log.last().is_some_and(|(_, ok)| *ok),
        "the elastic IP answers after the replacement"
    );
    assert!(longest <= Duration::from_secs(2), "the switch-over took {longest:?}");
    let successor = plane.json(&["server", "show", "www/lb-1-r2"]);
    assert_eq!(successor["public_ip"].as_str(), Some(vip.as_str()), "{successor}");
    plane.wait_server("www/lb-1", |v| v["state"] == "terminated");
}

/// The README's main command: `stratus quickstart` brings the example up on real instances,
/// prints the load balancer's URL (which answers), a second run reuses everything, and
/// `--down` removes it all (the cloud's network included).
#[test]
fn the_quickstart_brings_the_example_up_reuses_it_and_takes_it_down() {
    let tmp = tempfile::Builder::new()
        .prefix("stratus-qs-")
        .tempdir_in("/var/tmp")
        .expect("tmp");
    let data = tmp.path().join("data");
    let _cleanup = Cleanup {
        tag: stratus_server::drivers::network_tag(&data, "local"),
        state: data.join("local/clouds/local"),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let subnet = format!("10.{}.{}.0/24", 100 + random_octet() % 100, random_octet());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
            .current_dir(&workspace)
            .env("XDG_CONFIG_HOME", tmp.path().join("config"))
            .arg("--data-dir")
            .arg(&data)
            .args(["quickstart", "--exit", "--listen", &listen, "--subnet", &subnet])
            .args(extra)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let started = std::time::Instant::now();
    let (ok, out, err) = run(&[]);
    assert!(ok, "{out}\n{err}");
    println!("quickstart, first run: {:?}", started.elapsed());
    assert!(out.contains("3 servers operational"), "{out}");
    for step in [
        "[1/6] host",
        "[3/6] cloud",
        "[4/6] image",
        "[5/6] application",
        "[6/6] deployment",
    ] {
        assert!(err.contains(step), "progress names {step}: {err}");
    }
    let lb = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Load balancer: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no load balancer URL: {out}"))
        .to_string();
    let addr = format!("{}:80", lb.trim_end_matches('/'));
    let page = http(&addr).unwrap_or_else(|| panic!("{lb} does not answer"));
    assert!(page.starts_with("v1 from app-"), "{page}");

    let again = std::time::Instant::now();
    let (ok, out, err) = run(&[]);
    assert!(ok, "{out}\n{err}");
    println!("quickstart, second run: {:?}", again.elapsed());
    assert!(err.contains("www/site.tar.gz unchanged"), "{err}");
    assert!(out.contains("0 to create, 0 to update"), "{out}");

    let (ok, out, err) = run(&["--down"]);
    assert!(ok, "{out}\n{err}");
    let tag = stratus_server::drivers::network_tag(&data, "local");
    assert!(
        !Path::new("/sys/class/net").join(format!("st-{tag}")).exists(),
        "the cloud's bridge is gone"
    );
}

/// Managed SSH with real OpenSSH: sshd inside local instances (started by the agent), the
/// `ssh` client on the host. A grant lets a user in within seconds; a user scoped to one
/// deployment cannot log in to another; `server_superuser` gets sudo and `server_login` does
/// not; a revocation refuses the next login and ends the open session at once.
#[test]
fn managed_ssh_grants_scopes_and_revokes_logins() {
    let (tmp, data, _cleanup) = scratch("stratus-ssh-", "local");
    let plane = Plane::start(&data);
    declare_local_cloud(
        &plane,
        tmp.path(),
        "local",
        (50 + random_octet() % 50, random_octet()),
        "",
    );
    let file = tmp.path().join("f.toml");
    let apply = |text: &str| {
        std::fs::write(&file, text).expect("write");
        plane.ok(&["apply", "-f", file.to_str().expect("path")]);
    };
    plane.ok(&["image", "build", "--cloud", "local"]);
    // beta's servers take managed SSH as the only way in: the root key its boot script plants
    // is emptied at the next login change.
    let templates = "[[script]]\nname = \"plant-root-key\"\nfrequency = \"per-instance\"\n\
        body = \"\"\"#!/bin/sh\nmkdir -p /root/.ssh\necho 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJvb3Qga2V5IG9mIHRoZSBpbWFnZQ image@key' > /root/.ssh/authorized_keys\n\"\"\"\n\
        [[template]]\nname = \"box\"\nimage = \"debian-12\"\nsize = \"small\"\n\
        [[template]]\nname = \"locked\"\nimage = \"debian-12\"\nsize = \"small\"\nboot_scripts = [\"plant-root-key\"]\n\
        ssh = { exclusive = true }\n";
    let deployment = |name: &str, server: &str, template: &str| {
        format!(
            "{templates}[deployment]\nname = \"{name}\"\ncloud = \"local\"\n[[server]]\nname = \"{server}\"\ntemplate = \"{template}\"\n"
        )
    };
    apply(&deployment("alpha", "a-1", "box"));
    apply(&deployment("beta", "b-1", "locked"));
    let ip = |key: &str| {
        let s = plane.wait_server(key, |v| v["state"] == "operational");
        s["private_ip"].as_str().expect("ip").to_string()
    };
    let (a1, b1) = (ip("alpha/a-1"), ip("beta/b-1"));

    // Keys made on the host; alice may log in to alpha only, bob is a superuser everywhere.
    let keygen = |name: &str| {
        let key = tmp.path().join(format!("{name}_key"));
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen (openssh-client)");
        assert!(ok.success());
        key
    };
    let (alice_key, bob_key) = (keygen("alice"), keygen("bob"));
    plane.ok(&["user", "create", "alice", "--role", "server_login:alpha"]);
    plane.ok(&["user", "create", "bob", "--role", "server_superuser"]);
    let granted = std::time::Instant::now();
    for (user, key) in [("alice", &alice_key), ("bob", &bob_key)] {
        let public = format!("{}.pub", key.display());
        plane.ok(&["user", "add-key", user, "--key-file", &public]);
    }
    let ssh = |user: &str, key: &Path, host: &str, command: &str| -> (i32, String) {
        let out = Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=3",
                "-o",
                "LogLevel=ERROR",
                "-l",
                user,
                host,
                command,
            ])
            .output()
            .expect("ssh");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let until = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    until("alice's login to alpha", &|| {
        ssh("alice", &alice_key, &a1, "id -un").1.trim() == "alice"
    });
    println!("grant -> first login: {:?}", granted.elapsed());
    // Scoped: not into beta. Not a superuser: no sudo.
    let (code, out) = ssh("alice", &alice_key, &b1, "true");
    assert_eq!(code, 255, "alice logged in to beta: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    let (code, out) = ssh("alice", &alice_key, &a1, "sudo -n true");
    assert_ne!(code, 0, "alice has sudo: {out}");
    // bob: everywhere, with sudo.
    until("bob's sudo on beta", &|| {
        ssh("bob", &bob_key, &b1, "sudo -n id -u").1.trim() == "0"
    });
    // `stratus ssh`, signed in as bob: his account, his key.
    let bob_token = plane.json(&["token", "create", "--user", "bob"]);
    let bob_token = bob_token["token"].as_str().expect("token").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_stratus"))
        .args(["ssh", "alpha/a-1", "--identity"])
        .arg(&bob_key)
        .args(["--", "sudo", "-n", "id", "-un"])
        .env("STRATUS_URL", &plane.url)
        .env("STRATUS_TOKEN", &bob_token)
        .env("XDG_CONFIG_HOME", tmp.path().join("bob-config"))
        .output()
        .expect("stratus ssh");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "root",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Logins and sudo are in the audit log, naming the user, reported by (and attributed to)
    // the server's agent: an agent cannot write an entry as a user.
    let audited = |action: &str, user: &str| {
        let log = plane.json(&["audit", "--action", action]).to_string();
        log.contains(&format!(r#""user":"{user}""#)) && log.contains(r#""actor":"agent:"#)
    };
    until("alice's login audited", &|| audited("server.login", "alice"));
    until("bob's sudo audited", &|| audited("server.sudo", "bob"));
    // Exclusive: on beta the image's root key is gone; on alpha (not exclusive) root is untouched.
    let (_, root_keys) = ssh("bob", &bob_key, &b1, "sudo -n cat /root/.ssh/authorized_keys");
    assert!(
        !root_keys.contains("image@key"),
        "beta kept a key Stratus did not put there: {root_keys}"
    );
    // The image's own accounts are untouched.
    let (_, passwd) = ssh("bob", &bob_key, &a1, "getent passwd root");
    assert!(passwd.starts_with("root:x:0:0"), "{passwd}");

    // The control plane shows the grant acknowledged.
    let access = plane.json(&["user", "access", "alice"]);
    let alpha = access
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["server"] == "alpha/a-1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&alpha["login"], &alpha["acknowledged"]),
        (&true.into(), &true.into()),
        "{access}"
    );

    // Revoke alice while she is logged in: her session ends, and she cannot log in again.
    let mut session = Command::new("ssh")
        .arg("-i")
        .arg(&alice_key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-l",
            "alice",
            &a1,
            "sleep 120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh session");
    std::thread::sleep(Duration::from_secs(2));
    assert!(session.try_wait().expect("wait").is_none(), "the session is open");
    let revoked = std::time::Instant::now();
    plane.ok(&["user", "roles", "alice"]);
    until("the end of alice's session", &|| {
        matches!(Command::new("kill").arg("-0").arg(session.id().to_string()).status(), Ok(s) if !s.success())
            || std::fs::read_to_string(format!("/proc/{}/stat", session.id())).is_ok_and(|s| s.contains(") Z "))
    });
    let _ = session.wait();
    println!("revoke -> session ended: {:?}", revoked.elapsed());
    let (code, out) = ssh("alice", &alice_key, &a1, "true");
    assert_eq!(code, 255, "alice still logs in: {out}");
    println!("revoke -> login refused: {:?}", revoked.elapsed());
    let access = plane.json(&["user", "access", "alice"]);
    assert!(
        access.as_array().into_iter().flatten().all(|s| s["login"] == false),
        "{access}"
    );
    // bob's key removed: refused too, and never re-added by a later change.
    let bob = plane.json(&["user", "show", "bob"]);
    let fp = bob["ssh_keys"][0]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    plane.ok(&["user", "remove-key", "bob", &fp]);
    until("bob's key refused", &|| ssh("bob", &bob_key, &a1, "true").0 == 255);
    plane.ok(&[
        "user",
        "roles",
        "bob",
        "--role",
        "server_superuser",
        "--role",
        "observer",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ssh("bob", &bob_key, &a1, "true").0, 255, "a removed key came back");
}

/// Seconds from a server's launch to operational.
fn boot_secs(s: &Value) -> f64 {
    let t = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(s[k].as_str().unwrap_or_else(|| panic!("{k}: {s}"))).expect("time")
    };
    (t("operational_at") - t("launched_at")).as_seconds_f64()
}

/// The live servers of an array, by name.
fn members(plane: &Plane, deployment: &str, array: &str) -> Vec<Value> {
    let all = plane.json(&["server", "list", "--deployment", deployment, "--all-pages"]);
    let mut m: Vec<Value> = all
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["array"] == array && s["state"] != "terminated")
        .collect();
    m.sort_by_key(|s| s["name"].as_str().unwrap_or_default().to_string());
    m
}

/// Poll until the array has `n` members, all operational (bounded: 180 s).
fn members_when(plane: &Plane, deployment: &str, array: &str, n: usize) -> Vec<Value> {
    for _ in 0..1800 {
        let m = members(plane, deployment, array);
        if m.len() == n && m.iter().all(|s| s["state"] == "operational") {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "array {array} never had {n} operational members: {:?}",
        members(plane, deployment, array)
    );
}

/// Rebundling on real instances: a server whose boot builds something heavy becomes its array's
/// image; the capture holds the work but no secret, agent identity, host keys, histories or
/// logs; a secret left in a file refuses the rebundle and changes nothing; members launched
/// from the image skip the heavy step (their idempotent per-instance script sees the work is
/// there); the array scales by command and by its members' votes.
#[test]
fn a_rebundled_image_boots_without_its_heavy_step_and_holds_no_secret() {
    let (tmp, data, _cleanup) = scratch("stratus-rb-", "rb");
    let plane = Plane::start(&data);
    declare_local_cloud(
        &plane,
        tmp.path(),
        "rb",
        (100 + random_octet() % 50, random_octet()),
        "",
    );
    plane.ok(&[
        "image",
        "build",
        "--cloud",
        "rb",
        "--name",
        "debian",
        "--package",
        "procps,openssh-server",
    ]);
    let secret = format!("db-{:02x}{:02x}-s3cr3t", random_octet(), random_octet());
    let cred = tmp.path().join("cred");
    std::fs::write(&cred, &secret).expect("write");
    plane.ok(&[
        "credential",
        "create",
        "db-pass",
        "--value-file",
        cred.to_str().expect("path"),
    ]);
    let file = tmp.path().join("rb.toml");
    std::fs::write(
        &file,
        r##"
[[script]]
name = "build-dataset"
frequency = "per-image"
body = """#!/bin/sh
set -e
mkdir -p /opt/dataset
i=0
while [ $i -lt 300 ]; do head -c 262144 /dev/urandom | sha256sum; i=$((i+1)); done > /opt/dataset/index
echo built > /opt/dataset/done
echo "dataset built"
"""

[[script]]
name = "start-app"
frequency = "per-instance"
inputs = [{ name = "DB_PASSWORD", kind = "cred" }]
body = """#!/bin/sh
set -e
if [ -f /opt/dataset/done ]; then echo "dataset already built"; else echo "no dataset"; exit 1; fi
printf '%s' "$DB_PASSWORD" > /run/app.secret
echo "app started on $(hostname)" >> /var/log/app.log
echo "ls /opt" >> /root/.bash_history
"""

[[script]]
name = "leak"
frequency = "on-demand"
inputs = [{ name = "DB_PASSWORD", kind = "cred" }]
body = """#!/bin/sh
printf 'password=%s\\n' "$DB_PASSWORD" > /etc/leak.conf
"""

[[script]]
name = "unleak"
frequency = "on-demand"
body = """#!/bin/sh
rm -f /etc/leak.conf
"""

[[script]]
name = "vote"
frequency = "on-demand"
inputs = [{ name = "HOW", default = "shrink" }]
body = """#!/bin/sh
set -e
for h in grow shrink; do stratus-agent tag remove array:vote=$h 2>/dev/null || true; done
stratus-agent tag add array:vote=$HOW
"""

[[template]]
name = "worker"
image = "debian"
size = "small"
boot_scripts = ["build-dataset", "start-app"]
operational_scripts = ["leak", "unleak", "vote"]
inputs = { DB_PASSWORD = "cred:db-pass" }
default_tags = ["app:role=worker"]

[deployment]
name = "rb"
cloud = "rb"

[[server]]
name = "golden"
template = "worker"

[[array]]
name = "workers"
template = "worker"
min = 1
max = 3
desired = 1
autoscale = { threshold_percent = 60, calm_secs = 0 }
"##,
    )
    .expect("write");
    plane.ok(&["apply", "-f", file.to_str().expect("path")]);
    let settled = |v: &Value| matches!(v["state"].as_str(), Some("operational" | "stranded"));
    let golden = plane.wait_server("rb/golden", settled);
    assert_eq!(golden["state"], "operational", "{golden}");
    let base_boot = boot_secs(&golden);
    let first = members_when(&plane, "rb", "workers", 1);
    assert_eq!(
        first[0]["image"], "debian",
        "before a rebundle members boot from the base image"
    );

    // A secret in a file: refused, nothing changed, the value never shown.
    plane.ok(&["run", "leak", "--on", "rb/golden", "--follow"]);
    let (ok, out) = plane.stratus(&["server", "rebundle", "rb/golden", "--for", "workers"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("/etc/leak.conf") && out.contains("nothing changed"),
        "{out}"
    );
    assert!(!out.contains(&secret), "{out}");
    assert_eq!(plane.json(&["server", "show", "rb/golden"])["state"], "operational");

    plane.ok(&["run", "unleak", "--on", "rb/golden", "--follow"]);
    let r = plane.json(&["server", "rebundle", "rb/golden", "--for", "workers"]);
    assert_eq!(
        (r["image"].as_str(), r["version"].as_u64()),
        (Some("worker-bundle"), Some(1)),
        "{r}"
    );
    let removed = r["removed"].to_string();
    for kind in ["ssh host keys", "log files", "shell histories"] {
        assert!(removed.contains(kind), "{kind}: {r}");
    }
    eprintln!(
        "rebundle: {:.1} s, {} MB",
        r["seconds"].as_f64().unwrap_or(0.0),
        r["size_bytes"].as_u64().unwrap_or(0) / 1_000_000
    );
    assert_eq!(plane.json(&["server", "show", "rb/golden"])["state"], "terminated");

    // The captured tree: the work is there; no secret, identity, keys, history or log lines.
    let rootfs = data
        .join("local/images")
        .join(r["native_id"].as_str().expect("native id"))
        .join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("opt/dataset/done")).expect("the work is in the image"),
        "built\n"
    );
    let grep = Command::new("grep")
        .args(["-r", "-l", "-F", "--binary-files=text", "-e", &secret])
        .arg(&rootfs)
        .output()
        .expect("grep");
    assert_eq!(
        grep.status.code(),
        Some(1),
        "the secret is in the image: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
    assert!(!rootfs.join("var/lib/stratus-agent").exists(), "no agent identity");
    assert!(!rootfs.join("root/.bash_history").exists());
    let keys: Vec<_> = std::fs::read_dir(rootfs.join("etc/ssh"))
        .expect("etc/ssh")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
        .collect();
    assert!(keys.is_empty(), "no SSH host keys: {keys:?}");
    assert_eq!(std::fs::read(rootfs.join("etc/machine-id")).expect("machine-id"), b"");
    assert_eq!(std::fs::read(rootfs.join("var/log/app.log")).expect("app.log"), b"");

    // By command: two more members, from the image; the heavy step is skipped.
    plane.ok(&["array", "scale", "rb/workers", "3"]);
    let m = members_when(&plane, "rb", "workers", 3);
    let fresh: Vec<&Value> = m.iter().filter(|s| s["image"] == "worker-bundle").collect();
    assert_eq!(fresh.len(), 2, "{m:?}");
    for s in &fresh {
        let key = format!("rb/{}", s["name"].as_str().expect("name"));
        let runs = plane.json(&["runs", "list", "--server", &key]);
        let boot: Vec<&str> = runs
            .as_array()
            .expect("runs")
            .iter()
            .filter(|r| r["phase"] == "boot")
            .map(|r| r["script"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(boot, ["start-app"], "{key}: {runs}");
        let out = runs[0]["output"].as_str().unwrap_or_default();
        assert!(out.contains("dataset already built"), "{out}");
        assert!(!out.contains(&secret), "{out}");
        eprintln!(
            "boot to operational: base image {base_boot:.1} s, rebundled image {:.1} s ({key})",
            boot_secs(s)
        );
    }
    // By command, down: the oldest (the base-image member) goes first.
    plane.ok(&["array", "scale", "rb/workers", "2"]);
    let m = members_when(&plane, "rb", "workers", 2);
    assert!(m.iter().all(|s| s["image"] == "worker-bundle"), "{m:?}");
    // By votes: both vote to shrink (100 % ≥ 60 %): down to min 1, and no further.
    // (A member may be decommissioned the moment its vote is in, before its run reports: the
    // rollout's own result is not the point.)
    let _ = plane.stratus(&[
        "run",
        "vote",
        "--tag",
        "app:role=worker",
        "--deployment",
        "rb",
        "--follow",
    ]);
    let m = members_when(&plane, "rb", "workers", 1);
    // The one left votes to grow: 1 of 1; then 1 of 2 is under 60 %: it stops at 2.
    let last = format!("rb/{}", m[0]["name"].as_str().expect("name"));
    plane.ok(&["run", "vote", "--on", &last, "--follow", "-i", "HOW=grow"]);
    members_when(&plane, "rb", "workers", 2);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        members(&plane, "rb", "workers").len(),
        2,
        "the vote share fell under the threshold"
    );
    let audit = plane.ok(&["audit", "--action", "array.autoscale"]);
    assert!(audit.contains("array.autoscale"), "{audit}");
    plane.ok(&["array", "scale", "rb/workers", "1"]);
}
