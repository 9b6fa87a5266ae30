//! `stratus serve` and `stratus quickstart`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::apply::{print_plan, read_file};
use crate::args::{QuickstartArgs, ServeArgs};
use crate::client::{ApiFailure, Client, seg};

/// The control plane's configuration, with this very binary as the local cloud's instance init.
fn server_config(data_dir: &std::path::Path, listen: std::net::SocketAddr) -> anyhow::Result<stratus_server::Config> {
    let mut config = stratus_server::Config::new(data_dir, listen);
    let me = std::env::current_exe().context("cannot find the stratus binary's own path")?;
    config.instance_init = Some(vec![me.clone().into(), crate::INSTANCE_INIT.into()]);
    config.instance_agent = Some(stratus_local::init::AgentSpec {
        binary: me,
        args: vec![crate::AGENT.into()],
    });
    Ok(config)
}

/// `stratus admin migrate-store --to URL`: the data directory's SQLite state into an empty
/// PostgreSQL database (see `stratus_store::migrate`).
pub async fn migrate_store(data_dir: PathBuf, to: &str, json: bool) -> anyhow::Result<()> {
    let shown = stratus_store::redact_url(to);
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        anyhow::bail!("--to {shown} is not a postgres:// URL");
    }
    let db = data_dir.join("stratus.db");
    if !db.is_file() {
        anyhow::bail!(
            "there is no SQLite state at {}; give the control plane's --data-dir",
            db.display()
        );
    }
    let from = stratus_store::SqliteStore::open(&db)
        .await
        .with_context(|| format!("cannot open {}", db.display()))?;
    let target = stratus_store::PostgresStore::connect(to, 2)
        .await
        .with_context(|| format!("cannot open {shown}"))?;
    let n = stratus_store::migrate::sqlite_to_postgres(&from, &target)
        .await
        .with_context(|| format!("cannot copy the state into {shown}"))?;
    if json {
        crate::output::show(true, &serde_json::to_value(&n)?);
    } else {
        say!(
            "copied {} resources ({} tags), {} sealed credential values, {} audit entries and {} settings into {shown}",
            n.resources,
            n.tags,
            n.secrets,
            n.audit,
            n.settings
        );
        say!(
            "next: stop using {}, give every replica this data directory's master.key, and run `stratus serve --store` (STRATUS_STORE) on it",
            db.display()
        );
    }
    Ok(())
}

pub async fn serve(data_dir: PathBuf, a: &ServeArgs) -> anyhow::Result<()> {
    let mut config = server_config(&data_dir, a.listen)?;
    config.public_url = a.public_url.clone();
    config.boot_deadline = Duration::from_secs(a.boot_deadline);
    config.decommission_timeout = Duration::from_secs(a.decommission_timeout);
    config.artifact_max = a.artifact_max;
    config.store_url = a.store.clone();
    config.artifacts = a.artifacts.clone();
    config.limits = stratus_server::serve::Limits {
        header_read_timeout: Duration::from_secs(a.header_timeout),
        max_connections_per_ip: a.max_connections_per_ip,
        max_connections: a.max_connections,
    };
    config.max_agent_sessions = a.max_agent_sessions;
    config.agent_source_check = !a.agents_behind_proxy;
    for f in &a.identity_certs {
        let pem = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        config.identity_certificates.push(pem);
    }
    if let Some(ca) = &a.agent_ca {
        let pem = std::fs::read_to_string(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.len() > 8 * 1024 {
            anyhow::bail!(
                "--agent-ca {}: give one PEM certificate of at most 8 KiB (it travels in the 16 KiB user-data)",
                ca.display()
            );
        }
        config.agent_ca_pem = Some(pem);
    }
    let running = stratus_server::start(config).await?;
    if running.created_admin {
        say!(
            "First start: created user `admin`. Its API token is in {} (mode 0600).",
            running.admin_token_file.display()
        );
        say!(
            "Log in with: stratus login --token-file {}",
            running.admin_token_file.display()
        );
    }
    say!(
        "Stratus control plane listening on {} (data in {})",
        running.url,
        data_dir.display()
    );
    say!("Dashboard: {}/ui/ (sign in with an API token)", running.url);
    tokio::select! {
        r = running.wait() => r,
        _ = tokio::signal::ctrl_c() => {
            say!("stopping");
            Ok(())
        }
    }
}

async fn client_for(running: &stratus_server::Running) -> anyhow::Result<Client> {
    let token = std::fs::read_to_string(&running.admin_token_file)
        .with_context(|| format!("cannot read {}", running.admin_token_file.display()))?;
    Ok(Client::new(&running.url, Some(token.trim().to_string())))
}

/// Bring up the example deployment on an embedded control plane, or take it down: on the
/// local cloud (see `quickstart.rs`), or with `--sandbox` on the simulated one.
pub async fn quickstart(data_dir: PathBuf, a: &QuickstartArgs, json_out: bool) -> anyhow::Result<()> {
    if a.sandbox {
        return sandbox(data_dir, a, json_out).await;
    }
    let total = 6;
    super::quickstart::check_host(total)?;
    eprintln!("[2/{total}] control plane");
    let running = stratus_server::start(server_config(&data_dir, a.listen)?)
        .await
        .context(
            "step 2/6 (control plane) failed\n  what to do: another `stratus serve` may use the port; stop it or pass --listen",
        )?;
    eprintln!("      {} (data in {})", running.url, data_dir.display());
    let client = client_for(&running).await?;
    if a.down {
        super::quickstart::down_local(&client, a).await?;
        say!("quickstart removed: its deployment, catalog entries, archive, image record and cloud");
        running.stop();
        return Ok(());
    }
    super::quickstart::local(&running, &client, a).await?;
    if a.exit {
        running.stop();
        return Ok(());
    }
    say!("Serving until Ctrl-C.");
    tokio::signal::ctrl_c().await?;
    running.stop();
    Ok(())
}

/// The example on the simulated cloud: servers move through their states, boot scripts are
/// recorded, nothing executes.
async fn sandbox(data_dir: PathBuf, a: &QuickstartArgs, json_out: bool) -> anyhow::Result<()> {
    let file = a.file.clone().unwrap_or_else(|| "examples/quickstart.toml".into());
    let doc =
        read_file(&file).with_context(|| format!("step 1/4 (read the deployment file {}) failed", file.display()))?;
    let deployment = doc
        .deployment
        .as_ref()
        .map(|d| d.name.to_string())
        .context("the quickstart file has no [deployment]")?;
    eprintln!(
        "[1/4] read {}: deployment {deployment}, {} servers",
        file.display(),
        doc.servers.len()
    );
    let running = stratus_server::start(server_config(&data_dir, a.listen)?)
        .await
        .context("step 2/4 (start the control plane) failed; is another `stratus serve` using the port? Stop it or pass --listen")?;
    let client = client_for(&running).await?;
    if a.down {
        down(&client, &doc, &deployment).await?;
        say!("quickstart removed: deployment {deployment} and its catalog entries");
        running.stop();
        return Ok(());
    }
    eprintln!("[2/4] control plane up at {}", running.url);
    eprintln!("[3/4] applying {}", file.display());
    let plan = client
        .post("/apply", &json!({ "document": doc, "dry_run": false }))
        .await
        .context("step 3/4 (apply the deployment) failed")?;
    if !json_out {
        print_plan(&serde_json::from_value(plan)?);
    }
    eprintln!("[4/4] waiting for servers to become operational");
    let names: Vec<String> = doc.servers.iter().map(|s| format!("{deployment}/{}", s.name)).collect();
    for key in &names {
        let v = super::servers::wait_for(
            &client,
            key,
            &["operational", "stranded"],
            Duration::from_secs(600),
            false,
        )
        .await?;
        if v["state"] == "stranded" {
            anyhow::bail!(
                "{key} is stranded: {}; see `stratus server show {key}`",
                v["stranded"]["message"].as_str().unwrap_or("?")
            );
        }
    }
    say!();
    say!("Deployment {deployment} is up: {} servers operational.", names.len());
    say!(
        "  API:        {}/api/v1  (OpenAPI: {}/api/v1/openapi.json)",
        running.url,
        running.url
    );
    say!("  Token:      {}", running.admin_token_file.display());
    say!("  Dashboard:  {}/ui/  (sign in with that token)", running.url);
    say!("Next:");
    say!("  stratus server list --deployment {deployment}");
    say!(
        "  stratus server show {}",
        names.first().map_or("DEPLOYMENT/NAME", String::as_str)
    );
    say!(
        "  stratus runs list --server {}",
        names.first().map_or("DEPLOYMENT/NAME", String::as_str)
    );
    say!("  stratus quickstart --sandbox --down   (remove it all)");
    if a.exit {
        running.stop();
        return Ok(());
    }
    say!("Serving until Ctrl-C.");
    tokio::signal::ctrl_c().await?;
    running.stop();
    Ok(())
}

fn ignore_missing(r: anyhow::Result<serde_json::Value>) -> anyhow::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.downcast_ref::<ApiFailure>().is_some_and(|f| f.code == "not_found") => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) async fn down(
    client: &Client,
    doc: &stratus_api::file::DeploymentFile,
    deployment: &str,
) -> anyhow::Result<()> {
    for a in &doc.arrays {
        ignore_missing(
            client
                .post(
                    &format!("/arrays/{}/{}/scale", seg(deployment), seg(a.name.as_str())),
                    &json!({"desired": 0}),
                )
                .await,
        )?;
    }
    let servers = client
        .list("/servers", vec![("deployment", deployment.to_string())], None, true)
        .await?;
    for s in &servers {
        let key = format!("{deployment}/{}", s["name"].as_str().unwrap_or_default());
        if !matches!(s["state"].as_str(), Some("decommissioning" | "terminated")) {
            ignore_missing(client.delete(&format!("/servers/{}", seg(&key))).await)?;
        }
        super::servers::wait_for(client, &key, &["terminated"], Duration::from_secs(600), false).await?;
    }
    for a in &doc.arrays {
        ignore_missing(
            client
                .delete(&format!("/arrays/{}/{}", seg(deployment), seg(a.name.as_str())))
                .await,
        )?;
    }
    ignore_missing(client.delete(&format!("/deployments/{}", seg(deployment))).await)?;
    for t in &doc.templates {
        ignore_missing(client.delete(&format!("/templates/{}", seg(t.name.as_str()))).await)?;
    }
    for s in &doc.scripts {
        ignore_missing(client.delete(&format!("/scripts/{}", seg(s.name.as_str()))).await)?;
    }
    for i in &doc.images {
        ignore_missing(client.delete(&format!("/images/{}", seg(i.name.as_str()))).await)?;
    }
    for c in &doc.clouds {
        ignore_missing(client.delete(&format!("/clouds/{}", seg(c.name.as_str()))).await)?;
    }
    Ok(())
}
