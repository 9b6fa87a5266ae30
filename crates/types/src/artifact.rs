//! The artifact store's catalogue: buckets and the objects in them.
//!
//! The bytes live in a blob backend (a local directory by default; S3 later), addressed by their
//! SHA-256. These records are what the control plane knows of them: which key of which bucket
//! holds which content, so an overwrite is one atomic store write and every reader (an API
//! download, an instance's signed URL) sees either the old object or the new one, whole.

use chrono::{DateTime, Utc};

use crate::{BucketId, Name, ObjectId};

/// The largest object the store accepts by default (`stratus serve --artifact-max`).
pub const OBJECT_MAX_DEFAULT: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Bucket {
    pub id: BucketId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub name: Name,
    pub created_by: String,
}

/// One object: a key in a bucket and the content it holds now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Object {
    pub id: ObjectId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub bucket: Name,
    /// 1–1024 bytes, `/`-separated, no empty, `.` or `..` segment (see
    /// [`crate::input::check_object_key`]).
    pub key: String,
    pub size: u64,
    /// SHA-256 of the content, lower-case hex: what instances verify before use.
    pub sha256: String,
    /// Who wrote the current content.
    pub updated_by: String,
}

/// `BUCKET/KEY`, as the CLI and `artifact:` inputs write an object.
pub fn split_path(path: &str) -> Result<(Name, &str), crate::FieldError> {
    let bad = |p: String| crate::FieldError::new("", p);
    let (bucket, key) = path
        .split_once('/')
        .ok_or_else(|| bad(format!("{:?} is not BUCKET/KEY", crate::name::truncate(path))))?;
    let bucket = Name::parse(bucket).map_err(|e| bad(format!("bucket name {}", e.problem)))?;
    crate::input::check_object_key(key).map_err(bad)?;
    Ok((bucket, key))
}

/// Is this a SHA-256 in lower-case hex?
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text: a clear answer, never a panic; what is accepted cannot leave its bucket.
        #[test]
        fn object_paths_never_escape(s in "\\PC{0,40}|[a-z./]{0,20}") {
            if let Ok((b, k)) = split_path(&s) {
                prop_assert!(!b.as_str().is_empty());
                prop_assert!(!k.starts_with('/'));
                prop_assert!(k.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
                prop_assert!(!k.chars().any(char::is_control));
            }
        }
    }

    #[test]
    fn paths() {
        let (b, k) = split_path("apps/web/v1.tar.gz").unwrap();
        assert_eq!((b.as_str(), k), ("apps", "web/v1.tar.gz"));
        for bad in ["apps", "apps/", "/x", "Apps/x", "a/../x", "a/x//y", "a/x\n", ""] {
            assert!(split_path(bad).is_err(), "{bad:?}");
        }
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex("abc"));
    }
}
