//! Images made by a cloud: build one from a recipe or import a tarball on a cloud whose driver
//! can (`CloudDriver::build_image`, `import_image`: the local cloud's debootstrap and tarball
//! import), and register it as that cloud's native image of a multi-cloud image (a new image
//! version when the native id changes). Admin only: both run as root on the control plane's
//! machine, and an import reads a file there. Also the image versions, their garbage
//! collection, and what deleting an image removes ([`delete_native`]).

use std::path::Path;

use stratus_api::file::DeploymentFile;
use stratus_api::params::{BuildImageRequest, ImportImageRequest};
use stratus_cloud::{CloudError, ImageRecipe, MadeImage};
use stratus_types::Name;
use stratus_types::image::{Image, ImageSpec, NativeImage};

use super::apply::{Mode, apply};
use super::{ADMIN, Actor, App, AppError, audit};

pub async fn build(app: &App, actor: &Actor, name: &str, req: &BuildImageRequest) -> Result<Image, AppError> {
    actor.require(ADMIN)?;
    let name = Name::parse(name).map_err(|e| AppError::invalid("name", e.problem))?;
    let recipe = ImageRecipe {
        suite: req.suite.clone(),
        mirror: req.mirror.clone(),
        packages: req.packages.clone(),
        extra_packages: req.extra_packages.clone(),
    };
    let driver = app.drivers.for_cloud(&*app.store, &req.cloud).await?;
    let cloud = req.cloud.clone();
    let progress = move |line: &str| tracing::info!(cloud = %cloud, "image build: {line}");
    let built = driver
        .build_image(name.as_str(), &recipe, &progress)
        .await
        .map_err(|e| made_error(&req.cloud, "spec", "image build failed", e))?;
    register(app, actor, &name, &req.cloud, &built, "image.build").await
}

pub async fn import(app: &App, actor: &Actor, name: &str, req: &ImportImageRequest) -> Result<Image, AppError> {
    actor.require(ADMIN)?;
    let name = Name::parse(name).map_err(|e| AppError::invalid("name", e.problem))?;
    let path = Path::new(&req.path);
    if !path.is_absolute() {
        return Err(AppError::invalid(
            "path",
            "give an absolute path on the control plane's machine",
        ));
    }
    let driver = app.drivers.for_cloud(&*app.store, &req.cloud).await?;
    let imported = driver
        .import_image(name.as_str(), path)
        .await
        .map_err(|e| made_error(&req.cloud, "path", "image import failed", e))?;
    register(app, actor, &name, &req.cloud, &imported, "image.import").await
}

/// A build's or import's failure: a cloud that cannot make images, bad input (`field`), or
/// the making itself failing (`failed`, with the cloud's words).
fn made_error(cloud: &Name, field: &str, failed: &str, e: CloudError) -> AppError {
    match e {
        CloudError::Unsupported { driver, .. } => AppError::invalid(
            "cloud",
            format!(
                "cloud {cloud} uses the {driver:?} driver, which makes no images (local clouds do); on this cloud, name the native image id under [image.clouds.{cloud}]"
            ),
        ),
        CloudError::Invalid(problem) => AppError::invalid(field, problem),
        CloudError::Api(source) => AppError::BadState(format!("{failed}: {}", super::error_chain(&*source))),
        e => AppError::BadState(format!("{failed}: {}", super::error_chain(&e))),
    }
}

/// Make `built` the cloud's native image of `name`, keeping the rest of the image as it is.
async fn register(
    app: &App,
    actor: &Actor,
    name: &Name,
    cloud: &Name,
    built: &MadeImage,
    action: &str,
) -> Result<Image, AppError> {
    let existing = super::resolve::named::<Image>(&*app.store, name.as_str()).await.ok();
    let mut spec = existing.as_ref().map_or_else(
        || ImageSpec {
            name: name.clone(),
            description: built.description.clone(),
            clouds: Default::default(),
        },
        |i| i.spec.clone(),
    );
    let previous = spec.clouds.get(cloud).cloned();
    spec.clouds.insert(
        cloud.clone(),
        NativeImage {
            native_id: built.native_id.clone(),
            default_size: previous.as_ref().and_then(|p| p.default_size.clone()),
            login_user: previous.map_or_else(|| "root".to_string(), |p| p.login_user),
        },
    );
    let file = DeploymentFile {
        images: vec![spec],
        ..Default::default()
    };
    apply(app, actor, &file, Mode::Upsert, false).await?;
    let target = format!("image/{name}");
    app.commit(vec![audit(
        actor,
        action,
        target,
        serde_json::json!({ "cloud": cloud, "native_id": built.native_id, "size_bytes": built.size_bytes }),
    )])
    .await?;
    super::resolve::named::<Image>(&*app.store, name.as_str()).await
}

/// One version of an image, with what the control plane knows about it now.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    #[serde(flatten)]
    pub version: stratus_types::image::ImageVersion,
    /// The image's current version (what `clouds` holds).
    pub current: bool,
    /// A captured version whose template has changed since (another content hash): servers
    /// launched from it run scripts that are no longer the template's. Rebuild it with
    /// `stratus array rebundle`.
    pub stale: bool,
    /// Why it is stale, or that its template is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Arrays that launch from it (`deployment/array`) and live servers running it.
    pub used_by: Vec<String>,
}

/// Every version of an image, oldest first.
pub async fn versions(app: &App, actor: &Actor, name: &str) -> Result<Vec<VersionView>, AppError> {
    use stratus_store::TypedStore;
    actor.require(super::OBSERVER)?;
    let image = super::resolve::named::<Image>(&*app.store, name).await?;
    let users = users_of(app, &image).await?;
    let mut out = vec![];
    for v in &image.versions {
        let (stale, note) = match &v.provenance {
            None => (false, None),
            Some(p) => {
                match app
                    .store
                    .find_as::<stratus_types::template::ServerTemplate>("", p.template.as_str())
                    .await?
                {
                    None => (true, Some(format!("template {} no longer exists", p.template))),
                    Some(t) if t.content_hash != p.template_hash => (
                        true,
                        Some(format!(
                            "template {} changed since the capture (now version {})",
                            p.template, t.version
                        )),
                    ),
                    Some(_) => (false, None),
                }
            }
        };
        out.push(VersionView {
            current: v.version == image.current_version(),
            stale,
            note,
            used_by: users.get(&v.version).cloned().unwrap_or_default(),
            version: v.clone(),
        });
    }
    Ok(out)
}

/// Per version: the arrays whose next-launch image it is and the live servers launched from it.
async fn users_of(app: &App, image: &Image) -> Result<std::collections::BTreeMap<u32, Vec<String>>, AppError> {
    use stratus_store::{Query, TypedStore};
    let mut users: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for a in app
        .store
        .list_all::<stratus_types::server::ServerArray>(&Query::default())
        .await?
    {
        if let Some(r) = &a.next_launch_image
            && r.image == image.spec.name
        {
            users
                .entry(r.version)
                .or_default()
                .push(format!("array {}/{}", a.spec.deployment, a.spec.name));
        }
    }
    let q = Query {
        live_only: true,
        ..Default::default()
    };
    for s in app.store.list_all::<stratus_types::server::Server>(&q).await? {
        if s.image == image.spec.name {
            users
                .entry(s.image_version)
                .or_default()
                .push(format!("server {}/{}", s.deployment, s.name));
        }
    }
    Ok(users)
}

/// What `POST /images/{name}/gc` takes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// How many of the newest captured versions to keep (at least 1).
    pub keep: u32,
}

/// What a garbage collection did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GcResult {
    /// Versions deleted, with their native images.
    pub removed: Vec<u32>,
    /// Versions kept because an array or a live server uses them, although older than `keep`.
    pub kept_in_use: Vec<u32>,
}

/// Delete the captured versions of an image older than the newest `keep`, with their native
/// images on every cloud, except versions still in use (an array's next-launch image, a live
/// server's). Versions that were not captured (base images registered by hand or built) are
/// never collected: their native images may be shared.
pub async fn gc(app: &App, actor: &Actor, name: &str, req: &GcRequest) -> Result<GcResult, AppError> {
    actor.require(super::OPERATOR)?;
    if req.keep == 0 {
        return Err(AppError::invalid(
            "keep",
            "must be at least 1 (the current version is always kept)",
        ));
    }
    let mut image = super::resolve::named::<Image>(&*app.store, name).await?;
    let users = users_of(app, &image).await?;
    let captured: Vec<u32> = image
        .versions
        .iter()
        .filter(|v| v.provenance.is_some())
        .map(|v| v.version)
        .collect();
    let old = captured.len().saturating_sub(req.keep as usize);
    let current = image.current_version();
    let mut result = GcResult {
        removed: vec![],
        kept_in_use: vec![],
    };
    for &v in &captured[..old] {
        if users.contains_key(&v) || v == current {
            result.kept_in_use.push(v);
            continue;
        }
        let version = image.version(v).cloned().expect("listed above");
        for (cloud, native) in &version.clouds {
            let driver = app.drivers.for_cloud(&*app.store, cloud).await?;
            driver
                .delete_image(&native.native_id)
                .await
                .map_err(|source| AppError::Cloud {
                    context: format!("deleting image {} (version {v}) on cloud {cloud}", native.native_id),
                    source,
                })?;
        }
        result.removed.push(v);
    }
    if result.removed.is_empty() {
        return Ok(result);
    }
    image.versions.retain(|v| !result.removed.contains(&v.version));
    let now = chrono::Utc::now();
    app.commit(vec![
        stratus_store::Change::update(&mut image, now),
        audit(
            actor,
            "image.gc",
            format!("image/{name}"),
            serde_json::json!({ "keep": req.keep, "removed": result.removed, "kept_in_use": result.kept_in_use }),
        ),
    ])
    .await?;
    Ok(result)
}

/// Every native image id `image` names, in any version.
fn native_ids(image: &Image) -> impl Iterator<Item = &str> {
    let versions = image.versions.iter().flat_map(|v| v.clouds.values());
    versions.chain(image.spec.clouds.values()).map(|n| n.native_id.as_str())
}

/// Delete, on every cloud, the native images of `image` that are Stratus's to delete and that
/// no other image names (by id, on any cloud: local clouds share one image store). Stratus's
/// are those of captured versions, and on a cloud that owns all its images
/// ([`stratus_cloud::CloudDriver::owns_all_images`], the local cloud) every one; an image
/// named by hand on another cloud (a public AMI, the user's own) is never touched. The caller
/// has checked that nothing launches from `image` any more; each deletion is safe to repeat.
pub async fn delete_native(app: &App, image: &Image, catalog: &super::catalog::Catalog) -> Result<(), AppError> {
    let elsewhere: std::collections::BTreeSet<&str> = catalog
        .images
        .values()
        .filter(|i| i.id != image.id)
        .flat_map(native_ids)
        .collect();
    let mut done = std::collections::BTreeSet::new();
    for v in &image.versions {
        for (cloud, native) in &v.clouds {
            let id = native.native_id.as_str();
            if elsewhere.contains(id) || !done.insert((cloud, id)) {
                continue;
            }
            if !catalog.clouds.contains_key(cloud) {
                tracing::warn!(%cloud, native_id = id, image = %image.spec.name, "the image's cloud is gone; its native image cannot be deleted");
                continue;
            }
            let driver = app.drivers.for_cloud(&*app.store, cloud).await?;
            if v.provenance.is_none() && !driver.owns_all_images() {
                continue;
            }
            driver.delete_image(id).await.map_err(|source| AppError::Cloud {
                context: format!("deleting native image {id} (version {}) on cloud {cloud}", v.version),
                source,
            })?;
        }
    }
    Ok(())
}
