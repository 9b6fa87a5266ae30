//! The dashboard in a real headless browser (Debian's chromium, driven through chromedriver over
//! the W3C WebDriver protocol), against an in-process control plane on the fake cloud whose
//! servers are booted by real agents (`stratus agent`, this crate's binary). Screenshots of the
//! main pages go to `$CARGO_TARGET_DIR/dashboard-screenshots/` (or `STRATUS_SCREENSHOTS`).

#[path = "support/webdriver.rs"]
mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use stratus_cloud::fake::FakeCloud;
use webdriver::{Browser, Kill};

const DEPLOYMENT: &str = r##"
[[cloud]]
name = "sandbox"
driver = "fake"
regions = [{ name = "here" }]
sizes = [{ name = "small", cpus = 1, memory = "512MiB" }]

[[image]]
name = "img"
[image.clouds.sandbox]
native_id = "fake-image"
default_size = "small"

[[script]]
name = "prepare"
frequency = "per-instance"
body = """#!/bin/sh
echo "preparing $(hostname)"
sleep 0.3
"""

[[script]]
name = "report"
frequency = "on-demand"
inputs = [{ name = "TIMES", default = "3" }]
body = """#!/bin/sh
i=1
while [ "$i" -le "$TIMES" ]; do echo "report line $i"; sleep 0.4; i=$((i+1)); done
"""

[[template]]
name = "web"
image = "img"
boot_scripts = ["prepare"]
operational_scripts = ["report"]
default_tags = ["role:tier=web"]

[deployment]
name = "demo"
cloud = "sandbox"

[[server]]
name = "web-1"
template = "web"

[[server]]
name = "web-2"
template = "web"
"##;

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("STRATUS_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("dashboard-screenshots")
        });
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_servers_live_runs_scripts_and_terminates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_driver, driver) = webdriver::chromedriver().await;
    let http = reqwest::Client::new();

    let mut config = stratus_server::Config::new(tmp.path().join("data"), "127.0.0.1:0".parse().expect("addr"));
    config.simulate_agents = false;
    // The fake cloud's instances have made-up addresses; the agent runs on loopback.
    config.agent_source_check = false;
    config.reconcile_interval = Duration::from_millis(100);
    let running = stratus_server::start(config).await.expect("control plane");
    let token = std::fs::read_to_string(&running.admin_token_file)
        .expect("token")
        .trim()
        .to_string();
    let doc = stratus_api::file::parse(DEPLOYMENT, stratus_api::file::Format::Toml, "test.toml", None).expect("parses");
    let plan: Value = http
        .post(format!("{}/api/v1/apply", running.url))
        .bearer_auth(&token)
        .json(&json!({ "document": doc }))
        .send()
        .await
        .expect("apply")
        .json()
        .await
        .expect("json");
    assert!(plan.get("error").is_none(), "{plan}");

    let shots = screenshots();
    let b = Browser::start(&driver).await;
    let ui = format!("{}/ui/", running.url);

    // Sign-in: a wrong token is refused with a message; the admin's token gets in.
    b.goto(&ui).await;
    b.type_into("#token", "stratus_wrong").await;
    b.click("form.login button[type=submit]").await;
    b.wait_text("a refusal", |t| t.contains("That token was refused")).await;
    b.screenshot(&shots, "01-sign-in").await;
    let field = b.find("#token").await;
    b.cmd(
        reqwest::Method::POST,
        &format!("/element/{field}/clear"),
        Some(json!({})),
    )
    .await;
    b.type_into("#token", &token).await;
    b.click("form.login button[type=submit]").await;
    b.wait_text("the deployments", |t| t.contains("Deployments") && t.contains("demo"))
        .await;
    b.screenshot(&shots, "02-deployments").await;

    // The deployment's servers, booting until their agents have run the boot script.
    b.click("a[href='#/deployments/demo']").await;
    b.wait_text("both servers booting", |t| {
        t.contains("web-1") && t.contains("web-2") && t.contains("booting")
    })
    .await;
    let app = &running.app;
    let driver_fake = app
        .drivers
        .for_cloud(&*app.store, &"sandbox".parse().expect("name"))
        .await
        .expect("driver");
    let fake = driver_fake.as_any().downcast_ref::<FakeCloud>().expect("fake");
    let mut agents = vec![];
    for name in ["web-1", "web-2"] {
        let s: Value = http
            .get(format!("{}/api/v1/servers/demo%2F{name}", running.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("server")
            .json()
            .await
            .expect("json");
        let instance = s["instance_id"].as_str().expect("instance");
        let ud = tmp.path().join(format!("{name}.user-data"));
        std::fs::write(&ud, fake.request(instance).expect("request").user_data).expect("user-data");
        agents.push(Kill(
            Command::new(env!("CARGO_BIN_EXE_stratus"))
                .arg("agent")
                .arg("--user-data")
                .arg(&ud)
                .arg("--state-dir")
                .arg(tmp.path().join(format!("{name}.state")))
                .stderr(Stdio::null())
                .spawn()
                .expect("agent"),
        ));
    }
    // Live: the page turns both servers operational without a reload.
    let marker = b.script("window.__stratusMarker = 42; return 1;").await;
    assert_eq!(marker, json!(1));
    b.wait_text("both servers operational", |t| {
        t.matches("operational").count() >= 2 && !t.contains("booting")
    })
    .await;
    assert_eq!(
        b.script("return window.__stratusMarker || null;").await,
        json!(42),
        "updated in place, not by reloading the page"
    );
    b.screenshot(&shots, "03-deployment").await;
    let text = b.text().await;
    assert!(
        text.contains("ssh admin@10.99."),
        "an SSH command per server (managed SSH, as the signed-in user): {text}"
    );
    assert!(text.contains("role:tier=web"), "tags: {text}");

    // A server's page: its boot timeline; an operational script whose output streams in.
    b.click("a[href='#/servers/demo%2Fweb-1']").await;
    b.wait_text("the boot timeline", |t| {
        t.contains("Boot timeline") && t.contains("prepare") && t.contains("succeeded")
    })
    .await;
    b.type_into("#input-TIMES", "5").await;
    b.click("form[aria-label='Run an operational script'] button[type=submit]")
        .await;
    b.wait_text("the first line of output", |t| t.contains("report line 1"))
        .await;
    let partial = b.text().await;
    b.screenshot(&shots, "04-server-running").await;
    let done = b.wait_text("the whole output", |t| t.contains("report line 5")).await;
    assert!(
        !partial.contains("report line 5") || partial.contains("report line 1"),
        "output arrived as it was produced"
    );
    assert!(done.contains("report line 1"), "{done}");
    b.screenshot(&shots, "05-server").await;

    // Terminate another server, with a confirmation first.
    b.goto(&format!("{ui}#/servers/demo%2Fweb-2")).await;
    b.wait_text("web-2's page", |t| {
        t.contains("Server demo/web-2") && t.contains("Terminate")
    })
    .await;
    b.click("button.danger").await;
    b.wait_text("the confirmation", |t| t.contains("Terminate demo/web-2?"))
        .await;
    b.screenshot(&shots, "06-confirm-terminate").await;
    b.click("#confirm-ok").await;
    b.wait_text("web-2 terminated", |t| t.contains("terminated")).await;

    // The runs and the audit log, filtered.
    b.goto(&format!("{ui}#/runs")).await;
    b.wait_text("the runs", |t| t.contains("report") && t.contains("demo/web-1"))
        .await;
    b.screenshot(&shots, "07-runs").await;
    b.goto(&format!("{ui}#/audit")).await;
    b.type_into("#f-action", "server.").await;
    b.click("form[aria-label='Filter the audit log'] button").await;
    b.wait_text("the termination in the audit log", |t| t.contains("server.terminate"))
        .await;
    b.screenshot(&shots, "08-audit").await;

    // Keyboard: every control on the page can be reached with Tab (each has a label).
    let unlabeled = b
        .script(
            "return [...document.querySelectorAll('input,select')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).length;",
        )
        .await;
    assert_eq!(unlabeled, json!(0), "every form control has a label");
    b.close().await;
    drop(agents);
    running.stop();
    println!("screenshots in {}", shots.display());
}
