//! `stratus quickstart`: the example deployment on real instances of this machine, in one
//! command.
//!
//! Steps, each named when it fails (with what to do):
//!
//! 1. **host**: root (the local cloud makes namespaces, mounts and network devices), and the
//!    Debian packages the local cloud uses; missing ones are installed with `apt-get`.
//! 2. **control plane**: an embedded one (SQLite, local cloud, local artifact store) on
//!    `--listen`, data in `--data-dir`.
//! 3. **cloud**: `examples/local-cloud.toml` (its subnet can be moved with `--subnet`).
//! 4. **image**: `debian-12` built with debootstrap, or the cached build with the same inputs.
//! 5. **application**: `examples/site` as `www/site.tar.gz` in the artifact store (uploaded
//!    only when it changed).
//! 6. **deployment**: `examples/lb-and-app.toml`, with a live line per server saying what it is
//!    doing (launching, waiting for its agent, which boot script runs) until every server is
//!    operational, or one is stranded (then its failing script and output are shown).
//!
//! Run again, every step finds its work done and the command takes seconds. `--down` removes
//! what the steps created, in reverse (servers terminated first, the cloud's network last).
//! `--sandbox` runs `examples/quickstart.toml` on the in-memory fake cloud instead: no root,
//! nothing executes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::apply::{print_plan, read_file};
use crate::args::QuickstartArgs;
use crate::client::{ApiFailure, Client, seg};

/// Host tools the local cloud runs, and the Debian package of each.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("tar", "tar"),
    ("zstd", "zstd"),
];

/// The step a failure happened in, for the message.
struct Step {
    n: usize,
    of: usize,
    what: &'static str,
    started: Instant,
}

impl Step {
    fn begin(n: usize, of: usize, what: &'static str) -> Self {
        eprintln!("[{n}/{of}] {what}");
        Self {
            n,
            of,
            what,
            started: Instant::now(),
        }
    }

    fn fail(&self, why: impl std::fmt::Display, todo: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "step {}/{} ({}) failed: {why}\n  what to do: {todo}",
            self.n,
            self.of,
            self.what
        )
    }

    fn done(&self, note: &str) {
        eprintln!("      {note} ({:.1} s)", self.started.elapsed().as_secs_f64());
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// Step 1: root, and the host packages (installed when missing).
fn host(step: &Step) -> anyhow::Result<()> {
    if !is_root() {
        return Err(step.fail(
            "the local cloud needs root (it creates namespaces, mounts and network devices)",
            "run it as root (`sudo -E env PATH=$PATH cargo run -p stratus-cli --bin stratus -- quickstart`), \
             or try `stratus quickstart --sandbox` (a simulated cloud, no root)",
        ));
    }
    let mut missing: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        step.done("root; debootstrap, nftables, iproute2, util-linux, tar, zstd present");
        return Ok(());
    }
    eprintln!("      installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter().copied());
    let mut out = apt(&install).map_err(|e| step.fail(format!("cannot run apt-get: {e}"), "install them by hand"))?;
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        eprintln!("      apt-get update");
        let _ = apt(&["update", "-q"]);
        out = apt(&install).map_err(|e| step.fail(format!("cannot run apt-get: {e}"), "install them by hand"))?;
    }
    if !out.status.success() {
        let tail: String = String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n");
        return Err(step.fail(
            format!("apt-get install {} failed:\n{tail}", missing.join(" ")),
            "check the network to the Debian mirror, or install the packages by hand, and try again",
        ));
    }
    step.done(&format!("installed {}", missing.join(" ")));
    Ok(())
}

/// A tar.gz of `dir` (with the system `tar`, reproducible enough: sorted, fixed owner and time,
/// so the same files give the same bytes and an unchanged site is not uploaded again).
fn site_archive(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("tar")
        .arg("--sort=name")
        .arg("--owner=0")
        .arg("--group=0")
        .arg("--numeric-owner")
        .arg("--mtime=2000-01-01 00:00Z")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out.with_extension(""))
        .arg(".")
        .status()
        .context("cannot run tar")?;
    if !status.success() {
        bail!("tar failed on {}", dir.display());
    }
    // gzip -n: no name or time in the header, so the bytes depend on the content only.
    let status = std::process::Command::new("gzip")
        .args(["-n", "-f"])
        .arg(out.with_extension(""))
        .status()
        .context("cannot run gzip")?;
    if !status.success() {
        bail!("gzip failed");
    }
    Ok(())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

fn not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>().is_some_and(|f| f.code == "not_found")
}

/// One server's line: its state and what it is doing.
async fn status_line(c: &Client, key: &str) -> anyhow::Result<(String, String)> {
    let s = c.get(&format!("/servers/{}", seg(key)), &[]).await?;
    let state = s["state"].as_str().unwrap_or("?").to_string();
    let doing = match state.as_str() {
        "pending" => "launching its instance".to_string(),
        "booting" => {
            let runs = c
                .get("/runs", &[("server", key.to_string()), ("limit", "100".into())])
                .await?;
            let mut boot: Vec<&Value> = runs["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["phase"] == "boot")
                .collect();
            boot.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            let n = boot.len();
            match boot.iter().position(|r| r["status"] != "succeeded") {
                None if n == 0 => "waiting for its agent to enrol".to_string(),
                None => "all boot scripts done".to_string(),
                Some(i) => format!(
                    "boot {}/{n}: {} ({})",
                    i + 1,
                    boot[i]["script"].as_str().unwrap_or("?"),
                    boot[i]["status"].as_str().unwrap_or("?")
                ),
            }
        }
        "operational" => s["private_ip"].as_str().unwrap_or("").to_string(),
        "stranded" => s["stranded"]["message"].as_str().unwrap_or("").to_string(),
        other => other.to_string(),
    };
    Ok((state, doing))
}

/// Step 6's live view: a line per server, redrawn in place on a terminal (printed when it
/// changes otherwise), until every server is operational or one is stranded.
async fn watch_servers(c: &Client, keys: &[String], step: &Step) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let mut printed = 0usize;
    let mut last: Vec<String> = vec![String::new(); keys.len()];
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let mut lines = vec![];
        let mut states = vec![];
        for key in keys {
            let (state, doing) = status_line(c, key).await?;
            lines.push(format!("      {key:<14} {state:<12} {doing}"));
            states.push(state);
        }
        let mut err = std::io::stderr().lock();
        if tty {
            if printed > 0 {
                let _ = write!(err, "\x1b[{printed}A");
            }
            for l in &lines {
                let _ = writeln!(err, "\x1b[2K{l}");
            }
            printed = lines.len();
        } else {
            for (i, l) in lines.iter().enumerate() {
                if *l != last[i] {
                    let _ = writeln!(err, "{l}");
                }
            }
        }
        last = lines;
        drop(err);
        if let Some(i) = states.iter().position(|s| s == "stranded") {
            let key = &keys[i];
            let v = c.get(&format!("/servers/{}", seg(key)), &[]).await?;
            let tail = v["stranded"]["output_tail"].as_str().unwrap_or("");
            return Err(step.fail(
                format!(
                    "{key} is stranded: {}\n{tail}",
                    v["stranded"]["message"].as_str().unwrap_or("?")
                ),
                &format!(
                    "look at `stratus runs list --server {key}` and `stratus server console {key}`; \
                     fix the script, then `stratus quickstart --down` and run it again"
                ),
            ));
        }
        if states.iter().all(|s| s == "operational") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(step.fail(
                "the servers did not become operational within 15 minutes",
                "look at `stratus server list` and `stratus server console DEPLOYMENT/NAME`",
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The files the quickstart uses (relative to the current directory).
struct Files {
    cloud: PathBuf,
    deployment: PathBuf,
    site: PathBuf,
}

impl Files {
    fn from(a: &QuickstartArgs) -> Self {
        Self {
            cloud: a.cloud_file.clone(),
            deployment: a.file.clone().unwrap_or_else(|| "examples/lb-and-app.toml".into()),
            site: a.site.clone(),
        }
    }
}

pub async fn local(running: &stratus_server::Running, c: &Client, a: &QuickstartArgs) -> anyhow::Result<()> {
    let files = Files::from(a);
    let total = 6;
    // 3: the cloud.
    let step = Step::begin(3, total, "cloud");
    let mut cloud_doc =
        read_file(&files.cloud).map_err(|e| step.fail(e, "run from the repository's root directory"))?;
    let cloud_name = cloud_doc.clouds.first().map(|c| c.name.to_string()).ok_or_else(|| {
        step.fail(
            format!("{} defines no cloud", files.cloud.display()),
            "pass --cloud-file",
        )
    })?;
    if let Some(net) = a.subnet {
        for cl in &mut cloud_doc.clouds {
            cl.local.get_or_insert_with(Default::default).subnet = Some(net);
        }
    }
    c.post("/apply", &json!({ "document": cloud_doc, "dry_run": false }))
        .await
        .map_err(|e| {
            step.fail(
                e,
                "another local cloud may use the same subnet: pass --subnet 10.X.0.0/22 with a free one",
            )
        })?;
    step.done(&format!("cloud {cloud_name}"));

    // 4: the image.
    let step = Step::begin(4, total, "image");
    let image = "debian-12";
    let build_path = format!("/images/{image}/build");
    let build_body = json!({ "cloud": cloud_name });
    let built = tokio::select! {
        r = c.post(&build_path, &build_body) => r,
        () = async {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!("      building {image} with debootstrap... {} s", started.elapsed().as_secs());
            }
        } => unreachable!("the ticker never ends"),
    };
    let built = built.map_err(|e| {
        step.fail(
            e,
            "debootstrap needs the Debian mirror (deb.debian.org); check the network, then run the quickstart again",
        )
    })?;
    step.done(&format!(
        "image {image}: {}",
        built["clouds"][&cloud_name]["native_id"].as_str().unwrap_or("built")
    ));

    // 5: the application archive.
    let step = Step::begin(5, total, "application");
    let tmp = tempfile::tempdir().context("cannot make a temporary directory")?;
    let archive = tmp.path().join("site.tar.gz");
    site_archive(&files.site, &archive).map_err(|e| step.fail(e, "check that examples/site exists"))?;
    let sha = sha256_file(&archive)?;
    if c.get("/buckets/www", &[]).await.is_err() {
        c.post("/buckets", &json!({ "name": "www" }))
            .await
            .map_err(|e| step.fail(e, "see the control plane's log"))?;
    }
    let current = c
        .get("/buckets/www/object-info", &[("key", "site.tar.gz".into())])
        .await;
    let note = match current {
        Ok(o) if o["sha256"] == sha.as_str() => "www/site.tar.gz unchanged".to_string(),
        Ok(_) | Err(_) => {
            let body = std::fs::read(&archive)?;
            let req = c
                .request(reqwest::Method::PUT, "/buckets/www/object")
                .query(&[("key", "site.tar.gz"), ("sha256", sha.as_str())])
                .body(body);
            c.execute(req)
                .await
                .map_err(|e| step.fail(e, "see the control plane's log"))?;
            format!("uploaded www/site.tar.gz ({})", &sha[..12])
        }
    };
    step.done(&note);

    // 6: the deployment.
    let step = Step::begin(6, total, "deployment");
    let doc = read_file(&files.deployment).map_err(|e| step.fail(e, "run from the repository's root directory"))?;
    let deployment = doc
        .deployment
        .as_ref()
        .map(|d| d.name.to_string())
        .ok_or_else(|| step.fail("the file has no [deployment]", "pass a deployment file with --file"))?;
    let plan = c
        .post("/apply", &json!({ "document": doc, "dry_run": false }))
        .await
        .map_err(|e| {
            step.fail(
                e,
                "fix the deployment file; `stratus apply -f FILE --dry-run` shows the plan",
            )
        })?;
    if let Ok(p) = serde_json::from_value(plan) {
        print_plan(&p);
    }
    let keys: Vec<String> = doc.servers.iter().map(|s| format!("{deployment}/{}", s.name)).collect();
    watch_servers(c, &keys, &step).await?;
    step.done(&format!("{} servers operational", keys.len()));

    // The load balancer: the server whose template balances a pool.
    let mut lb_url = None;
    for key in &keys {
        let s = c.get(&format!("/servers/{}", seg(key)), &[]).await?;
        let balances = s["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|t| t.starts_with("lb:balances="));
        if balances {
            let port = s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find_map(|t| t.strip_prefix("lb:listen="))
                .unwrap_or("80")
                .to_string();
            let ip = s["private_ip"].as_str().unwrap_or("?");
            lb_url = Some(if port == "80" {
                format!("http://{ip}/")
            } else {
                format!("http://{ip}:{port}/")
            });
        }
    }
    // Operational members join the load balancer's rotation a moment later (its configuration
    // is pushed and reloaded): the URL printed below answers when it is printed.
    if let Some(u) = &lb_url {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = http.get(u).send().await.is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                say!(
                    "warning: the load balancer at {u} does not answer yet; see `stratus server console` of its server"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    say!();
    say!("Deployment {deployment} is up: {} servers operational.", keys.len());
    if let Some(u) = &lb_url {
        say!("  Load balancer: {u}   (try: curl {u} - each answer names the server behind it)");
    }
    say!(
        "  Dashboard:     {}/ui/   (sign in with the token in {})",
        running.url,
        running.admin_token_file.display()
    );
    say!("  API:           {}/api/v1", running.url);
    say!("Next:");
    say!("  stratus server list --deployment {deployment}");
    if let Some(first) = keys.iter().find(|k| k.contains("app")) {
        say!("  stratus runs list --server {first}");
        say!("  stratus server launch app-3 -d {deployment} -t www-app --wait   # joins the pool");
        say!("  stratus server terminate {first}   # leaves it, before its instance goes");
    }
    say!("  stratus quickstart --down   (remove it all)");
    Ok(())
}

/// Remove what the local quickstart created, newest first.
pub async fn down_local(c: &Client, a: &QuickstartArgs) -> anyhow::Result<()> {
    let files = Files::from(a);
    let doc = read_file(&files.deployment)?;
    super::serve::down(
        c,
        &doc,
        doc.deployment.as_ref().map(|d| d.name.as_str()).unwrap_or("www"),
    )
    .await?;
    for key in ["site.tar.gz"] {
        let req = c
            .request(reqwest::Method::DELETE, "/buckets/www/object")
            .query(&[("key", key)]);
        if let Err(e) = c.execute(req).await
            && !not_found(&e)
        {
            return Err(e);
        }
    }
    if let Err(e) = c.delete("/buckets/www").await
        && !not_found(&e)
    {
        eprintln!("      the bucket www is kept: {e}");
    }
    if let Err(e) = c.delete("/images/debian-12").await
        && !not_found(&e)
    {
        return Err(e);
    }
    let cloud_doc = read_file(&files.cloud)?;
    for cl in &cloud_doc.clouds {
        if let Err(e) = c.delete(&format!("/clouds/{}", seg(cl.name.as_str()))).await
            && !not_found(&e)
        {
            return Err(e);
        }
    }
    Ok(())
}

pub fn check_host(total: usize) -> anyhow::Result<()> {
    let step = Step::begin(1, total, "host");
    host(&step)
}
