//! Local images: build one with debootstrap or import a tarball on a `local` cloud, and
//! register it as that cloud's native image of a multi-cloud image (a new image version when
//! the native id changes). Admin only: both run as root on the control plane's machine, and
//! an import reads a file there.

use std::path::Path;

use stratus_api::file::DeploymentFile;
use stratus_api::params::{BuildImageRequest, ImportImageRequest};
use stratus_local::LocalCloud;
use stratus_local::image::{BuildSpec, LocalImage};
use stratus_types::Name;
use stratus_types::image::{Image, ImageSpec, NativeImage};

use super::apply::{Mode, apply};
use super::{ADMIN, Actor, App, AppError, audit};

pub async fn build(app: &App, actor: &Actor, name: &str, req: &BuildImageRequest) -> Result<Image, AppError> {
    actor.require(ADMIN)?;
    let name = Name::parse(name).map_err(|e| AppError::invalid("name", e.problem))?;
    let mut spec = BuildSpec::default();
    if let Some(s) = &req.suite {
        spec.suite = s.clone();
    }
    if let Some(m) = &req.mirror {
        spec.mirror = m.clone();
    }
    if let Some(p) = &req.packages {
        spec.packages = p.clone();
    }
    spec.packages.extend(req.extra_packages.iter().cloned());
    spec.validate().map_err(|e| AppError::invalid("spec", e.to_string()))?;
    let driver = local_cloud(app, &req.cloud).await?;
    let local = driver
        .as_any()
        .downcast_ref::<LocalCloud>()
        .expect("checked by local_cloud");
    let cloud = req.cloud.clone();
    let built = local
        .images()
        .build(
            name.as_str(),
            &spec,
            &move |line: &str| tracing::info!(cloud = %cloud, "image build: {line}"),
        )
        .await
        .map_err(|e| AppError::BadState(format!("image build failed: {e}")))?;
    let description = format!("Debian {} ({}) built with debootstrap", spec.suite, spec.variant);
    register(app, actor, &name, &req.cloud, &built, &description, "image.build").await
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
    let driver = local_cloud(app, &req.cloud).await?;
    let local = driver
        .as_any()
        .downcast_ref::<LocalCloud>()
        .expect("checked by local_cloud");
    let imported = local
        .images()
        .import(name.as_str(), path)
        .await
        .map_err(|e| AppError::BadState(format!("image import failed: {e}")))?;
    let description = format!("imported from {}", path.display());
    register(app, actor, &name, &req.cloud, &imported, &description, "image.import").await
}

async fn local_cloud(app: &App, cloud: &Name) -> Result<std::sync::Arc<dyn stratus_cloud::CloudDriver>, AppError> {
    let driver = app.drivers.for_cloud(&*app.store, cloud).await?;
    if driver.as_any().downcast_ref::<LocalCloud>().is_none() {
        return Err(AppError::invalid(
            "cloud",
            format!(
                "cloud {cloud} uses the {:?} driver; images are built and imported on local clouds (on other clouds, name the native image id under [image.clouds.{cloud}])",
                driver.kind()
            ),
        ));
    }
    Ok(driver)
}

/// Make `built` the cloud's native image of `name`, keeping the rest of the image as it is.
async fn register(
    app: &App,
    actor: &Actor,
    name: &Name,
    cloud: &Name,
    built: &LocalImage,
    description: &str,
    action: &str,
) -> Result<Image, AppError> {
    let existing = super::resolve::named::<Image>(&*app.store, name.as_str()).await.ok();
    let mut spec = existing.as_ref().map_or_else(
        || ImageSpec {
            name: name.clone(),
            description: description.to_string(),
            clouds: Default::default(),
        },
        |i| i.spec.clone(),
    );
    let previous = spec.clouds.get(cloud).cloned();
    spec.clouds.insert(
        cloud.clone(),
        NativeImage {
            native_id: built.id.clone(),
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
        serde_json::json!({ "cloud": cloud, "native_id": built.id, "size_bytes": built.size_bytes }),
    )])
    .await?;
    super::resolve::named::<Image>(&*app.store, name.as_str()).await
}
