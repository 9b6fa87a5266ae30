//! Credentials: created and replaced with a value, never shown again, and their scope.
//!
//! A credential's value reaches scripts through inputs naming `cred:NAME`. Two rules keep it
//! with the people and servers it is meant for (the masker only hides it from run output; a
//! script that receives it can always send it elsewhere, so who may *write* such a script is
//! the real control):
//!
//! 1. **Attach** (`Credential::attach`, `admin` unless the credential allows `operator`): only
//!    an actor at that level may create or change anything through which the value would reach
//!    a script — see [`attachments`] for the exact list, which `apply`, launches, input updates
//!    and runs all check through [`require_attach`] before anything is written.
//! 2. **Deployments** (`Credential::deployments`, names or `*`-globs, default `*`): the value is
//!    only ever decrypted for a server of a matching deployment ([`reveal_for`]), checked again
//!    when each run is delivered, so a template reused in another deployment, or a scope narrowed
//!    later, fails the run with a message naming the credential and the deployment.
//!
//! Root code beside the receiving scripts counts as receiving: a template's newly listed
//! scripts, its changed `watch` entries or `application`, and a deploy (`POST /deploys`) to
//! servers that receive a credential all need its attach role; so does launching a server (or
//! growing an array) that would be the first live server of its template in its deployment to
//! receive it (`launch_receipts`).
//!
//! Known limits. Attach guards the paths that *bind* a value or change the code that receives it;
//! an operator can still run root code on servers in other ways (an image of their own, the
//! operational scripts the template already offers, an array's own autoscaling after an admin
//! let it grow), and such code can read what the server received. The deployment scope is what confines a value to the
//! servers meant to have it: keep admin-only credentials out of deployments operators deploy to.
//! Attach is checked when a binding or a script changes. A script an operator
//! wrote earlier, declaring an input an admin *later* binds to a credential in a deployment, does
//! receive it from then on: admins binding a credential to an input name decide for every script
//! that declares that name (the error messages and `stratus credential show` help them see it).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use stratus_api::views::Page;
use stratus_store::{Change, Query, TypedStore};
use stratus_types::CredentialId;
use stratus_types::Name;
use stratus_types::credential::{Credential, CredentialSpec, Secret, default_deployments};
use stratus_types::deployment::Deployment;
use stratus_types::input::{InputValue, Inputs};
use stratus_types::server::{Server, ServerArray};
use stratus_types::template::ServerTemplate;

use stratus_api::file::DeploymentFile;
use stratus_store::Datastore;
use stratus_types::template::TemplateSpec;

use super::catalog::Catalog;
use super::resolve::named;
use super::{ADMIN, Actor, App, AppError, OBSERVER, audit};

/// Create, or replace the value of, a credential (an update keeps the description, deployments
/// and attach role the request leaves out). Admins only: a credential's value reaches
/// every instance whose scripts name it.
pub async fn put(app: &App, actor: &Actor, spec: &CredentialSpec, create_only: bool) -> Result<Credential, AppError> {
    actor.require(ADMIN)?;
    spec.validate()?;
    let now = Utc::now();
    let existing = app.store.find_as::<Credential>("", spec.name.as_str()).await?;
    let (mut cred, action, change) = match existing {
        Some(_) if create_only => {
            return Err(AppError::Conflict(format!(
                "credential {} already exists; use PUT to replace its value",
                spec.name
            )));
        }
        // A field the request leaves out keeps its stored value.
        Some(mut c) => {
            if let Some(d) = &spec.description {
                c.description = d.clone();
            }
            if let Some(d) = &spec.deployments {
                c.deployments = d.clone();
            }
            if let Some(a) = spec.attach {
                c.attach = a;
            }
            let ch = Change::update(&mut c, now);
            (c, "credential.update", ch)
        }
        None => {
            let c = Credential {
                id: CredentialId::new(),
                revision: 1,
                name: spec.name.clone(),
                description: spec.description.clone().unwrap_or_default(),
                deployments: spec.deployments.clone().unwrap_or_else(default_deployments),
                attach: spec.attach.unwrap_or_default(),
                created_at: now,
                updated_at: now,
            };
            let ch = Change::insert(&c);
            (c, "credential.create", ch)
        }
    };
    let sealed = app.keys.seal(&cred.id.to_string(), &spec.value)?;
    let target = format!("credential/{}", spec.name);
    // `spec` serialises its value as ***; the audit entry shows only that it was set.
    app.commit(vec![
        change,
        Change::PutSealed {
            id: cred.id.to_string(),
            sealed,
        },
        audit(actor, action, target, spec),
    ])
    .await?;
    cred.revision = cred.revision.max(1);
    Ok(cred)
}

pub async fn show(app: &App, actor: &Actor, name: &str) -> Result<Credential, AppError> {
    actor.require(OBSERVER)?;
    named::<Credential>(&*app.store, name).await
}

pub async fn list(
    app: &App,
    actor: &Actor,
    limit: Option<u32>,
    after: Option<String>,
) -> Result<Page<Credential>, AppError> {
    actor.require(OBSERVER)?;
    let q = Query {
        after,
        limit: super::page_limit(limit)?,
        ..Default::default()
    };
    let (items, next) = app.store.list_as::<Credential>(&q).await?;
    Ok(Page { items, next })
}

pub async fn delete(app: &App, actor: &Actor, name: &str) -> Result<(), AppError> {
    actor.require(ADMIN)?;
    let c = named::<Credential>(&*app.store, name).await?;
    let uses_it = |inputs: &Inputs| {
        inputs
            .values()
            .any(|v| matches!(v, InputValue::Cred(n) if n == &c.name))
    };
    let mut users: Vec<String> = app
        .store
        .list_all::<ServerTemplate>(&Query::default())
        .await?
        .into_iter()
        .filter(|t| uses_it(&t.spec.inputs))
        .map(|t| format!("template {}", t.spec.name))
        .collect();
    users.extend(
        app.store
            .list_all::<Deployment>(&Query::default())
            .await?
            .into_iter()
            .filter(|d| uses_it(&d.spec.inputs))
            .map(|d| format!("deployment {}", d.spec.name)),
    );
    // Arrays launch new members from their inputs, and live servers may still need the value.
    let arrays = app.store.list_all::<ServerArray>(&Query::default()).await?;
    users.extend(
        arrays
            .into_iter()
            .filter(|a| uses_it(&a.spec.inputs))
            .map(|a| format!("array {}", a.spec.name)),
    );
    let live = app
        .store
        .list_all::<Server>(&Query {
            live_only: true,
            ..Default::default()
        })
        .await?;
    users.extend(
        live.into_iter()
            .filter(|s| uses_it(&s.inputs))
            .map(|s| format!("server {}/{}", s.deployment, s.name)),
    );
    if !users.is_empty() {
        return Err(AppError::Conflict(format!(
            "credential {name} is used by {}; change those inputs first",
            users.join(", ")
        )));
    }
    let target = format!("credential/{name}");
    app.commit(vec![
        Change::delete(&c),
        Change::DeleteSealed { id: c.id.to_string() },
        audit(actor, "credential.delete", target, ()),
    ])
    .await
}

/// The plain value, for masking and for checks on the control plane — never for a response,
/// and never for an instance: deliveries go through [`reveal_for`].
pub async fn reveal(app: &App, name: &str) -> Result<Secret, AppError> {
    let c = named::<Credential>(&*app.store, name).await?;
    open(app, &c, name).await
}

/// The plain value for delivery to a server of `deployment`, if the credential's scope allows
/// that deployment; otherwise a `bad_state` error naming both (never the value).
pub async fn reveal_for(app: &App, name: &str, deployment: &str) -> Result<Secret, AppError> {
    let c = named::<Credential>(&*app.store, name).await?;
    check_deployment(&c, deployment)?;
    open(app, &c, name).await
}

/// Is `deployment` within the credential's scope? The error says what to do.
pub fn check_deployment(c: &Credential, deployment: &str) -> Result<(), AppError> {
    if c.allows(deployment) {
        return Ok(());
    }
    Err(AppError::BadState(format!(
        "credential {} may not be used in deployment {deployment} (it is limited to {}); \
         an admin can widen it with `stratus credential set {} --deployment {deployment} ...`",
        c.name,
        c.scope_text(),
        c.name
    )))
}

async fn open(app: &App, c: &Credential, name: &str) -> Result<Secret, AppError> {
    let sealed = app
        .store
        .sealed(&c.id.to_string())
        .await?
        .ok_or_else(|| AppError::not_found("credential value", name))?;
    Ok(app.keys.open(&c.id.to_string(), &sealed)?)
}

/// Credentials a change would attach, each with where (`template app, input DB_PASS`).
pub type Attachments = BTreeMap<Name, BTreeSet<String>>;

/// Record that a change makes `cred` flow to a script through `place`.
pub fn attach(to: &mut Attachments, cred: &Name, place: impl Into<String>) {
    to.entry(cred.clone()).or_default().insert(place.into());
}

/// The `cred:` values of `new` that `old` did not already have at the same key: the flows a
/// change of inputs adds (a value kept as it was attaches nothing new).
pub fn attachments(new: &Inputs, old: Option<&Inputs>, place: &str, to: &mut Attachments) {
    for (k, v) in new {
        if let InputValue::Cred(c) = v
            && old.and_then(|o| o.get(k)) != Some(v)
        {
            attach(to, c, format!("{place}, input {k}"));
        }
    }
}

/// Refuse (403, changing nothing) if the actor may not attach one of the credentials; the
/// message names each credential, where it would flow, and the role it needs.
pub fn require_attach(actor: &Actor, known: &BTreeMap<Name, Credential>, wanted: &Attachments) -> Result<(), AppError> {
    let refused: Vec<String> = wanted
        .iter()
        .filter_map(|(name, places)| {
            // An unknown credential is reported by the reference checks.
            let c = known.get(name)?;
            (actor.level < c.attach.level()).then(|| {
                let places: Vec<&str> = places.iter().map(String::as_str).take(5).collect();
                format!("credential {name} ({}) needs the {} role", places.join("; "), c.attach)
            })
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(AppError::Forbidden(format!(
        "this change would hand credentials to scripts: {}; ask an admin to make it, or to allow \
         operators with `stratus credential set NAME --attach operator`",
        refused.join(", ")
    )))
}

/// Every credential by name (the catalog's view, with scopes).
pub async fn all(app: &App) -> Result<BTreeMap<Name, Credential>, AppError> {
    Ok(app
        .store
        .list_all::<Credential>(&Query::default())
        .await?
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect())
}

/// Every script a template runs: its boot, operational and decommission scripts and the scripts
/// of its watched files.
pub(crate) fn listed(spec: &TemplateSpec) -> BTreeSet<Name> {
    spec.phases()
        .iter()
        .flat_map(|(_, l)| l.iter().cloned())
        .chain(spec.watch.iter().filter_map(|w| w.script.clone()))
        .collect()
}

/// Where input values come from besides templates, as they would be after the apply: every
/// deployment (by input name, whatever its templates), and each array and live server (with
/// the template it runs).
pub(crate) struct Bindings {
    deployments: Vec<(String, Inputs)>,
    members: Vec<(String, Name, Inputs)>,
}

impl Bindings {
    pub(crate) async fn load(
        store: &dyn Datastore,
        planned: Option<&Deployment>,
        file: &DeploymentFile,
    ) -> Result<Self, AppError> {
        let mut deployments: Vec<(String, Inputs)> = store
            .list_all::<Deployment>(&Query::default())
            .await?
            .into_iter()
            .filter(|d| planned.is_none_or(|p| p.spec.name != d.spec.name))
            .map(|d| (format!("deployment {}", d.spec.name), d.spec.inputs))
            .collect();
        if let Some(d) = planned {
            deployments.push((format!("deployment {}", d.spec.name), d.spec.inputs.clone()));
        }
        let live = Query {
            live_only: true,
            ..Default::default()
        };
        let mut members: Vec<(String, Name, Inputs)> = store
            .list_all::<Server>(&live)
            .await?
            .into_iter()
            .map(|s| (format!("server {}/{}", s.deployment, s.name), s.template, s.inputs))
            .chain(
                store
                    .list_all::<ServerArray>(&Query::default())
                    .await?
                    .into_iter()
                    .map(|a| {
                        (
                            format!("array {}/{}", a.spec.deployment, a.spec.name),
                            a.spec.template,
                            a.spec.inputs,
                        )
                    }),
            )
            .collect();
        // The file's own servers and arrays (new ones are not in the store yet).
        if let Some(d) = planned {
            for s in &file.servers {
                members.push((
                    format!("server {}/{}", d.spec.name, s.name),
                    s.template.clone(),
                    s.inputs.clone(),
                ));
            }
            for a in &file.arrays {
                members.push((
                    format!("array {}/{}", d.spec.name, a.name),
                    a.template.clone(),
                    a.inputs.clone(),
                ));
            }
        }
        Ok(Self { deployments, members })
    }

    /// The credentials `script` would receive into `to`: its own defaults, every deployment,
    /// and the templates that list it with their servers and arrays — every such template when
    /// the script itself changes, only `via` when that template newly lists it (the others
    /// already hand it what they hand it, with the same code).
    pub(crate) fn received_by(
        &self,
        catalog: &Catalog,
        script: &Name,
        via: Option<&Name>,
        what: &str,
        to: &mut Attachments,
    ) {
        let Some(s) = catalog.scripts.get(script) else { return };
        let templates: Vec<&ServerTemplate> = catalog
            .templates
            .values()
            .filter(|t| via.is_none_or(|v| v == &t.spec.name) && listed(&t.spec).contains(script))
            .collect();
        let mut sources: Vec<(String, &Inputs)> = templates
            .iter()
            .map(|t| (format!("template {}", t.spec.name), &t.spec.inputs))
            .collect();
        sources.extend(self.deployments.iter().map(|(w, i)| (w.clone(), i)));
        sources.extend(
            self.members
                .iter()
                .filter(|(_, t, _)| templates.iter().any(|x| &x.spec.name == t))
                .map(|(w, _, i)| (w.clone(), i)),
        );
        for d in &s.spec.inputs {
            if let Some(InputValue::Cred(c)) = &d.default {
                attach(
                    to,
                    c,
                    format!("{what}script {script} gets it by its default of input {}", d.name),
                );
            }
            for (source, inputs) in &sources {
                if let Some(InputValue::Cred(c)) = inputs.get(&d.name) {
                    attach(
                        to,
                        c,
                        format!("{what}script {script} gets it from {source} as input {}", d.name),
                    );
                }
            }
        }
    }
}

/// The credentials a server of `template` receives, each with the first script input that
/// gets it: every `cred:` value bound to an input one of the template's scripts declares, by
/// the server's own inputs, its deployment's, the template's or the script's default (all of
/// them, not only the one that wins: the check errs on the side of refusing).
pub(crate) fn received(
    catalog: &Catalog,
    template: &Name,
    deployment_inputs: &Inputs,
    inputs: &Inputs,
) -> BTreeMap<Name, String> {
    let mut out = BTreeMap::new();
    let Some(t) = catalog.templates.get(template) else {
        return out;
    };
    for script in listed(&t.spec) {
        let Some(s) = catalog.scripts.get(&script) else {
            continue;
        };
        for d in &s.spec.inputs {
            let bound = [inputs, deployment_inputs, &t.spec.inputs]
                .into_iter()
                .filter_map(|i| i.get(&d.name))
                .chain(d.default.as_ref());
            for v in bound {
                if let InputValue::Cred(c) = v {
                    out.entry(c.clone())
                        .or_insert_with(|| format!("script {script} gets it as input {}", d.name));
                }
            }
        }
    }
    out
}

/// What launching a server of `template` into `deployment` with `inputs` hands over that no
/// live server of the same template in that deployment already receives (a first server in a
/// deployment an operator just created is a new flow even if the credential's scope matches).
pub(crate) async fn launch_receipts(
    store: &dyn Datastore,
    catalog: &Catalog,
    deployment: &Deployment,
    template: &Name,
    inputs: &Inputs,
    place: &str,
    to: &mut Attachments,
) -> Result<(), AppError> {
    let new = received(catalog, template, &deployment.spec.inputs, inputs);
    if new.is_empty() {
        return Ok(());
    }
    let live = Query {
        live_only: true,
        scope: Some(deployment.spec.name.to_string()),
        ..Default::default()
    };
    let mut already = BTreeSet::new();
    for s in store.list_all::<Server>(&live).await? {
        if &s.template == template && s.deployment == deployment.spec.name {
            already.extend(received(catalog, template, &deployment.spec.inputs, &s.inputs).into_keys());
        }
    }
    for (c, how) in new {
        if !already.contains(&c) {
            attach(
                to,
                &c,
                format!(
                    "{place} would be the first of template {template} in deployment {} to receive it: {how}",
                    deployment.spec.name
                ),
            );
        }
    }
    Ok(())
}
