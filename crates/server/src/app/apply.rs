//! Planning and applying desired state: deployment files and single-resource upserts.
//!
//! `plan` compares a [`DeploymentFile`] with what exists and produces, per entry, `create`,
//! `update` or `unchanged`, plus the store changes that would make it so. Every reference is
//! checked against the catalog *as it would be after the apply* (a template may name a script
//! created by the same file). Any error aborts the whole plan: nothing is written unless all
//! of it is valid, and then it is written in one transaction with one audit entry.
//!
//! Servers are not changed in place: tags and inputs of an existing server are updated, but a
//! different template, cloud or size is reported as a note (replace the server to change it).
//! Servers that exist but are not in the file are left alone.
//!
//! Credentials: every change that would make a credential's value reach a script is collected
//! while planning (new or changed `cred:` inputs of script defaults, templates, the deployment,
//! servers and arrays; scripts created or whose body or input declarations change, with
//! whatever is bound to their inputs; a script a template newly lists, with whatever *any* script
//! of that template receives, since it runs as root beside them; a cloud's `ec2.credential`, or
//! its endpoint, changed) and refused as a
//! whole unless the actor may attach each credential (see `credentials`). A credential the
//! deployment's scope excludes is invalid input.

use chrono::{DateTime, Utc};
use stratus_api::file::{DeploymentFile, FileArray, FileServer};
use stratus_api::views::{Plan, PlanAction, PlannedChange};
use stratus_store::{Change, Datastore, TemplateVersion, TypedStore};
use stratus_types::cloud::{Cloud, CloudSpec};
use stratus_types::deployment::{Deployment, DeploymentSpec};
use stratus_types::image::{Image, ImageSpec, ImageVersion};
use stratus_types::input::{InputDecl, InputValue, Inputs};
use stratus_types::script::{Script, ScriptSpec};
use stratus_types::server::{ArraySpec, Server, ServerArray, ServerSpec};
use stratus_types::template::{ServerTemplate, TemplateSpec};
use stratus_types::{ArrayId, CloudId, DeploymentId, FieldError, ImageId, Invalid, Name, ScriptId, TemplateId};

use super::catalog::{Catalog, build_server};
use super::credentials::{Attachments, Bindings, attach, attachments, listed};
use super::{Actor, App, AppError, OPERATOR, audit};

/// Create-only refuses to touch an existing resource (POST); upsert creates or updates (PUT, apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    CreateOnly,
    Upsert,
}

struct Planner {
    now: DateTime<Utc>,
    mode: Mode,
    catalog: Catalog,
    changes: Vec<Change>,
    plan: Vec<PlannedChange>,
    errs: Invalid,
    /// Create-only entries whose name is taken: `409 conflict`, not invalid input.
    conflicts: Vec<String>,
    /// Credentials this plan would hand to scripts, with where (checked before anything is
    /// written).
    attached: Attachments,
    /// Scripts that would run differently (created, or body or inputs changed), and scripts a
    /// template newly lists (with the template): they receive whatever is bound to their inputs.
    receivers: Vec<(Name, Option<Name>)>,
    /// Templates whose root-run parts other than scripts change (`watch`, `application`).
    root_changes: Vec<(Name, &'static str)>,
    /// Servers the plan launches, directly or by growing an array: (deployment, template,
    /// inputs, place), checked against what live servers already receive.
    launches: Vec<(Deployment, Name, Inputs, String)>,
}

impl Planner {
    fn record(&mut self, kind: &str, name: &Name, action: PlanAction, notes: Vec<String>) {
        self.plan.push(PlannedChange {
            kind: kind.into(),
            name: name.to_string(),
            action,
            notes,
        });
    }

    /// Shared create/update decision: false (and a conflict) when create-only meets an existing
    /// resource.
    fn exists_check(&mut self, kind: &str, name: &Name, exists: bool) -> bool {
        if exists && self.mode == Mode::CreateOnly {
            self.conflicts
                .push(format!("{kind} {name} already exists; use PUT to update it"));
            return false;
        }
        true
    }

    fn cloud(&mut self, spec: &CloudSpec) {
        // A new local cloud's metadata service requires tokens unless it says otherwise; an
        // existing one keeps its setting (see `CloudSpec::settle_metadata_tokens`).
        let mut settled = spec.clone();
        settled.settle_metadata_tokens(self.catalog.clouds.get(&spec.name).map(|c| &c.spec));
        let spec = &settled;
        if !crate::drivers::AVAILABLE.contains(&spec.driver) {
            self.errs.push(FieldError::new(
                format!("cloud {}.driver", spec.name),
                format!(
                    "the {:?} driver is not part of this build of Stratus (build it with `--features ec2`)",
                    spec.driver
                ),
            ));
        }
        if let Some(c) = spec.ec2.as_ref().and_then(|e| e.credential.as_ref())
            && !self.catalog.credentials.contains_key(c)
        {
            self.errs.push(FieldError::new(
                format!("cloud {}.ec2.credential", spec.name),
                format!(
                    "no credential named {c}; create it with `stratus credential create {c}` (ACCESS_KEY_ID:SECRET)"
                ),
            ));
        }
        let existing = self.catalog.clouds.get(&spec.name).cloned();
        if !self.exists_check("cloud", &spec.name, existing.is_some()) {
            return;
        }
        // The driver signs its requests to the cloud's endpoint with this credential: pointing
        // a cloud (and so an endpoint of one's choosing) at it attaches it too.
        let old_cred = existing
            .as_ref()
            .and_then(|c| c.spec.ec2.as_ref())
            .and_then(|e| e.credential.as_ref());
        if let Some(c) = spec.ec2.as_ref().and_then(|e| e.credential.as_ref())
            && (old_cred != Some(c) || existing.as_ref().is_some_and(|e| e.spec.endpoint != spec.endpoint))
        {
            attach(&mut self.attached, c, format!("cloud {}, ec2.credential", spec.name));
        }
        match existing {
            Some(c) if &c.spec == spec => self.record("cloud", &spec.name, PlanAction::Unchanged, vec![]),
            Some(mut c) => {
                let mut notes = vec![];
                if c.spec.driver != spec.driver {
                    notes.push(format!("driver {:?} -> {:?}", c.spec.driver, spec.driver));
                }
                c.spec = spec.clone();
                self.changes.push(Change::update(&mut c, self.now));
                self.catalog.clouds.insert(spec.name.clone(), c);
                self.record("cloud", &spec.name, PlanAction::Update, notes);
            }
            None => {
                let c = Cloud {
                    id: CloudId::new(),
                    revision: 1,
                    created_at: self.now,
                    updated_at: self.now,
                    spec: spec.clone(),
                };
                self.changes.push(Change::insert(&c));
                self.catalog.clouds.insert(spec.name.clone(), c);
                self.record("cloud", &spec.name, PlanAction::Create, vec![]);
            }
        }
    }

    fn image(&mut self, spec: &ImageSpec, at: &str) {
        for cloud in spec.clouds.keys() {
            if !self.catalog.clouds.contains_key(cloud) {
                self.errs.push(FieldError::new(
                    format!("{at}.clouds.{cloud}"),
                    format!("no cloud named {cloud}"),
                ));
            }
        }
        let existing = self.catalog.images.get(&spec.name).cloned();
        if !self.exists_check("image", &spec.name, existing.is_some()) {
            return;
        }
        match existing {
            Some(i) if &i.spec == spec => self.record("image", &spec.name, PlanAction::Unchanged, vec![]),
            Some(mut i) => {
                let mut notes = vec![];
                if i.spec.clouds != spec.clouds {
                    let v = i.current_version() + 1;
                    i.versions.push(ImageVersion {
                        version: v,
                        clouds: spec.clouds.clone(),
                        provenance: None,
                        created_at: self.now,
                    });
                    notes.push(format!("new version {v}"));
                }
                i.spec = spec.clone();
                self.changes.push(Change::update(&mut i, self.now));
                self.catalog.images.insert(spec.name.clone(), i);
                self.record("image", &spec.name, PlanAction::Update, notes);
            }
            None => {
                let i = Image {
                    id: ImageId::new(),
                    revision: 1,
                    created_at: self.now,
                    updated_at: self.now,
                    spec: spec.clone(),
                    versions: vec![ImageVersion {
                        version: 1,
                        clouds: spec.clouds.clone(),
                        provenance: None,
                        created_at: self.now,
                    }],
                };
                self.changes.push(Change::insert(&i));
                self.catalog.images.insert(spec.name.clone(), i);
                self.record("image", &spec.name, PlanAction::Create, vec![]);
            }
        }
    }

    fn script(&mut self, spec: &ScriptSpec) {
        let existing = self.catalog.scripts.get(&spec.name).cloned();
        if !self.exists_check("script", &spec.name, existing.is_some()) {
            return;
        }
        let old = existing.as_ref().map(|s| &s.spec);
        if old.is_none_or(|o| o.body != spec.body || o.inputs != spec.inputs) {
            self.receivers.push((spec.name.clone(), None));
        }
        for d in &spec.inputs {
            if let Some(InputValue::Cred(c)) = &d.default
                && old
                    .and_then(|o| o.inputs.iter().find(|x| x.name == d.name))
                    .map(|x| &x.default)
                    != Some(&d.default)
            {
                attach(
                    &mut self.attached,
                    c,
                    format!("script {}, default of input {}", spec.name, d.name),
                );
            }
        }
        match existing {
            Some(s) if &s.spec == spec => self.record("script", &spec.name, PlanAction::Unchanged, vec![]),
            Some(mut s) => {
                s.spec = spec.clone();
                self.changes.push(Change::update(&mut s, self.now));
                self.catalog.scripts.insert(spec.name.clone(), s);
                self.record("script", &spec.name, PlanAction::Update, vec![]);
            }
            None => {
                let s = Script {
                    id: ScriptId::new(),
                    revision: 1,
                    created_at: self.now,
                    updated_at: self.now,
                    spec: spec.clone(),
                };
                self.changes.push(Change::insert(&s));
                self.catalog.scripts.insert(spec.name.clone(), s);
                self.record("script", &spec.name, PlanAction::Create, vec![]);
            }
        }
    }

    /// Every input the template's scripts declare.
    fn declared(&self, spec: &TemplateSpec) -> Vec<InputDecl> {
        spec.phases()
            .iter()
            .flat_map(|(_, list)| list.iter())
            .filter_map(|n| self.catalog.scripts.get(n))
            .flat_map(|s| s.spec.inputs.iter().cloned())
            .collect()
    }

    fn check_template_refs(&mut self, spec: &TemplateSpec, at: &str) {
        if !self.catalog.images.contains_key(&spec.image) {
            self.errs.push(FieldError::new(
                format!("{at}.image"),
                format!("no image named {}", spec.image),
            ));
        }
        for (field, list) in spec.phases() {
            for (i, n) in list.iter().enumerate() {
                if !self.catalog.scripts.contains_key(n) {
                    self.errs.push(FieldError::new(
                        format!("{at}.{field}[{i}]"),
                        format!("no script named {n}"),
                    ));
                }
            }
        }
        for (i, w) in spec.watch.iter().enumerate() {
            if let Some(n) = &w.script
                && !self.catalog.scripts.contains_key(n)
            {
                self.errs.push(FieldError::new(
                    format!("{at}.watch[{i}].script"),
                    format!("no script named {n}"),
                ));
            }
        }
        let declared = self.declared(spec);
        let decls: Vec<InputDecl> = declared.into_iter().collect();
        if let Err(e) = stratus_types::input::check_inputs(&decls, &spec.inputs) {
            self.errs.absorb(at, e);
        }
        self.check_creds(&spec.inputs, &format!("{at}.inputs"));
    }

    fn check_creds(&mut self, inputs: &Inputs, at: &str) {
        for (k, v) in inputs {
            if let InputValue::Cred(c) = v
                && !self.catalog.credentials.contains_key(c)
            {
                self.errs.push(FieldError::new(
                    format!("{at}.{k}"),
                    format!("no credential named {c}; create it with `stratus credential create {c}`"),
                ));
            }
        }
    }

    fn template(&mut self, spec: &TemplateSpec, at: &str, touched: &[Name]) {
        self.check_template_refs(spec, at);
        let hash = spec.content_hash(|n| self.catalog.scripts.get(n));
        let existing = self.catalog.templates.get(&spec.name).cloned();
        if !self.exists_check("template", &spec.name, existing.is_some()) {
            return;
        }
        let old = existing.as_ref().map(|t| &t.spec);
        let place = format!("template {}", spec.name);
        attachments(&spec.inputs, old.map(|o| &o.inputs), &place, &mut self.attached);
        let before = old.map(listed).unwrap_or_default();
        for n in listed(spec).into_iter().filter(|n| !before.contains(n)) {
            self.receivers.push((n, Some(spec.name.clone())));
        }
        // Watched files (root writes any path, from a bucket others may fill) and the
        // application (its `activate` is a root shell command) run beside the template's scripts
        // like a newly listed script: changing them needs the attach role of all they receive.
        if let Some(o) = old {
            for (what, changed) in [
                ("watch", o.watch != spec.watch),
                ("application", o.application != spec.application),
            ] {
                if changed {
                    self.root_changes.push((spec.name.clone(), what));
                }
            }
        }
        match existing {
            Some(t) if &t.spec == spec && t.content_hash == hash => {
                self.record("template", &spec.name, PlanAction::Unchanged, vec![]);
            }
            Some(mut t) => {
                let mut notes: Vec<String> = spec
                    .phases()
                    .iter()
                    .flat_map(|(_, l)| l.iter())
                    .filter(|n| touched.contains(n))
                    .map(|n| format!("script {n} changed"))
                    .collect();
                notes.dedup();
                t.spec = spec.clone();
                t.content_hash = hash;
                self.changes.push(Change::update(&mut t, self.now));
                notes.push(format!("new version {}", t.version));
                self.changes.push(Change::insert(&TemplateVersion(t.clone())));
                self.catalog.templates.insert(spec.name.clone(), t);
                self.record("template", &spec.name, PlanAction::Update, notes);
            }
            None => {
                let t = ServerTemplate {
                    id: TemplateId::new(),
                    version: 1,
                    content_hash: hash,
                    created_at: self.now,
                    updated_at: self.now,
                    spec: spec.clone(),
                };
                self.changes.push(Change::insert(&t));
                self.changes.push(Change::insert(&TemplateVersion(t.clone())));
                self.catalog.templates.insert(spec.name.clone(), t);
                self.record("template", &spec.name, PlanAction::Create, vec![]);
            }
        }
    }

    fn deployment(&mut self, spec: &DeploymentSpec, existing: Option<Deployment>) -> Deployment {
        if let Some(c) = &spec.cloud
            && !self.catalog.clouds.contains_key(c)
        {
            self.errs
                .push(FieldError::new("deployment.cloud", format!("no cloud named {c}")));
        }
        self.check_creds(&spec.inputs, "deployment.inputs");
        for (k, v) in &spec.inputs {
            if let InputValue::Cred(c) = v
                && let Some(cred) = self.catalog.credentials.get(c)
                && !cred.allows(spec.name.as_str())
            {
                self.errs.push(FieldError::new(
                    format!("deployment.inputs.{k}"),
                    format!(
                        "credential {c} may not be used in deployment {} (it is limited to {})",
                        spec.name,
                        cred.scope_text()
                    ),
                ));
            }
        }
        attachments(
            &spec.inputs,
            existing.as_ref().map(|d| &d.spec.inputs),
            &format!("deployment {}", spec.name),
            &mut self.attached,
        );
        for (k, v) in &spec.inputs {
            let clash = self
                .catalog
                .scripts
                .values()
                .flat_map(|s| s.spec.inputs.iter().map(move |d| (s, d)))
                .find(|(_, d)| &d.name == k && !v.fits(d.kind));
            if let Some((s, d)) = clash {
                self.errs.push(FieldError::new(
                    format!("deployment.inputs.{k}"),
                    format!(
                        "script {} declares {k} as a {} input; a {} value cannot fill it",
                        s.spec.name,
                        d.kind,
                        v.kind()
                    ),
                ));
            }
        }
        let exists = existing.is_some();
        self.exists_check("deployment", &spec.name, exists);
        match existing {
            Some(d) if &d.spec == spec => {
                self.record("deployment", &spec.name, PlanAction::Unchanged, vec![]);
                d
            }
            Some(mut d) => {
                d.spec = spec.clone();
                self.changes.push(Change::update(&mut d, self.now));
                self.record("deployment", &spec.name, PlanAction::Update, vec![]);
                d
            }
            None => {
                let d = Deployment {
                    id: DeploymentId::new(),
                    revision: 1,
                    created_at: self.now,
                    updated_at: self.now,
                    spec: spec.clone(),
                };
                self.changes.push(Change::insert(&d));
                self.record("deployment", &spec.name, PlanAction::Create, vec![]);
                d
            }
        }
    }

    fn server(&mut self, f: &FileServer, at: &str, dep: &Deployment, existing: Option<Server>) {
        let spec = ServerSpec {
            name: f.name.clone(),
            deployment: dep.spec.name.clone(),
            template: f.template.clone(),
            cloud: f.cloud.clone(),
            region: f.region.clone(),
            size: f.size.clone(),
            inputs: f.inputs.clone(),
            tags: f.tags.clone(),
        };
        let built = match build_server(&spec, dep, &self.catalog, None, self.now) {
            Ok(s) => s,
            Err(e) => {
                self.errs.absorb(at, e);
                return;
            }
        };
        attachments(
            &f.inputs,
            existing.as_ref().map(|s| &s.inputs),
            &format!("server {}/{}", dep.spec.name, f.name),
            &mut self.attached,
        );
        match existing {
            None => {
                self.launches.push((
                    dep.clone(),
                    built.template.clone(),
                    built.inputs.clone(),
                    format!("server {}/{}", dep.spec.name, f.name),
                ));
                self.changes.push(Change::insert(&built));
                self.record("server", &f.name, PlanAction::Create, vec![]);
            }
            Some(mut s) => {
                let mut notes = vec![];
                for (what, differs) in [
                    ("template", s.template != built.template),
                    ("cloud", s.cloud != built.cloud),
                    ("size", s.size != built.size),
                    ("template version", s.template_hash != built.template_hash),
                ] {
                    if differs {
                        notes.push(format!("{what} differs; replace the server to change it"));
                    }
                }
                // Tags are merged, never removed: servers and users add tags at run time
                // (pool membership, votes) that a re-apply must not wipe.
                let missing: Vec<_> = built.tags.iter().filter(|t| !s.tags.contains(t)).cloned().collect();
                if !missing.is_empty() || s.inputs != built.inputs {
                    s.tags.extend(missing);
                    s.inputs = built.inputs;
                    self.changes.push(Change::update(&mut s, self.now));
                    notes.insert(0, "tags/inputs updated".into());
                    self.record("server", &f.name, PlanAction::Update, notes);
                } else {
                    self.record("server", &f.name, PlanAction::Unchanged, notes);
                }
            }
        }
    }

    fn array(&mut self, f: &FileArray, at: &str, dep: &Deployment, existing: Option<ServerArray>) {
        let spec = ArraySpec {
            name: f.name.clone(),
            deployment: dep.spec.name.clone(),
            template: f.template.clone(),
            cloud: f.cloud.clone(),
            size: f.size.clone(),
            min: f.min,
            max: f.max,
            desired: f.desired,
            inputs: f.inputs.clone(),
            tags: f.tags.clone(),
            autoscale: f.autoscale,
            scale_in: f.scale_in,
        };
        if let Err(e) = spec.validate() {
            self.errs.absorb(at, e);
            return;
        }
        // A member must be launchable: check with a probe member.
        let probe = super::arrays::member_spec(&spec, 1);
        if let Err(e) = build_server(&probe, dep, &self.catalog, None, self.now) {
            self.errs.absorb(at, e);
            return;
        }
        attachments(
            &spec.inputs,
            existing.as_ref().map(|a| &a.spec.inputs),
            &format!("array {}/{}", dep.spec.name, f.name),
            &mut self.attached,
        );
        let grows = existing
            .as_ref()
            .is_none_or(|a| spec.desired.max(spec.min) > a.spec.desired.max(a.spec.min));
        if grows && spec.desired.max(spec.min) > 0 {
            self.launches.push((
                dep.clone(),
                spec.template.clone(),
                probe.inputs.clone(),
                format!("array {}/{}", dep.spec.name, f.name),
            ));
        }
        match existing {
            Some(a) if a.spec == spec => self.record("array", &f.name, PlanAction::Unchanged, vec![]),
            Some(mut a) => {
                let notes = if a.spec.desired != spec.desired {
                    vec![format!("desired {} -> {}", a.spec.desired, spec.desired)]
                } else {
                    vec![]
                };
                a.spec = spec;
                self.changes.push(Change::update(&mut a, self.now));
                self.record("array", &f.name, PlanAction::Update, notes);
            }
            None => {
                let a = ServerArray {
                    id: ArrayId::new(),
                    revision: 1,
                    created_at: self.now,
                    updated_at: self.now,
                    spec,
                    next_launch_image: None,
                    last_scaled_at: None,
                };
                self.changes.push(Change::insert(&a));
                self.record("array", &f.name, PlanAction::Create, vec![]);
            }
        }
    }
}

/// Plan `file` against the store, and unless `dry_run`, apply it atomically.
pub async fn apply(
    app: &App,
    actor: &Actor,
    file: &DeploymentFile,
    mode: Mode,
    dry_run: bool,
) -> Result<Plan, AppError> {
    actor.require(OPERATOR)?;
    file.validate()?;
    let store = &*app.store;
    let mut p = Planner {
        now: Utc::now(),
        mode,
        catalog: Catalog::load(store).await?,
        changes: vec![],
        plan: vec![],
        errs: Invalid::default(),
        conflicts: vec![],
        attached: Attachments::new(),
        receivers: vec![],
        root_changes: vec![],
        launches: vec![],
    };
    for c in &file.clouds {
        p.cloud(c);
    }
    for (i, c) in file.images.iter().enumerate() {
        p.image(c, &format!("image[{i}]"));
    }
    let before_scripts = p.catalog.scripts.clone();
    for s in &file.scripts {
        p.script(s);
    }
    let touched: Vec<Name> = p
        .catalog
        .scripts
        .iter()
        .filter(|(n, s)| before_scripts.get(*n).is_none_or(|b| b.spec != s.spec))
        .map(|(n, _)| n.clone())
        .collect();
    for (i, t) in file.templates.iter().enumerate() {
        p.template(t, &format!("template[{i}]"), &touched);
    }
    rehash_dependents(&mut p, file, &touched);
    let mut planned_dep = None;
    if let Some(dspec) = &file.deployment {
        let existing = store.find_as::<Deployment>("", dspec.name.as_str()).await?;
        let dep = p.deployment(dspec, existing);
        planned_dep = Some(dep.clone());
        let dep_scope = dep.spec.name.to_string();
        for (i, s) in file.servers.iter().enumerate() {
            let existing = store.find_as::<Server>(&dep_scope, s.name.as_str()).await?;
            p.server(s, &format!("server[{i}]"), &dep, existing);
        }
        for (i, a) in file.arrays.iter().enumerate() {
            let existing = store.find_as::<ServerArray>(&dep_scope, a.name.as_str()).await?;
            p.array(a, &format!("array[{i}]"), &dep, existing);
        }
    }
    if !p.conflicts.is_empty() {
        return Err(AppError::Conflict(p.conflicts.join("; ")));
    }
    // A credential the actor may not attach is refused whatever else is wrong with the change.
    super::credentials::require_attach(actor, &p.catalog.credentials, &p.attached)?;
    if !p.errs.is_empty() {
        return Err(AppError::Invalid(p.errs));
    }
    if !p.receivers.is_empty() || !p.root_changes.is_empty() {
        let bindings = Bindings::load(store, planned_dep.as_ref(), file).await?;
        for (t, part) in std::mem::take(&mut p.root_changes) {
            let what = format!("template {t} changes its {part}, run as root beside ");
            let scripts = p.catalog.templates.get(&t).map(|x| listed(&x.spec)).unwrap_or_default();
            for script in &scripts {
                bindings.received_by(&p.catalog, script, Some(&t), &what, &mut p.attached);
            }
        }
        for (script, template) in std::mem::take(&mut p.receivers) {
            match &template {
                // A script a template newly runs runs as root beside every other script of that
                // template: it can read what they received (files they wrote, their processes'
                // environments), so it needs the attach role of all of it.
                Some(t) => {
                    let what = format!("template {t} now runs script {script} beside ");
                    let others = p.catalog.templates.get(t).map(|x| listed(&x.spec)).unwrap_or_default();
                    for other in &others {
                        bindings.received_by(&p.catalog, other, Some(t), &what, &mut p.attached);
                    }
                }
                None => {
                    bindings.received_by(&p.catalog, &script, None, "", &mut p.attached);
                }
            }
        }
    }
    for (dep, template, inputs, place) in std::mem::take(&mut p.launches) {
        super::credentials::launch_receipts(store, &p.catalog, &dep, &template, &inputs, &place, &mut p.attached)
            .await?;
    }
    super::credentials::require_attach(actor, &p.catalog.credentials, &p.attached)?;
    let mut plan = Plan {
        changes: p.plan,
        applied: false,
    };
    let changed = plan.changes.iter().any(|c| c.action != PlanAction::Unchanged);
    if !dry_run && changed {
        let summary: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.action != PlanAction::Unchanged)
            .map(|c| format!("{:?} {} {}", c.action, c.kind, c.name))
            .collect();
        let target = file
            .deployment
            .as_ref()
            .map_or("catalog".to_string(), |d| format!("deployment/{}", d.name));
        p.changes.push(audit(actor, "deployment.apply", target, summary));
        app.commit(p.changes).await?;
    }
    plan.applied = !dry_run;
    Ok(plan)
}

/// Templates not in the file whose scripts changed get a new version too.
fn rehash_dependents(p: &mut Planner, file: &DeploymentFile, touched: &[Name]) {
    if touched.is_empty() {
        return;
    }
    let in_file: Vec<&Name> = file.templates.iter().map(|t| &t.name).collect();
    let dependents: Vec<TemplateSpec> = p
        .catalog
        .templates
        .values()
        .filter(|t| !in_file.contains(&&t.spec.name))
        .filter(|t| {
            t.spec
                .phases()
                .iter()
                .any(|(_, l)| l.iter().any(|n| touched.contains(n)))
        })
        .map(|t| t.spec.clone())
        .collect();
    let saved = p.mode;
    p.mode = Mode::Upsert;
    for spec in dependents {
        let at = format!("template {}", spec.name);
        p.template(&spec, &at, touched);
    }
    p.mode = saved;
}

/// Load a deployment for a request that names it.
pub async fn deployment(store: &dyn Datastore, name: &str) -> Result<Deployment, AppError> {
    super::resolve::named::<Deployment>(store, name).await
}
