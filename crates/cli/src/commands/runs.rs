//! `stratus run`, `stratus runs ...` and `stratus rollouts ...`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::Ctx;
use crate::args::{OperationCmd, RolloutsCmd, RunArgs, RunsCmd};
use crate::client::{Client, seg};
use crate::output::{Column, list, show};

/// How often `--follow` looks again.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

/// `stratus run SCRIPT --on SERVER | --tag SELECTOR [--follow]`.
pub async fn start(ctx: &Ctx, a: &RunArgs) -> anyhow::Result<()> {
    if let Some(selector) = &a.tag {
        return start_rollout(ctx, a, selector).await;
    }
    let c = &ctx.client;
    let server = a.server.as_deref().unwrap_or_default();
    let mut body = json!({ "script": a.script, "server": server });
    if let Some(t) = a.timeout {
        body["timeout_secs"] = t.into();
    }
    let mut inputs = serde_json::Map::new();
    for i in &a.inputs {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--input {i:?}: give NAME=VALUE"))?;
        inputs.insert(k.to_string(), v.into());
    }
    if !inputs.is_empty() {
        body["inputs"] = inputs.into();
    }
    let run = c.post("/runs", &body).await?;
    let id = run["id"].as_str().unwrap_or_default().to_string();
    if !a.follow {
        if ctx.json {
            show(true, &run);
        } else {
            say!("started run {id}; follow it with `stratus runs show {id}`");
        }
        return Ok(());
    }
    follow_run(c, &id).await
}

/// Print a run's output as it arrives; the result decides the exit status.
async fn follow_run(c: &Client, id: &str) -> anyhow::Result<()> {
    let mut printed = 0usize;
    loop {
        let r = c.get(&format!("/runs/{}", seg(id)), &[]).await?;
        let out = r["output"].as_str().unwrap_or_default();
        // The stored output keeps its tail; print what is new since the last look.
        if out.len() > printed {
            let start = out
                .char_indices()
                .map(|(i, _)| i)
                .find(|&i| i >= printed)
                .unwrap_or(out.len());
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = stdout.write_all(&out.as_bytes()[start..]).and_then(|()| stdout.flush());
            printed = out.len();
        }
        let status = r["status"].as_str().unwrap_or_default();
        if !matches!(status, "queued" | "running") {
            eprintln!("run {id} {}", outcome(&r));
            if status != "succeeded" {
                anyhow::bail!("the script did not succeed");
            }
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// `succeeded`, `failed (exit code 3)`.
fn outcome(r: &Value) -> String {
    let status = r["status"].as_str().unwrap_or_default();
    match r["exit_code"].as_i64() {
        Some(code) => format!("{status} (exit code {code})"),
        None => status.to_string(),
    }
}

async fn start_rollout(ctx: &Ctx, a: &RunArgs, selector: &str) -> anyhow::Result<()> {
    let mut body = json!({ "script": a.script, "selector": selector, "max_errors": a.max_errors });
    if let Some(d) = &a.deployment {
        body["deployment"] = d.clone().into();
    }
    if a.all_deployments {
        body["all_deployments"] = true.into();
    }
    if let Some(n) = a.concurrency {
        body["concurrency"] = n.into();
    }
    if let Some(t) = a.timeout {
        body["timeout_secs"] = t.into();
    }
    launch_rollout(ctx, "/rollouts", &body, a.follow, "rollout").await
}

/// Start a rollout (`POST path`), say what it skipped, and follow it or say how to.
/// `what` names it in the messages ("rollout", "deploy of www/site.tar.gz").
pub(crate) async fn launch_rollout(
    ctx: &Ctx,
    path: &str,
    body: &Value,
    follow: bool,
    what: &str,
) -> anyhow::Result<()> {
    let c = &ctx.client;
    let ro = c.post(path, body).await?;
    let id = ro["id"].as_str().unwrap_or_default().to_string();
    let total = ro["runs"].as_array().map_or(0, Vec::len);
    for s in ro["skipped"].as_array().into_iter().flatten() {
        eprintln!("skipped {}", s.as_str().unwrap_or_default());
    }
    if !follow {
        if ctx.json {
            show(true, &ro);
        } else {
            say!("started {what} (rollout {id}) on {total} servers; follow it with `stratus rollouts show {id}`");
        }
        return Ok(());
    }
    eprintln!(
        "{what} (rollout {id}): {total} servers, {} at a time",
        ro["concurrency"]
    );
    follow_rollout(c, &id).await
}

/// Print each run's result as it finishes (with the end of a failure's output), then the
/// totals; a rollout that did not fully succeed is an error.
async fn follow_rollout(c: &Client, id: &str) -> anyhow::Result<()> {
    let mut reported: HashSet<String> = HashSet::new();
    let mut seen = Value::Null;
    loop {
        let ro = c.get(&format!("/rollouts/{}", seg(id)), &[]).await?;
        // Runs are listed again only when the counts moved.
        let counts = json!([ro["succeeded"], ro["failed"], ro["cancelled"], ro["status"]]);
        let runs = if counts == seen {
            vec![]
        } else {
            let q = vec![("rollout", id.to_string())];
            c.list("/runs", q, Some(1000), true).await?
        };
        seen = counts;
        for r in &runs {
            let run_id = r["id"].as_str().unwrap_or_default().to_string();
            let status = r["status"].as_str().unwrap_or_default();
            if matches!(status, "queued" | "running") || !reported.insert(run_id) {
                continue;
            }
            say!(
                "{}/{}: {}",
                r["deployment"].as_str().unwrap_or_default(),
                r["server_name"].as_str().unwrap_or_default(),
                outcome(r)
            );
            if status != "succeeded" {
                let out = r["output"].as_str().unwrap_or_default();
                let lines: Vec<&str> = out.lines().collect();
                for l in &lines[lines.len().saturating_sub(5)..] {
                    say!("    {l}");
                }
            }
        }
        let status = ro["status"].as_str().unwrap_or_default();
        if status != "running" {
            eprintln!(
                "rollout {id} {status}: {} succeeded, {} failed, {} cancelled",
                ro["succeeded"], ro["failed"], ro["cancelled"]
            );
            if status != "succeeded" {
                anyhow::bail!("the rollout did not fully succeed");
            }
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

pub async fn rollouts(ctx: &Ctx, cmd: &RolloutsCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        RolloutsCmd::List(page) => {
            let cols: &[Column] = &[
                ("ID", "/id"),
                ("SCRIPT", "/script"),
                ("SELECTOR", "/selector"),
                ("STATUS", "/status"),
                ("OK", "/succeeded"),
                ("FAILED", "/failed"),
                ("CANCELLED", "/cancelled"),
                ("CREATED", "/created_at"),
            ];
            list(
                ctx.json,
                &c.list("/rollouts", vec![], page.limit, page.all_pages).await?,
                cols,
            );
        }
        RolloutsCmd::Show { id } => show(ctx.json, &c.get(&format!("/rollouts/{}", seg(id)), &[]).await?),
        RolloutsCmd::Cancel { id } => {
            let ro = c.post(&format!("/rollouts/{}/cancel", seg(id)), &json!({})).await?;
            if ctx.json {
                show(true, &ro);
            } else {
                say!("cancelling rollout {id}");
            }
        }
    }
    Ok(())
}

pub async fn operations(ctx: &Ctx, cmd: &OperationCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        OperationCmd::List { server, page } => {
            let cols: &[Column] = &[
                ("ID", "/id"),
                ("KIND", "/kind/type"),
                ("SERVER", "/server_name"),
                ("STEP", "/step"),
                ("SUCCESSOR", "/successor_name"),
                ("BY", "/requested_by"),
                ("CREATED", "/created_at"),
            ];
            let q: Vec<(&str, String)> = server.iter().map(|s| ("server", s.clone())).collect();
            list(
                ctx.json,
                &c.list("/operations", q, page.limit, page.all_pages).await?,
                cols,
            );
        }
        OperationCmd::Show { id } => show(ctx.json, &c.get(&format!("/operations/{}", seg(id)), &[]).await?),
    }
    Ok(())
}

pub async fn runs(ctx: &Ctx, cmd: &RunsCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        RunsCmd::List { server, status, page } => {
            let mut q: Vec<(&str, String)> = vec![];
            for (k, v) in [("server", server), ("status", status)] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            let cols: &[Column] = &[
                ("ID", "/id"),
                ("SERVER", "/server_name"),
                ("SCRIPT", "/script"),
                ("PHASE", "/phase"),
                ("STATUS", "/status"),
                ("EXIT", "/exit_code"),
                ("STARTED", "/started_at"),
            ];
            list(ctx.json, &c.list("/runs", q, page.limit, page.all_pages).await?, cols);
        }
        RunsCmd::Show { id } => show(ctx.json, &c.get(&format!("/runs/{}", seg(id)), &[]).await?),
        RunsCmd::Cancel { id } => {
            let r = c.post(&format!("/runs/{}/cancel", seg(id)), &json!({})).await?;
            if ctx.json {
                show(true, &r);
            } else {
                say!("cancelling run {id}");
            }
        }
    }
    Ok(())
}
