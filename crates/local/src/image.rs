//! The local cloud's image store: root file system directories that serve as the read-only
//! lower layer of each instance's overlayfs.
//!
//! # Layout
//!
//! ```text
//! DATA_DIR/local/images/            0700
//!   img-<16 hex>/                   one image; its id is the directory name
//!     rootfs/                       the tree (overlay lowerdir); never modified once in place
//!     image.json                    the LocalImage record; an image without it does not exist
//!   .tmp-<16 hex>/                  a build, import or removal in progress
//! ```
//!
//! # Ids and caching
//!
//! A debootstrap image's id is `img-` + the first 16 hex digits of [`BuildSpec::cache_key`]:
//! SHA-256 over a canonical JSON form of the spec (suite, mirror without trailing `/`, variant,
//! sorted deduplicated packages) and [`IMAGE_FORMAT`], which is bumped whenever
//! post-processing changes so old trees are not reused. An imported image's id is `img-` + the
//! first 16 hex digits of the tarball's SHA-256. Building or importing something whose id
//! already exists returns the stored image at once (with the name it was first given).
//!
//! # Atomicity
//!
//! 1. Work happens in a fresh `.tmp-<random>/`: debootstrap or tar into `rootfs/`, then
//!    post-processing, the size walk, and `image.json` (written via tmp + fsync + rename).
//! 2. The whole directory is renamed to `img-<id>/` — one atomic step, so an image is either
//!    complete or absent. If a concurrent build of the same key got there first, the rename
//!    fails (the target is not empty): ours is deleted and the winner returned.
//! 3. Failures delete the temporary directory; a crash leaves it behind, and
//!    [`ImageStore::open`] deletes every `.tmp-*` (after lazily unmounting anything an
//!    interrupted debootstrap left mounted in it) and every `img-*` without `image.json`.
//!    So one store directory belongs to one Stratus process.
//! 4. [`ImageStore::remove`] renames `img-<id>/` to `.tmp-*` first, then deletes it. The caller
//!    makes sure no instance still uses the image as its lower layer.
//!
//! # Post-processing (debootstrap images)
//!
//! The instance init is not systemd, and every instance must look freshly installed:
//! - `apt-get clean` in a chroot and removal of `/var/lib/apt/lists/*`: ~260 MB → ~170 MB for
//!   [`DEFAULT_PACKAGES`]. Boot scripts that need apt run `apt-get update` first anyway.
//! - `/usr/sbin/policy-rc.d` exiting 101: installing a daemon package never tries to start it
//!   (there is no service manager); boot scripts start what they need.
//! - SSH host keys (`/etc/ssh/ssh_host_*`) removed, so instances never share them; when sshd is
//!   installed, the executable hook `/etc/stratus/boot.d/10-ssh-host-keys` runs `ssh-keygen -A`
//!   (it only creates missing keys) and creates `/run/sshd` at each boot.
//! - `/etc/machine-id` and `/etc/hostname` emptied (debootstrap copies the host's hostname);
//!   the driver gives each instance its own. `/etc/resolv.conf` stays as debootstrap left it:
//!   the driver writes one per instance.
//! - `/etc/stratus/boot.d/` exists: the instance init runs its executables in name order.
//!
//! Imported trees get the same generalization except the apt steps. Every path the store
//! touches inside a tree is checked to be a real directory chain, never a symbolic link,
//! because outside a chroot a link would resolve against the host's root.

mod build;
mod fsutil;
mod import;
mod spec;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

pub use build::{BOOT_D, SSH_HOST_KEYS_HOOK_NAME};
pub use spec::{
    BuildSpec, DEFAULT_MIRROR, DEFAULT_PACKAGES, DEFAULT_SUITE, DEFAULT_VARIANT, IMAGE_FORMAT, MAX_PACKAGES, VARIANTS,
};

use fsutil::{TMP_PREFIX, TmpDir, io_err, remove_tree, tree_size, write_atomic};

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageSource {
    Debootstrap(BuildSpec),
    /// `file_name` is the tarball's name when imported (informational); `sha256` its content hash.
    Import {
        file_name: String,
        sha256: String,
    },
    /// Captured from a stopped instance: its image (`base`) with its own changes on top.
    Capture {
        base: String,
        instance: String,
    },
}

/// One image of the store, as recorded in its `image.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocalImage {
    /// `img-` + 16 lowercase hex digits (see the module docs).
    pub id: String,
    /// Human label given by whoever built or imported it first, e.g. `debian-12`.
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub source: ImageSource,
    /// Apparent size of the tree (`du -sb`).
    pub size_bytes: u64,
}

/// What can go wrong in the image store; each message says what to do where there is something.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{program} is not installed; run: apt-get install -y {package}")]
    MissingTool {
        program: &'static str,
        package: &'static str,
    },
    #[error("image {0:?} does not exist in the local image store")]
    NoSuchImage(String),
    #[error("invalid image build spec: {field}: {problem}")]
    InvalidSpec { field: &'static str, problem: String },
    #[error("image build failed at {step} ({status}); last output:\n{output_tail}")]
    BuildFailed {
        step: String,
        status: String,
        output_tail: String,
    },
    #[error("cannot import {}: {problem}", file.display())]
    Import { file: PathBuf, problem: String },
    #[error("the image tree has a symbolic link or file at {path:?} where a directory belongs; refusing to modify it")]
    UnsafeTree { path: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The image directory of the local cloud. See the module docs.
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// `dir` is DATA_DIR/local/images (created 0700 if missing). Removes what interrupted
    /// builds, imports and removals left behind.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(format!("cannot create the image store {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io_err(format!("cannot resolve {}", dir.display())))?;
        let entries = std::fs::read_dir(&dir).map_err(io_err(format!("cannot read {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("cannot read {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let incomplete = is_image_id(&name) && !entry.path().join("image.json").exists();
            if name.starts_with(TMP_PREFIX) || incomplete {
                tracing::info!(path = %entry.path().display(), "removing leftover of an interrupted image operation");
                remove_tree(&entry.path());
            }
        }
        Ok(ImageStore { dir })
    }

    /// The process's one store for `dir`: local clouds of a data directory share it, and the
    /// clean-up of interrupted operations runs once, when it is first opened — never under a
    /// build another cloud has running.
    pub fn shared(dir: &Path) -> Result<std::sync::Arc<Self>, ImageError> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock, Weak};
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<ImageStore>>>> = OnceLock::new();
        let key = std::path::absolute(dir).map_err(io_err(format!("cannot resolve {}", dir.display())))?;
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(store) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let store = Arc::new(Self::open(&key)?);
        open.insert(key, Arc::downgrade(&store));
        Ok(store)
    }

    /// Builds an image with debootstrap, or returns the stored one with the same cache key.
    /// `progress` receives step lines (`debootstrap: I: ...`, `cleaning: ...`).
    pub async fn build(
        &self,
        name: &str,
        spec: &BuildSpec,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<LocalImage, ImageError> {
        check_name(name)?;
        spec.validate()?;
        let id = format!("img-{}", &spec.cache_key()[..16]);
        if let Some(image) = self.get(&id) {
            progress(&format!("cached: {id} has the same inputs"));
            return Ok(image);
        }
        tracing::info!(image_id = %id, suite = %spec.suite, "building image with debootstrap");
        let tmp = TmpDir::create(&self.dir)?;
        let rootfs = tmp.path().join("rootfs");
        let source = ImageSource::Debootstrap(spec.clone());
        let made = async {
            build::debootstrap(spec, &rootfs, progress).await?;
            build::post_process(&rootfs, progress).await
        };
        self.finish(tmp, made.await, &id, name, source, progress).await
    }

    /// Imports a root file system tarball (.tar, .tar.gz/.tgz or .tar.zst, detected by
    /// content). The same file content gives the same image.
    pub async fn import(&self, name: &str, tarball: &Path) -> Result<LocalImage, ImageError> {
        check_name(name)?;
        let path = tarball.to_path_buf();
        let (compression, sha256) = tokio::task::spawn_blocking(move || import::inspect(&path))
            .await
            .map_err(|e| io_err("import task failed")(std::io::Error::other(e)))??;
        let id = format!("img-{}", &sha256[..16]);
        if let Some(image) = self.get(&id) {
            return Ok(image);
        }
        tracing::info!(image_id = %id, tarball = %tarball.display(), "importing image");
        let tmp = TmpDir::create(&self.dir)?;
        let rootfs = tmp.path().join("rootfs");
        let file_name = tarball
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = ImageSource::Import { file_name, sha256 };
        let quiet = |_: &str| {};
        let made = async {
            std::fs::create_dir(&rootfs).map_err(io_err("cannot create the rootfs directory"))?;
            import::extract(tarball, compression, &rootfs, &quiet).await?;
            let (tarball, rootfs) = (tarball.to_path_buf(), rootfs.clone());
            tokio::task::spawn_blocking(move || {
                import::check_root_fs(&tarball, &rootfs)?;
                build::generalize(&rootfs)
            })
            .await
            .map_err(|e| io_err("import task failed")(std::io::Error::other(e)))?
        };
        self.finish(tmp, made.await, &id, name, source, &quiet).await
    }

    /// Captures an instance: its image `base` with the instance's overlay upper layer `upper` on
    /// top, flattened into a new self-contained image (so removing `base` later never breaks
    /// it). The instance must be stopped, its overlay unmounted. The two layers are mounted
    /// read-only as one overlay (which applies the upper layer's deletions) and copied with
    /// `cp -a`; the tree then gets the same generalization as an import (no SSH host keys, an
    /// empty machine-id and hostname). Ids of captured images are random; capturing the same
    /// instance under the same name again returns the image made the first time.
    pub async fn capture(
        &self,
        name: &str,
        base: &str,
        instance: &str,
        upper: &Path,
    ) -> Result<LocalImage, ImageError> {
        check_name(name)?;
        // Captured before under this name (a control plane that died before recording it).
        let again = self.list()?.into_iter().find(|i| {
            i.name == name && matches!(&i.source, ImageSource::Capture { instance: from, .. } if from == instance)
        });
        if let Some(image) = again {
            return Ok(image);
        }
        let lower = self.rootfs(base)?;
        let id = format!("img-{}", fsutil::random_hex()?);
        tracing::info!(image_id = %id, base, instance, "capturing instance");
        let tmp = TmpDir::create(&self.dir)?;
        let rootfs = tmp.path().join("rootfs");
        let view = tmp.path().join("view");
        let source = ImageSource::Capture {
            base: base.to_owned(),
            instance: instance.to_owned(),
        };
        let made = async {
            for d in [&rootfs, &view] {
                std::fs::create_dir(d).map_err(io_err(format!("cannot create {}", d.display())))?;
            }
            // Upper first: overlayfs reads the leftmost lower layer first. No upperdir: read-only.
            let opts = format!("lowerdir={}:{}", upper.display(), lower.display());
            crate::init::mount("overlay", &view, "overlay", rustix::mount::MountFlags::RDONLY, &opts)
                .map_err(io_err("cannot mount the instance's layers for capture"))?;
            let copied = crate::cmd::run(
                "cp",
                &[
                    std::ffi::OsStr::new("-a"),
                    std::ffi::OsStr::new("--"),
                    view.join(".").as_os_str(),
                    rootfs.as_os_str(),
                ],
                None,
            )
            .await;
            let unmounted = rustix::mount::unmount(&view, rustix::mount::UnmountFlags::DETACH);
            copied.map_err(|e| ImageError::BuildFailed {
                step: "copy".into(),
                status: "failed".into(),
                output_tail: e.to_string(),
            })?;
            unmounted.map_err(|e| io_err("cannot unmount the capture view")(e.into()))?;
            std::fs::remove_dir(&view).map_err(io_err("cannot remove the capture view"))?;
            let rootfs = rootfs.clone();
            tokio::task::spawn_blocking(move || build::generalize(&rootfs))
                .await
                .map_err(|e| io_err("capture task failed")(std::io::Error::other(e)))?
        };
        let quiet = |_: &str| {};
        self.finish(tmp, made.await, &id, name, source, &quiet).await
    }

    /// Measures the tree, writes `image.json` and renames the temporary directory into place
    /// (or cleans up after `made` failed).
    async fn finish(
        &self,
        tmp: TmpDir,
        made: Result<(), ImageError>,
        id: &str,
        name: &str,
        source: ImageSource,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<LocalImage, ImageError> {
        if let Err(error) = made {
            tmp.remove().await;
            return Err(error);
        }
        progress("measuring size");
        let (tmp_path, id_owned, name_owned) = (tmp.path().to_path_buf(), id.to_owned(), name.to_owned());
        let image = tokio::task::spawn_blocking(move || -> Result<LocalImage, ImageError> {
            let image = LocalImage {
                id: id_owned,
                name: name_owned,
                created_at: Utc::now(),
                source,
                size_bytes: tree_size(&tmp_path.join("rootfs"))?,
            };
            let json = serde_json::to_vec_pretty(&image).expect("LocalImage serializes");
            write_atomic(&tmp_path.join("image.json"), &json, 0o600)?;
            Ok(image)
        })
        .await
        .map_err(|e| io_err("image task failed")(std::io::Error::other(e)));
        let image = match image.and_then(|r| r) {
            Ok(image) => image,
            Err(error) => {
                tmp.remove().await;
                return Err(error);
            }
        };
        match std::fs::rename(tmp.path(), self.dir.join(id)) {
            Ok(()) => {
                tmp.keep();
                progress(&format!("done: {id} ({} MB)", image.size_bytes / 1_000_000));
                tracing::info!(image_id = %id, size_bytes = image.size_bytes, "image ready");
                Ok(image)
            }
            Err(error) => {
                tmp.remove().await;
                // A concurrent build or import of the same id won the rename: use its image.
                self.get(id)
                    .ok_or_else(|| io_err(format!("cannot move image {id} into place"))(error))
            }
        }
    }

    /// The image with this id, if it exists and is complete.
    pub fn get(&self, id: &str) -> Option<LocalImage> {
        if !is_image_id(id) {
            return None;
        }
        let json = std::fs::read(self.dir.join(id).join("image.json")).ok()?;
        match serde_json::from_slice::<LocalImage>(&json) {
            Ok(image) if image.id == id => Some(image),
            Ok(_) | Err(_) => {
                tracing::warn!(image_id = %id, "image.json is unreadable or names another id; ignoring the image");
                None
            }
        }
    }

    /// Every complete image, oldest first.
    pub fn list(&self) -> Result<Vec<LocalImage>, ImageError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_err(format!("cannot read {}", self.dir.display())))?;
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("cannot read {}", self.dir.display())))?;
            images.extend(self.get(&entry.file_name().to_string_lossy()));
        }
        images.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(images)
    }

    /// The directory to use as the overlay lower layer.
    pub fn rootfs(&self, id: &str) -> Result<PathBuf, ImageError> {
        self.get(id)
            .map(|_| self.dir.join(id).join("rootfs"))
            .ok_or_else(|| ImageError::NoSuchImage(id.to_owned()))
    }

    /// Deletes an image (first made invisible by a rename, then removed from disk).
    pub fn remove(&self, id: &str) -> Result<(), ImageError> {
        if self.get(id).is_none() {
            return Err(ImageError::NoSuchImage(id.to_owned()));
        }
        let doomed = self.dir.join(format!("{TMP_PREFIX}{}", fsutil::random_hex()?));
        std::fs::rename(self.dir.join(id), &doomed).map_err(io_err(format!("cannot remove image {id}")))?;
        remove_tree(&doomed);
        tracing::info!(image_id = %id, "image removed");
        Ok(())
    }
}

/// Image ids are `img-` + hex; checking this keeps every id a plain directory name.
fn is_image_id(s: &str) -> bool {
    s.strip_prefix("img-")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        && !s.bytes().any(|b| b.is_ascii_uppercase())
}

fn check_name(name: &str) -> Result<(), ImageError> {
    if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        let problem = format!("{name:?} must be 1 to 128 characters without control characters");
        return Err(ImageError::InvalidSpec { field: "name", problem });
    }
    Ok(())
}
