//! Multi-cloud images: one name, a native image per cloud, versions with provenance.

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use crate::name::truncate;
use crate::size::SizeRequest;
use crate::{FieldError, ImageId, Invalid, Name, ServerId};

/// An image as one cloud knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeImage {
    /// The cloud's id for it (`ami-0abc…`, or a local image directory name).
    pub native_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_size: Option<SizeRequest>,
    /// Who `stratus ssh` logs in as.
    #[serde(default = "root")]
    pub login_user: String,
}

fn root() -> String {
    "root".into()
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub name: Name,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Per cloud (by cloud name), the native image of the current version.
    pub clouds: BTreeMap<Name, NativeImage>,
}

/// Where a captured (rebundled) image came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Provenance {
    pub source_server: ServerId,
    /// `deployment/name` of the source server, for people.
    #[serde(default)]
    pub source_name: String,
    /// The array the image was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<Name>,
    pub template: Name,
    /// The template's content hash when the source server was launched: the image is stale
    /// once the template's hash is another.
    pub template_hash: String,
    pub captured_at: DateTime<Utc>,
    /// The image and version the source server booted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::server::ImageRef>,
    /// Per-image scripts the source server ran to the end, with their
    /// [`crate::script::ScriptSpec::body_hash`]: an instance of this image skips them while
    /// the hash still matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baked: BTreeMap<Name, String>,
    /// The image's size when the cloud reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ImageVersion {
    pub version: u32,
    pub clouds: BTreeMap<Name, NativeImage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub id: ImageId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: ImageSpec,
    /// Every version, oldest first; the last is current and equals `clouds`.
    pub versions: Vec<ImageVersion>,
}

impl Image {
    pub fn current_version(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }

    pub fn version(&self, v: u32) -> Option<&ImageVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

impl ImageSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if self.clouds.is_empty() {
            errs.push(FieldError::new(
                "clouds",
                "an image needs a native image on at least one cloud",
            ));
        }
        for (cloud, native) in &self.clouds {
            let at = format!("clouds.{cloud}");
            if native.native_id.is_empty()
                || native.native_id.len() > 256
                || native.native_id.chars().any(char::is_control)
            {
                errs.push(FieldError::new(
                    format!("{at}.native_id"),
                    "must be 1-256 printable characters",
                ));
            }
            let user_ok = !native.login_user.is_empty()
                && native.login_user.len() <= 32
                && native
                    .login_user
                    .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && native
                    .login_user
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
            if !user_ok {
                errs.push(FieldError::new(
                    format!("{at}.login_user"),
                    format!("{:?} is not a Unix user name", truncate(&native.login_user)),
                ));
            }
            if let Some(s) = &native.default_size {
                errs.check(
                    &format!("{at}.default_size"),
                    s.validate().map_err(|e| FieldError::new("", e.problem)),
                );
            }
        }
        if self.description.len() > 4096 {
            errs.push(FieldError::new("description", "is longer than 4096 bytes"));
        }
        errs.into_result()
    }
}
