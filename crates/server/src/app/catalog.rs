//! The catalog and what is built from it, without side effects: [`Catalog`] loads the clouds,
//! images, scripts, templates and credentials (names and scopes, never values) as one snapshot,
//! and [`build_server`] resolves a launch request against it into a `pending` server. The
//! planner (`apply.rs`), launches (`servers.rs`), replacements and the array reconciler all
//! build servers here, so a server means the same whoever asks for it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use stratus_store::{Datastore, Query, TypedStore};
use stratus_types::Name;
use stratus_types::cloud::Cloud;
use stratus_types::credential::Credential;
use stratus_types::deployment::Deployment;
use stratus_types::image::Image;
use stratus_types::input::{InputValue, Inputs, check_inputs};
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerSpec, ServerState};
use stratus_types::size::SizeRequest;
use stratus_types::tag::Tag;
use stratus_types::template::ServerTemplate;
use stratus_types::{FieldError, Invalid, ServerId};

use super::AppError;

/// The catalog (clouds, images, scripts, templates, credentials) as one snapshot. It is
/// small (hundreds of entries), so planning loads it whole.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub clouds: BTreeMap<Name, Cloud>,
    pub images: BTreeMap<Name, Image>,
    pub scripts: BTreeMap<Name, Script>,
    pub templates: BTreeMap<Name, ServerTemplate>,
    /// By name, with their scopes (never values).
    pub credentials: BTreeMap<Name, Credential>,
}

impl Catalog {
    pub async fn load(store: &dyn Datastore) -> Result<Self, AppError> {
        let q = Query::default();
        Ok(Self {
            clouds: store
                .list_all::<Cloud>(&q)
                .await?
                .into_iter()
                .map(|c| (c.spec.name.clone(), c))
                .collect(),
            images: store
                .list_all::<Image>(&q)
                .await?
                .into_iter()
                .map(|c| (c.spec.name.clone(), c))
                .collect(),
            scripts: store
                .list_all::<Script>(&q)
                .await?
                .into_iter()
                .map(|c| (c.spec.name.clone(), c))
                .collect(),
            templates: store
                .list_all::<ServerTemplate>(&q)
                .await?
                .into_iter()
                .map(|c| (c.spec.name.clone(), c))
                .collect(),
            credentials: store
                .list_all::<Credential>(&q)
                .await?
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
        })
    }
}

/// Resolve a launch request against the catalog into a `pending` server: cloud, region, size,
/// image version and native image, merged inputs and tags. Every problem is reported at once.
pub fn build_server(
    spec: &ServerSpec,
    dep: &Deployment,
    cat: &Catalog,
    image_override: Option<&stratus_types::server::ImageRef>,
    now: DateTime<Utc>,
) -> Result<Server, Invalid> {
    let mut errs = Invalid::default();
    if let Err(e) = spec.validate() {
        errs.absorb("", e);
    }
    let Some(template) = cat.templates.get(&spec.template) else {
        errs.push(FieldError::new(
            "template",
            format!("no template named {}", spec.template),
        ));
        return Err(errs);
    };
    let Some(cloud_name) = spec.cloud.clone().or_else(|| dep.spec.cloud.clone()) else {
        errs.push(FieldError::new(
            "cloud",
            format!("no cloud given and deployment {} has no default cloud", dep.spec.name),
        ));
        return Err(errs);
    };
    let Some(cloud) = cat.clouds.get(&cloud_name) else {
        errs.push(FieldError::new("cloud", format!("no cloud named {cloud_name}")));
        return Err(errs);
    };
    let region = match &spec.region {
        Some(r) if cloud.spec.regions.iter().any(|x| &x.name == r) => r.clone(),
        Some(r) => {
            let known: Vec<&str> = cloud.spec.regions.iter().map(|x| x.name.as_str()).collect();
            errs.push(FieldError::new(
                "region",
                format!("cloud {cloud_name} has no region {r:?}; it has {}", known.join(", ")),
            ));
            String::new()
        }
        None => cloud.spec.regions.first().map(|r| r.name.clone()).unwrap_or_default(),
    };
    let image_name = image_override.map_or(&template.spec.image, |r| &r.image);
    let Some(image) = cat.images.get(image_name) else {
        errs.push(FieldError::new(
            "template",
            format!(
                "template {} uses image {image_name}, which does not exist",
                template.spec.name
            ),
        ));
        return Err(errs);
    };
    let version = match image_override {
        Some(r) => image.version(r.version),
        None => image.versions.last(),
    };
    let Some((version, native)) = version.and_then(|v| v.clouds.get(&cloud_name).map(|n| (v.version, n.clone())))
    else {
        errs.push(FieldError::new("cloud", format!("image {image_name} has no native image on cloud {cloud_name}; add one under [image.clouds.{cloud_name}]")));
        return Err(errs);
    };
    let request = spec
        .size
        .clone()
        .or_else(|| template.spec.size.clone())
        .or_else(|| native.default_size.clone());
    let size = match request.unwrap_or(SizeRequest::Named(String::new())) {
        SizeRequest::Named(n) if n.is_empty() => {
            errs.push(FieldError::new(
                "size",
                "no size given by the server, its template or its image's default",
            ));
            String::new()
        }
        req => match req.resolve(&cloud.spec.sizes) {
            Ok(s) => s.name.clone(),
            Err(e) => {
                errs.push(FieldError::new("size", e.to_string()));
                String::new()
            }
        },
    };
    // Inputs: template < deployment < server. Only the server's own are checked against the
    // declarations (deployment inputs are shared by templates that declare different ones).
    let decls: Vec<_> = template
        .spec
        .phases()
        .iter()
        .flat_map(|(_, l)| l.iter())
        .filter_map(|n| cat.scripts.get(n))
        .flat_map(|s| s.spec.inputs.iter().cloned())
        .collect();
    if let Err(e) = check_inputs(&decls, &spec.inputs) {
        errs.absorb("", e);
    }
    let mut inputs: Inputs = template.spec.inputs.clone();
    inputs.extend(dep.spec.inputs.clone());
    inputs.extend(spec.inputs.clone());
    // Whatever level a value came from, it must fit every declaration of its name in this
    // template's scripts: a plain-text deployment input cannot fill a `cred` input.
    for (k, v) in &inputs {
        if let Some(d) = decls.iter().find(|d| &d.name == k && !v.fits(d.kind)) {
            errs.push(FieldError::new(
                format!("inputs.{k}"),
                format!("a {} value cannot fill this {} input", v.kind(), d.kind),
            ));
        }
    }
    for name in &template.spec.boot_scripts {
        let Some(script) = cat.scripts.get(name) else { continue };
        for d in script.spec.inputs.iter().filter(|d| d.required && d.default.is_none()) {
            if !inputs.contains_key(&d.name) {
                errs.push(FieldError::new(
                    format!("inputs.{}", d.name),
                    format!("required by boot script {name}; set it on the server, the deployment or the template"),
                ));
            }
        }
    }
    for (k, v) in &inputs {
        let InputValue::Cred(c) = v else { continue };
        match cat.credentials.get(c) {
            None => errs.push(FieldError::new(
                format!("inputs.{k}"),
                format!("no credential named {c}"),
            )),
            // Whichever level the value came from, a server outside the credential's
            // deployments never gets it (checked again at every delivery).
            Some(cred) if !cred.allows(dep.spec.name.as_str()) => errs.push(FieldError::new(
                format!("inputs.{k}"),
                format!(
                    "credential {c} may not be used in deployment {} (it is limited to {})",
                    dep.spec.name,
                    cred.scope_text()
                ),
            )),
            Some(_) => {}
        }
    }
    let mut tags: Vec<Tag> = template.spec.default_tags.clone();
    for t in &spec.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    errs.into_result()?;
    Ok(Server {
        id: ServerId::new(),
        revision: 1,
        created_at: now,
        updated_at: now,
        name: spec.name.clone(),
        deployment: dep.spec.name.clone(),
        template: template.spec.name.clone(),
        template_version: template.version,
        template_hash: template.content_hash.clone(),
        cloud: cloud_name,
        region,
        size,
        image: image_name.clone(),
        image_version: version,
        native_image: native.native_id.clone(),
        login_user: native.login_user.clone(),
        array: None,
        inputs,
        tags,
        state: ServerState::Pending,
        stranded: None,
        instance_id: None,
        private_ip: None,
        public_ip: None,
        launched_at: None,
        booting_since: None,
        operational_at: None,
        decommissioning_since: None,
        terminated_at: None,
        rebundle: None,
    })
}
