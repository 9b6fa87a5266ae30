//! Servers, arrays, runs.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::Ctx;
use crate::args::{ArrayCmd, ServerCmd};
use crate::client::{Client, seg};
use crate::output::{Column, list, show};

const SERVER_COLUMNS: &[Column] = &[
    ("DEPLOYMENT", "/deployment"),
    ("NAME", "/name"),
    ("STATE", "/state"),
    ("CLOUD", "/cloud"),
    ("SIZE", "/size"),
    ("PRIVATE IP", "/private_ip"),
    ("PUBLIC IP", "/public_ip"),
    ("TAGS", "/tags"),
];

/// `cpus=2,memory=4GiB` → constraints; anything else is a size name.
fn size_value(s: &str) -> anyhow::Result<Value> {
    if !s.contains('=') {
        return Ok(json!(s));
    }
    let mut out = serde_json::Map::new();
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("size {part:?} is not key=value"))?;
        let v = v.trim();
        out.insert(
            k.trim().to_string(),
            v.parse::<u64>().map_or_else(|_| json!(v), |n| json!(n)),
        );
    }
    Ok(Value::Object(out))
}

fn inputs(list: &[String]) -> anyhow::Result<Value> {
    let mut m = serde_json::Map::new();
    for i in list {
        let (k, v) = i
            .split_once('=')
            .with_context(|| format!("input {i:?} is not NAME=VALUE"))?;
        m.insert(k.to_string(), json!(v));
    }
    Ok(Value::Object(m))
}

/// Poll a server until it reaches one of `states` (bounded by `timeout`), printing changes.
pub async fn wait_for(
    client: &Client,
    key: &str,
    states: &[&str],
    timeout: Duration,
    quiet: bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let v = client.get(&format!("/servers/{}", seg(key)), &[]).await?;
        let state = v["state"].as_str().unwrap_or("?").to_string();
        if state != last && !quiet {
            eprintln!("{key}: {state}");
            last.clone_from(&state);
        }
        if states.contains(&state.as_str()) {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{key} is still {state} after {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn stranded_note(v: &Value) -> Option<String> {
    let r = v.get("stranded")?;
    Some(format!(
        "stranded at {}: {}{}",
        r["step"].as_str().unwrap_or("?"),
        r["message"].as_str().unwrap_or(""),
        r["exit_code"]
            .as_i64()
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default()
    ))
}

pub async fn server(ctx: &Ctx, cmd: &ServerCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        ServerCmd::List {
            deployment,
            state,
            tag,
            all,
            page,
        } => {
            let mut q: Vec<(&str, String)> = vec![];
            for (k, v) in [("deployment", deployment), ("state", state), ("tag", tag)] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            if *all {
                q.push(("all", "true".into()));
            }
            list(
                ctx.json,
                &c.list("/servers", q, page.limit, page.all_pages).await?,
                SERVER_COLUMNS,
            );
        }
        ServerCmd::Show { server } => {
            let v = c.get(&format!("/servers/{}", seg(server)), &[]).await?;
            show(ctx.json, &v);
        }
        ServerCmd::Launch {
            name,
            deployment,
            template,
            cloud,
            region,
            size,
            inputs: ins,
            tags,
            wait,
        } => {
            let mut body = json!({ "name": name, "deployment": deployment, "template": template, "inputs": inputs(ins)?, "tags": tags });
            if let Some(cl) = cloud {
                body["cloud"] = json!(cl);
            }
            if let Some(r) = region {
                body["region"] = json!(r);
            }
            if let Some(s) = size {
                body["size"] = size_value(s)?;
            }
            let v = c.post("/servers", &body).await?;
            let key = format!("{deployment}/{name}");
            if *wait {
                let v = wait_for(
                    c,
                    &key,
                    &["operational", "stranded", "terminated"],
                    Duration::from_secs(900),
                    ctx.json,
                )
                .await?;
                if let Some(note) = stranded_note(&v) {
                    anyhow::bail!("{key} {note}");
                }
                if v["state"] != "operational" {
                    anyhow::bail!("{key} was terminated before it became operational");
                }
                show(ctx.json, &v);
            } else if ctx.json {
                show(true, &v);
            } else {
                say!(
                    "launched {key} ({}); follow it with `stratus server show {key}`",
                    v["id"].as_str().unwrap_or("?")
                );
            }
        }
        ServerCmd::Console { server } => {
            let text = c.get_text(&format!("/servers/{}/console", seg(server))).await?;
            say!("{}", text.trim_end());
        }
        ServerCmd::Reboot { server } => {
            c.post(&format!("/servers/{}/reboot", seg(server)), &serde_json::json!({}))
                .await?;
            say!("rebooted {server}");
        }
        ServerCmd::Terminate { server, wait } => {
            c.delete(&format!("/servers/{}", seg(server))).await?;
            if *wait {
                wait_for(c, server, &["terminated"], Duration::from_secs(900), ctx.json).await?;
                say!("terminated {server}");
            } else {
                say!("terminating {server}; follow it with `stratus server show {server}`");
            }
        }
        ServerCmd::Replace { server } => {
            eprintln!("replacing {server}: launching its successor and waiting until it is operational...");
            let r = c.post(&format!("/servers/{}/replace", seg(server)), &json!({})).await?;
            if ctx.json {
                show(true, &r);
            } else {
                let moved = r["addresses"].as_array().map_or(0, Vec::len);
                say!(
                    "{} replaced {} ({moved} elastic IP(s) moved); {} is terminating",
                    r["new"].as_str().unwrap_or("?"),
                    r["old"].as_str().unwrap_or("?"),
                    r["old"].as_str().unwrap_or("?")
                );
            }
        }
        ServerCmd::Rebundle {
            server,
            array,
            image,
            then,
        } => {
            if !ctx.json {
                eprintln!(
                    "rebundling {server} for array {array}: preparing the instance, then capturing it (this takes a while)..."
                );
            }
            let mut body = json!({ "array": array, "then": then });
            if let Some(i) = image {
                body["image"] = i.clone().into();
            }
            let r = c.post(&format!("/servers/{}/rebundle", seg(server)), &body).await?;
            report_rebundle(ctx, &r);
        }
        ServerCmd::Tag { server, add, remove } => {
            let v = c
                .post(
                    &format!("/servers/{}/tags", seg(server)),
                    &json!({ "add": add, "remove": remove }),
                )
                .await?;
            if ctx.json {
                show(true, &v);
            } else {
                say!(
                    "{server}: {}",
                    v["tags"]
                        .as_array()
                        .map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn split_array(key: &str) -> anyhow::Result<(String, String)> {
    key.split_once('/')
        .map(|(a, b)| (seg(a), seg(b)))
        .with_context(|| format!("{key:?} is not DEPLOYMENT/ARRAY"))
}

pub async fn array(ctx: &Ctx, cmd: &ArrayCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    let cols: &[Column] = &[
        ("DEPLOYMENT", "/deployment"),
        ("NAME", "/name"),
        ("TEMPLATE", "/template"),
        ("MIN", "/min"),
        ("DESIRED", "/desired"),
        ("MAX", "/max"),
    ];
    match cmd {
        ArrayCmd::List { deployment, page } => {
            let q = deployment.iter().map(|d| ("deployment", d.clone())).collect();
            list(ctx.json, &c.list("/arrays", q, page.limit, page.all_pages).await?, cols);
        }
        ArrayCmd::Show { array } => {
            let (d, n) = split_array(array)?;
            show(ctx.json, &c.get(&format!("/arrays/{d}/{n}"), &[]).await?);
        }
        ArrayCmd::Scale { array, desired } => {
            let (d, n) = split_array(array)?;
            c.post(&format!("/arrays/{d}/{n}/scale"), &json!({ "desired": desired }))
                .await?;
            say!("{array}: desired {desired}");
        }
        ArrayCmd::Delete { array } => {
            let (d, n) = split_array(array)?;
            c.delete(&format!("/arrays/{d}/{n}")).await?;
            say!("deleted array {array}");
        }
        ArrayCmd::Rebundle { array, image } => {
            let (d, n) = split_array(array)?;
            if !ctx.json {
                eprintln!(
                    "rebuilding the image of {array}: launching a builder from the template, then rebundling it..."
                );
            }
            let mut body = json!({});
            if let Some(i) = image {
                body["image"] = i.clone().into();
            }
            let r = c.post(&format!("/arrays/{d}/{n}/rebundle"), &body).await?;
            report_rebundle(ctx, &r);
        }
    }
    Ok(())
}

fn report_rebundle(ctx: &Ctx, r: &Value) {
    if ctx.json {
        show(true, r);
        return;
    }
    let size = r["size_bytes"]
        .as_u64()
        .map_or_else(String::new, |b| format!(", {:.0} MB", b as f64 / 1e6));
    say!(
        "{} captured as image {} version {} ({}{size}) in {:.1} s; array {} launches from it now",
        r["server"].as_str().unwrap_or("?"),
        r["image"].as_str().unwrap_or("?"),
        r["version"],
        r["native_id"].as_str().unwrap_or("?"),
        r["seconds"].as_f64().unwrap_or(0.0),
        r["array"].as_str().unwrap_or("?"),
    );
    for line in r["removed"].as_array().into_iter().flatten() {
        say!("  removed {}", line.as_str().unwrap_or("?"));
    }
    if let Some(n) = r["relaunched"].as_str() {
        say!("relaunched as {n}; follow it with `stratus server show {n}`");
    }
}

/// `stratus ssh SERVER [-- COMMAND]`: log in as the signed-in user's own account (managed SSH)
/// at the server's public address (or private, with `--private` or when it has no public one).
pub async fn ssh(ctx: &Ctx, a: &crate::args::SshArgs) -> anyhow::Result<()> {
    let c = &ctx.client;
    let me = c.get("/whoami", &[]).await?;
    let user = me["user"]["name"].as_str().unwrap_or_default().to_string();
    // The user's own access list: it needs no API role, and says whether they may log in.
    let access = c.get(&format!("/users/{}/access", seg(&user)), &[]).await?;
    if !a.server.contains('/') {
        anyhow::bail!("name the server as DEPLOYMENT/NAME");
    }
    let entry = access
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["server"] == a.server.as_str())
        // A user without an API role is shown only the servers they may log in to.
        .with_context(|| {
            format!(
                "no live server {} that {user} may log in to; an admin grants it with `stratus user roles {user} --role server_login:DEPLOYMENT`",
                a.server
            )
        })?;
    if entry["login"] != true {
        anyhow::bail!(
            "{user} may not log in to {}; an admin grants it with `stratus user roles {user} --role server_login:DEPLOYMENT`",
            a.server
        );
    }
    let ip = if a.private {
        entry["private_ip"].as_str()
    } else {
        entry["public_ip"].as_str().or(entry["private_ip"].as_str())
    }
    .with_context(|| format!("{} has no address yet", a.server))?
    .to_string();
    let mut cmd = std::process::Command::new("ssh");
    let identity = a.identity.clone().or_else(|| {
        let f = crate::config::ssh_key_file(&user);
        f.exists().then_some(f)
    });
    if let Some(i) = identity {
        cmd.arg("-i").arg(i).args(["-o", "IdentitiesOnly=yes"]);
    }
    // Instances get their host keys at first boot: accept a new one, refuse a changed one.
    cmd.args(["-o", "StrictHostKeyChecking=accept-new", "-l", &user, &ip]);
    cmd.args(&a.command);
    let status = cmd.status().context("cannot run ssh (install openssh-client)")?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => anyhow::bail!("ssh was killed by a signal"),
    }
}
