//! Catalog resources, credentials, users, tokens, addresses, audit.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use super::Ctx;
use crate::args::{
    AddressCmd, AuditArgs, CatalogCmd, CredentialCmd, CredentialScopeArgs, ImageCmd, TemplateCmd, TokenCmd, UserCmd,
};
use crate::client::{ApiFailure, seg};
use crate::output::{Column, list, show};

/// How one catalog kind is reached and listed.
#[derive(Debug)]
pub struct KindInfo {
    pub path: &'static str,
    /// Its key in a deployment file (`cloud`, `deployment`).
    pub file_key: &'static str,
    pub columns: &'static [Column],
}

pub const CLOUD: KindInfo = KindInfo {
    path: "/clouds",
    file_key: "cloud",
    columns: &[
        ("NAME", "/name"),
        ("DRIVER", "/driver"),
        ("REGIONS", "/regions"),
        ("REVISION", "/revision"),
    ],
};
pub const IMAGE: KindInfo = KindInfo {
    path: "/images",
    file_key: "image",
    columns: &[
        ("NAME", "/name"),
        ("VERSIONS", "/versions"),
        ("DESCRIPTION", "/description"),
    ],
};
pub const SCRIPT: KindInfo = KindInfo {
    path: "/scripts",
    file_key: "script",
    columns: &[
        ("NAME", "/name"),
        ("FREQUENCY", "/frequency"),
        ("REVISION", "/revision"),
        ("DESCRIPTION", "/description"),
    ],
};
pub const TEMPLATE: KindInfo = KindInfo {
    path: "/templates",
    file_key: "template",
    columns: &[
        ("NAME", "/name"),
        ("VERSION", "/version"),
        ("IMAGE", "/image"),
        ("BOOT SCRIPTS", "/boot_scripts"),
        ("HASH", "/content_hash"),
    ],
};
pub const DEPLOYMENT: KindInfo = KindInfo {
    path: "/deployments",
    file_key: "deployment",
    columns: &[("NAME", "/name"), ("CLOUD", "/cloud"), ("DESCRIPTION", "/description")],
};

/// Lists print names of regions and versions rather than whole objects.
fn summarize(kind: &KindInfo, mut items: Vec<Value>) -> Vec<Value> {
    for it in &mut items {
        if kind.file_key == "cloud" {
            let regions: Vec<Value> = it["regions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["name"].clone())
                .collect();
            it["regions"] = Value::Array(regions);
        }
        if kind.file_key == "image" {
            let n = it["versions"].as_array().map_or(0, Vec::len);
            it["versions"] = json!(n);
        }
        if kind.file_key == "template" {
            let h = it["content_hash"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(12)
                .collect::<String>();
            it["content_hash"] = json!(h);
        }
    }
    items
}

/// Read one spec of `kind` from a TOML/YAML/JSON file, checked like a deployment-file entry.
pub fn read_spec(kind: &KindInfo, path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?,
        Some("yaml" | "yml") => {
            yaml_serde::from_str(&text).with_context(|| format!("{}: invalid YAML", path.display()))?
        }
        _ => toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?,
    };
    let doc = if kind.file_key == "deployment" {
        json!({ "deployment": value })
    } else {
        json!({ kind.file_key: [value] })
    };
    // JSON is YAML, so the deployment-file parser checks the spec (and inlines body_file).
    let text = serde_json::to_string(&doc)?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = stratus_api::file::parse(
        &text,
        stratus_api::file::Format::Yaml,
        &path.display().to_string(),
        Some(base),
    )?;
    let back = serde_json::to_value(&file)?;
    Ok(if kind.file_key == "deployment" {
        back["deployment"].clone()
    } else {
        back[kind.file_key][0].clone()
    })
}

pub async fn image(ctx: &Ctx, cmd: &ImageCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    let (name, v) = match cmd {
        ImageCmd::Catalog(cmd) => return catalog(ctx, &IMAGE, cmd).await,
        ImageCmd::Versions { name } => {
            let v = c.get(&format!("/images/{}/versions", seg(name)), &[]).await?;
            if ctx.json {
                show(true, &v);
                return Ok(());
            }
            let rows: Vec<Value> = v
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(version_row)
                .collect();
            list(
                false,
                &rows,
                &[
                    ("VERSION", "/version"),
                    ("CLOUDS", "/clouds"),
                    ("SOURCE", "/source"),
                    ("CREATED", "/created"),
                    ("STATUS", "/status"),
                    ("USED BY", "/used_by"),
                ],
            );
            return Ok(());
        }
        ImageCmd::Gc { name, keep } => {
            let v = c
                .post(&format!("/images/{}/gc", seg(name)), &json!({ "keep": keep }))
                .await?;
            if ctx.json {
                show(true, &v);
            } else {
                let nums = |k: &str| {
                    v[k].as_array()
                        .map(|a| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                };
                say!("image {name}: removed versions [{}]", nums("removed"));
                if v["kept_in_use"].as_array().is_some_and(|a| !a.is_empty()) {
                    say!("kept in use: [{}]", nums("kept_in_use"));
                }
            }
            return Ok(());
        }
        ImageCmd::Build(a) => {
            eprintln!(
                "building image {} on cloud {} with debootstrap (a minute or two the first time; cached after)...",
                a.name, a.cloud
            );
            let mut body = serde_json::json!({ "cloud": a.cloud, "extra_packages": a.extra_packages });
            for (key, value) in [("suite", &a.suite), ("mirror", &a.mirror)] {
                if let Some(v) = value {
                    body[key] = v.clone().into();
                }
            }
            if !a.packages.is_empty() {
                body["packages"] = a.packages.clone().into();
            }
            (
                &a.name,
                c.post(&format!("/images/{}/build", seg(&a.name)), &body).await?,
            )
        }
        ImageCmd::Import(a) => {
            let path = std::path::absolute(&a.file).with_context(|| format!("cannot resolve {}", a.file.display()))?;
            let body = serde_json::json!({ "cloud": a.cloud, "path": path });
            (
                &a.name,
                c.post(&format!("/images/{}/import", seg(&a.name)), &body).await?,
            )
        }
    };
    if ctx.json {
        show(true, &v);
    } else {
        let cloud = match cmd {
            ImageCmd::Build(a) => &a.cloud,
            ImageCmd::Import(a) => &a.cloud,
            ImageCmd::Catalog(_) | ImageCmd::Versions { .. } | ImageCmd::Gc { .. } => unreachable!("returned above"),
        };
        let native = v["clouds"][cloud.as_str()]["native_id"].as_str().unwrap_or("?");
        let version = v["versions"].as_array().map_or(0, Vec::len);
        say!("image {name} (version {version}) on cloud {cloud}: {native}");
    }
    Ok(())
}

/// One row of `stratus image versions`.
fn version_row(v: &Value) -> Value {
    let p = &v["provenance"];
    let source = if p.is_object() {
        format!(
            "{} ({} {})",
            p["source_name"].as_str().unwrap_or("?"),
            p["template"].as_str().unwrap_or("?"),
            p["template_hash"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(8)
                .collect::<String>()
        )
    } else {
        "registered".into()
    };
    let mut status = vec![];
    if v["current"].as_bool() == Some(true) {
        status.push("current".to_string());
    }
    if v["stale"].as_bool() == Some(true) {
        status.push(format!("STALE: {}", v["note"].as_str().unwrap_or("template changed")));
    }
    let clouds: Vec<String> = v["clouds"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k}={}", n["native_id"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "version": v["version"],
        "clouds": clouds.join(" "),
        "source": source,
        "created": v["created_at"].as_str().unwrap_or("").chars().take(19).collect::<String>(),
        "status": status.join(", "),
        "used_by": v["used_by"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
    })
}

pub async fn catalog(ctx: &Ctx, kind: &KindInfo, cmd: &CatalogCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        CatalogCmd::List(p) => {
            let items = c.list(kind.path, vec![], p.limit, p.all_pages).await?;
            list(ctx.json, &summarize(kind, items), kind.columns);
        }
        CatalogCmd::Show { name } => show(ctx.json, &c.get(&format!("{}/{}", kind.path, seg(name)), &[]).await?),
        CatalogCmd::Create { file } => {
            let spec = read_spec(kind, file)?;
            let v = c.post(kind.path, &spec).await?;
            report(ctx, &v, "created", kind);
        }
        CatalogCmd::Put { file } => {
            let spec = read_spec(kind, file)?;
            let name = spec["name"].as_str().unwrap_or_default().to_string();
            let v = c.put(&format!("{}/{}", kind.path, seg(&name)), &spec).await?;
            report(ctx, &v, "saved", kind);
        }
        CatalogCmd::Delete { name } => {
            c.delete(&format!("{}/{}", kind.path, seg(name))).await?;
            say!("deleted {} {name}", kind.file_key);
        }
        CatalogCmd::ResolveSize { name, size } => {
            if kind.file_key != "cloud" {
                anyhow::bail!("resolve-size is a cloud command: stratus cloud resolve-size CLOUD SIZE");
            }
            let v = c
                .get(
                    &format!("/clouds/{}/sizes/resolve", seg(name)),
                    &[("size", size.clone())],
                )
                .await?;
            if ctx.json {
                show(true, &v);
            } else {
                say!(
                    "{} ({} CPUs, {})",
                    v["size"]["name"].as_str().unwrap_or("?"),
                    v["size"]["cpus"],
                    v["size"]["memory"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(())
}

fn report(ctx: &Ctx, v: &Value, verb: &str, kind: &KindInfo) {
    if ctx.json {
        show(true, v);
    } else {
        say!("{verb} {} {}", kind.file_key, v["name"].as_str().unwrap_or("?"));
    }
}

pub async fn template(ctx: &Ctx, cmd: &TemplateCmd) -> anyhow::Result<()> {
    let as_catalog = match cmd {
        TemplateCmd::Versions { name } => {
            let v = ctx
                .client
                .get(&format!("/templates/{}/versions", seg(name)), &[])
                .await?;
            let items = v.as_array().cloned().unwrap_or_default();
            list(
                ctx.json,
                &items,
                &[
                    ("VERSION", "/version"),
                    ("HASH", "/content_hash"),
                    ("UPDATED", "/updated_at"),
                ],
            );
            return Ok(());
        }
        TemplateCmd::List(p) => CatalogCmd::List(p.clone()),
        TemplateCmd::Show { name } => CatalogCmd::Show { name: name.clone() },
        TemplateCmd::Create { file } => CatalogCmd::Create { file: file.clone() },
        TemplateCmd::Put { file } => CatalogCmd::Put { file: file.clone() },
        TemplateCmd::Delete { name } => CatalogCmd::Delete { name: name.clone() },
    };
    catalog(ctx, &TEMPLATE, &as_catalog).await
}

/// A credential value: from a file, or stdin (a prompt-free pipe: `printf %s "$PW" | stratus ...`).
fn read_value(file: &Option<std::path::PathBuf>) -> anyhow::Result<String> {
    let mut s = String::new();
    match file {
        Some(f) => s = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        None => {
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the value from stdin")?;
        }
    }
    let v = s.strip_suffix('\n').unwrap_or(&s).to_string();
    if v.is_empty() {
        anyhow::bail!("the credential value is empty; pipe it on stdin or give --value-file");
    }
    Ok(v)
}

/// Put the scope flags into a credential body; a flag not given keeps `current`'s value (or
/// the server's default for a new credential).
fn scope_into(body: &mut Value, scope: &CredentialScopeArgs, current: Option<&Value>) {
    let deployments = if scope.deployments.is_empty() {
        current.map(|v| v["deployments"].clone()).filter(|v| v.is_array())
    } else {
        Some(json!(scope.deployments))
    };
    if let Some(d) = deployments {
        body["deployments"] = d;
    }
    let attach = match &scope.attach {
        Some(a) => Some(json!(a)),
        None => current.map(|v| v["attach"].clone()).filter(|v| v.is_string()),
    };
    if let Some(a) = attach {
        body["attach"] = a;
    }
}

pub async fn credential(ctx: &Ctx, cmd: &CredentialCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    let cols: &[Column] = &[
        ("NAME", "/name"),
        ("REVISION", "/revision"),
        ("ATTACH", "/attach"),
        ("DEPLOYMENTS", "/deployments"),
        ("UPDATED", "/updated_at"),
        ("DESCRIPTION", "/description"),
    ];
    match cmd {
        CredentialCmd::List(p) => list(
            ctx.json,
            &c.list("/credentials", vec![], p.limit, p.all_pages).await?,
            cols,
        ),
        CredentialCmd::Show { name } => show(ctx.json, &c.get(&format!("/credentials/{}", seg(name)), &[]).await?),
        CredentialCmd::Create {
            name,
            description,
            value_file,
            scope,
        } => {
            let mut body = json!({ "name": name, "description": description.clone().unwrap_or_default(), "value": read_value(value_file)? });
            scope_into(&mut body, scope, None);
            c.post("/credentials", &body).await?;
            say!("created credential {name} (the value is stored encrypted and will not be shown again)");
        }
        CredentialCmd::Set {
            name,
            description,
            value_file,
            scope,
        } => {
            // Keep the current description and scope unless new ones are given. The server keeps
            // fields a PUT leaves out; they are sent too, for servers that did not. Only "no such
            // credential" (a create) goes on without them: any other failure stops here rather
            // than risk sending a value without its scope.
            let current = match c.get(&format!("/credentials/{}", seg(name)), &[]).await {
                Ok(v) => Some(v),
                Err(e)
                    if e.downcast_ref::<ApiFailure>()
                        .is_some_and(|f| f.status == reqwest::StatusCode::NOT_FOUND) =>
                {
                    None
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "cannot read credential {name}'s current scope; nothing changed"
                    )));
                }
            };
            let description = match description {
                Some(d) => d.clone(),
                None => current
                    .as_ref()
                    .and_then(|v| v["description"].as_str())
                    .unwrap_or_default()
                    .to_string(),
            };
            let mut body = json!({ "name": name, "description": description, "value": read_value(value_file)? });
            scope_into(&mut body, scope, current.as_ref());
            c.put(&format!("/credentials/{}", seg(name)), &body).await?;
            say!("saved credential {name}");
        }
        CredentialCmd::Delete { name } => {
            c.delete(&format!("/credentials/{}", seg(name))).await?;
            say!("deleted credential {name}");
        }
    }
    Ok(())
}

pub async fn user(ctx: &Ctx, cmd: &UserCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        UserCmd::List(p) => {
            let mut items = c.list("/users", vec![], p.limit, p.all_pages).await?;
            for u in &mut items {
                let n = u["ssh_keys"].as_array().map_or(0, Vec::len);
                u["ssh_keys"] = json!(n);
            }
            list(
                ctx.json,
                &items,
                &[
                    ("NAME", "/name"),
                    ("ROLES", "/roles"),
                    ("SSH KEYS", "/ssh_keys"),
                    ("EMAIL", "/email"),
                ],
            );
        }
        UserCmd::Show { name } => show(ctx.json, &c.get(&format!("/users/{}", seg(name)), &[]).await?),
        UserCmd::Create { name, email, roles } => {
            c.post(
                "/users",
                &json!({ "name": name, "email": email.clone().unwrap_or_default(), "roles": roles }),
            )
            .await?;
            say!("created user {name}; give them a token with `stratus token create --user {name}`");
        }
        UserCmd::Access { name } => {
            let v = c.get(&format!("/users/{}/access", seg(name)), &[]).await?;
            let items: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            list(
                ctx.json,
                &items,
                &[
                    ("SERVER", "/server"),
                    ("LOGIN", "/login"),
                    ("SUDO", "/sudo"),
                    ("ACKNOWLEDGED", "/acknowledged"),
                    ("SSH", "/ssh"),
                ],
            );
        }
        UserCmd::Roles { name, roles } => {
            let u = c.get(&format!("/users/{}", seg(name)), &[]).await?;
            c.put(
                &format!("/users/{}", seg(name)),
                &json!({ "name": name, "email": u["email"].as_str().unwrap_or(""), "roles": roles }),
            )
            .await?;
            say!("user {name} now has roles: {}", roles.join(", "));
        }
        UserCmd::Delete { name } => {
            c.delete(&format!("/users/{}", seg(name))).await?;
            say!("deleted user {name} and their tokens");
        }
        UserCmd::AddKey {
            name,
            key_file,
            generate,
        } => {
            let key = match (key_file, generate) {
                (Some(f), _) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
                (None, _) => generate_key(name)?,
            };
            let u = c
                .post(
                    &format!("/users/{}/keys", seg(name)),
                    &json!({ "public_key": key.trim() }),
                )
                .await?;
            let fp = u["ssh_keys"]
                .as_array()
                .and_then(|k| k.last())
                .and_then(|k| k["fingerprint"].as_str())
                .unwrap_or("?");
            say!("added key {fp} to {name}");
        }
        UserCmd::RemoveKey { name, fingerprint } => {
            c.delete(&format!("/users/{}/keys/{}", seg(name), seg(fingerprint)))
                .await?;
            say!("removed key {fingerprint} from {name}");
        }
    }
    Ok(())
}

pub async fn token(ctx: &Ctx, cmd: &TokenCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        TokenCmd::Create {
            user,
            description,
            ttl_hours,
        } => {
            let v = c
                .post(
                    "/tokens",
                    &json!({ "user": user, "description": description, "ttl_hours": ttl_hours }),
                )
                .await?;
            if ctx.json {
                show(true, &v);
            } else {
                say!("{}", v["token"].as_str().unwrap_or(""));
                eprintln!(
                    "token {} for {user}: shown once; store it now",
                    v["info"]["id"].as_str().unwrap_or("?")
                );
            }
        }
        TokenCmd::List { user } => {
            let v = c.get(&format!("/users/{}/tokens", seg(user)), &[]).await?;
            list(
                ctx.json,
                v.as_array().map_or(&[][..], Vec::as_slice),
                &[
                    ("ID", "/id"),
                    ("DESCRIPTION", "/description"),
                    ("CREATED", "/created_at"),
                    ("EXPIRES", "/expires_at"),
                ],
            );
        }
        TokenCmd::Revoke { id } => {
            c.delete(&format!("/tokens/{}", seg(id))).await?;
            say!("revoked token {id}");
        }
    }
    Ok(())
}

pub async fn address(ctx: &Ctx, cmd: &AddressCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    let cols: &[Column] = &[
        ("NAME", "/name"),
        ("CLOUD", "/cloud"),
        ("POOL", "/pool"),
        ("IP", "/ip"),
        ("SERVER", "/server"),
    ];
    match cmd {
        AddressCmd::List(p) => list(
            ctx.json,
            &c.list("/addresses", vec![], p.limit, p.all_pages).await?,
            cols,
        ),
        AddressCmd::Show { name } => show(ctx.json, &c.get(&format!("/addresses/{}", seg(name)), &[]).await?),
        AddressCmd::Allocate { name, cloud, pool } => {
            let v = c
                .post("/addresses", &json!({ "name": name, "cloud": cloud, "pool": pool }))
                .await?;
            say!("allocated {name}: {}", v["ip"].as_str().unwrap_or("?"));
        }
        AddressCmd::Associate { name, server } => {
            let v = c
                .post(
                    &format!("/addresses/{}/associate", seg(name)),
                    &json!({ "server": server }),
                )
                .await?;
            say!("{} ({name}) now reaches {server}", v["ip"].as_str().unwrap_or("?"));
        }
        AddressCmd::Disassociate { name } => {
            c.post(&format!("/addresses/{}/disassociate", seg(name)), &json!({}))
                .await?;
            say!("disassociated {name}");
        }
        AddressCmd::Release { name } => {
            c.delete(&format!("/addresses/{}", seg(name))).await?;
            say!("released {name}");
        }
    }
    Ok(())
}

pub async fn audit(ctx: &Ctx, a: &AuditArgs) -> anyhow::Result<()> {
    let mut q: Vec<(&str, String)> = vec![];
    for (k, v) in [("actor", &a.actor), ("action", &a.action), ("target", &a.target)] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    if let Some(l) = a.limit {
        q.push(("limit", l.to_string()));
    }
    let v = ctx.client.get("/audit", &q).await?;
    list(
        ctx.json,
        v.as_array().map_or(&[][..], Vec::as_slice),
        &[
            ("AT", "/at"),
            ("ACTOR", "/actor"),
            ("ACTION", "/action"),
            ("TARGET", "/target"),
        ],
    );
    Ok(())
}

/// Make an ed25519 key pair with `ssh-keygen` in the CLI's configuration directory (0600; an
/// existing one is kept, never overwritten); the public key's line.
fn generate_key(user: &str) -> anyhow::Result<String> {
    let file = crate::config::ssh_key_file(user);
    if !file.exists() {
        let dir = file.parent().context("the key file has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &format!("{user}@stratus"), "-f"])
            .arg(&file)
            .output()
            .context("cannot run ssh-keygen (install openssh-client)")?;
        if !out.status.success() {
            anyhow::bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        eprintln!(
            "made a new ed25519 key pair: {} (private, mode 0600; it never leaves this machine)",
            file.display()
        );
    } else {
        eprintln!("using the existing key pair {}", file.display());
    }
    let public = file.with_extension("pub");
    let public = if public.exists() {
        public
    } else {
        std::path::PathBuf::from(format!("{}.pub", file.display()))
    };
    std::fs::read_to_string(&public).with_context(|| format!("cannot read {}", public.display()))
}
