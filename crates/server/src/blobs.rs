//! The artifact store's bytes: content-addressed blobs behind [`object_store::ObjectStore`].
//!
//! A blob lives at `blobs/sha256/AB/ABCD…` (its SHA-256 in hex), so two objects with the same
//! content share one blob and an overwrite never touches bytes a reader is streaming. An upload
//! goes to `uploads/UUID` while it is hashed and counted, and is renamed into place only when it
//! is whole, within the size limit and, if the caller said which hash to expect, equal to it; a
//! failed upload leaves nothing behind. Which key holds which blob is the catalogue's business
//! (`app::artifacts`): one store write switches an object to its new content.
//!
//! The default backend is a local directory (`DATA_DIR/artifacts`); an S3 bucket implements the
//! same `ObjectStore` trait, so the control plane does not change when the bytes move.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::ObjectStoreExt as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path as BlobPath;
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// A blob's bytes, as they stream out of the backend.
pub type ByteStream = futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>;

/// What an upload stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the object is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("the content's SHA-256 is {actual}, not the {expected} the request said")]
    HashMismatch { expected: String, actual: String },
    #[error("the upload was cut off: {0}")]
    Body(String),
    #[error("blob {0} is missing from the artifact backend")]
    Missing(String),
    #[error("the artifact backend failed")]
    Backend(#[from] object_store::Error),
    #[error("the artifact backend failed")]
    Io(#[from] std::io::Error),
}

/// A whole, verified upload not yet moved to its blob path.
#[derive(Debug)]
pub struct Staged {
    upload: BlobPath,
    pub stored: Stored,
}

/// The blob backend and the size limit of one object.
#[derive(Debug, Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    max: u64,
}

/// Where blobs live: `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&style=path|virtual]`.
/// Credentials come from the usual AWS sources of the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity, instance metadata), never from
/// the URL, so the URL can be logged and shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:8333`); AWS when absent.
    pub endpoint: Option<String>,
    pub region: String,
    /// Virtual-hosted requests (`BUCKET.host/key`, AWS's default) or path-style
    /// (`host/BUCKET/key`, most self-hosted servers).
    pub virtual_hosted: bool,
}

impl S3Location {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(format!(
                "{bucket:?} is not an S3 bucket name (3-63 of a-z, 0-9, '-', '.')"
            ));
        }
        if prefix.split('/').any(|s| s == "..") || prefix.contains('\0') {
            return Err("the prefix may not contain '..'".into());
        }
        let mut loc = Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: None,
            region: "us-east-1".into(),
            virtual_hosted: true,
        };
        let mut style_given = false;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| format!("{kv:?}: give KEY=VALUE"))?;
            match k {
                "endpoint" if v.starts_with("http://") || v.starts_with("https://") => {
                    loc.endpoint = Some(v.trim_end_matches('/').to_string())
                }
                "endpoint" => return Err(format!("endpoint {v:?} is not an http(s) URL")),
                "region" if !v.is_empty() && v.len() <= 64 => loc.region = v.to_string(),
                "style" if v == "path" || v == "virtual" => {
                    loc.virtual_hosted = v == "virtual";
                    style_given = true;
                }
                _ => {
                    return Err(format!(
                        "unknown or bad option {k:?} (endpoint, region, style=path|virtual)"
                    ));
                }
            }
        }
        // A self-hosted endpoint without a stated style: path-style, what they all speak.
        if loc.endpoint.is_some() && !style_given {
            loc.virtual_hosted = false;
        }
        Ok(loc)
    }
}

impl Blobs {
    /// Blobs in a local directory (created if missing, with its `uploads/` working directory).
    /// A deleted blob takes the directories it leaves empty with it (`blobs/sha256/AB/`), so a
    /// deleted object leaves nothing behind; writes recreate a missing directory.
    pub fn local(dir: &Path, max: u64) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir.join("uploads"))?;
        let fs = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        Ok(Self::new(Arc::new(fs), max))
    }

    /// Blobs in an S3 bucket (see [`S3Location`]), with credentials from the environment.
    pub fn s3(loc: &S3Location, max: u64) -> Result<Self, BlobError> {
        Self::s3_with(loc, max, None)
    }

    /// Blobs in an S3 bucket with this access key (tests; a control plane takes the
    /// environment's).
    pub fn s3_with(loc: &S3Location, max: u64, key: Option<(&str, &str)>) -> Result<Self, BlobError> {
        use object_store::aws::AmazonS3Builder;
        let mut b = AmazonS3Builder::from_env();
        if let Some((id, secret)) = key {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let mut b = b
            .with_bucket_name(&loc.bucket)
            .with_region(&loc.region)
            .with_virtual_hosted_style_request(loc.virtual_hosted);
        if let Some(e) = &loc.endpoint {
            let endpoint = if loc.virtual_hosted {
                // The bucket is part of the host: `http://BUCKET.host:port`.
                let (scheme, host) = e.split_once("://").unwrap_or(("https", e));
                format!("{scheme}://{}.{host}", loc.bucket)
            } else {
                e.clone()
            };
            b = b.with_endpoint(endpoint).with_allow_http(e.starts_with("http://"));
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(b.build()?);
        let store: Arc<dyn ObjectStore> = if loc.prefix.is_empty() {
            s3
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, loc.prefix.as_str()))
        };
        Ok(Self::new(store, max))
    }

    /// Check the backend answers (a listing of the blob prefix), for a clear error at start.
    pub async fn check(&self) -> Result<(), BlobError> {
        use futures_util::TryStreamExt;
        let mut l = self.store.list(Some(&BlobPath::from("blobs")));
        l.try_next().await?;
        Ok(())
    }

    pub fn new(store: Arc<dyn ObjectStore>, max: u64) -> Self {
        Self { store, max }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    fn path(sha256: &str) -> BlobPath {
        BlobPath::from(format!("blobs/sha256/{}/{sha256}", &sha256[..2]))
    }

    /// Store a stream of bytes; `expect` is the SHA-256 the caller claims. Nothing is kept
    /// unless the whole stream arrived within the limit and matches `expect`.
    pub async fn put<S, E>(&self, body: S, expect: Option<&str>) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let staged = self.stage(body, expect).await?;
        self.keep(&staged).await?;
        Ok(staged.stored)
    }

    /// The first half of [`Blobs::put`]: receive, count and hash the upload into a staging
    /// path. A refused upload is removed before this returns.
    pub async fn stage<S, E>(&self, body: S, expect: Option<&str>) -> Result<Staged, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let upload = BlobPath::from(format!("uploads/{}", uuid::Uuid::new_v4()));
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), upload.clone());
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        // A writer that was shut down (its upload attempted) must not be aborted: the backend
        // cleans up a failed upload itself, and `abort` after `shutdown` panics.
        let mut shut = false;
        let result: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > self.max {
                    return Err(BlobError::TooLarge { max: self.max });
                }
                hash.update(&chunk);
                writer.write_all(&chunk).await?;
            }
            shut = true;
            writer.shutdown().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            if !shut {
                let _ = writer.abort().await;
            }
            let _ = self.store.delete(&upload).await;
            return Err(e);
        }
        let sha256 = hex::encode(hash.finalize());
        if let Some(expected) = expect
            && expected != sha256
        {
            let _ = self.store.delete(&upload).await;
            return Err(BlobError::HashMismatch {
                expected: expected.to_string(),
                actual: sha256,
            });
        }
        Ok(Staged {
            upload,
            stored: Stored { sha256, size },
        })
    }

    /// The second half of [`Blobs::put`]: move a staged upload to its blob path (or drop it
    /// when the blob is already there).
    pub async fn keep(&self, staged: &Staged) -> Result<(), BlobError> {
        let blob = Self::path(&staged.stored.sha256);
        if self.store.head(&blob).await.is_ok() {
            self.store.delete(&staged.upload).await?;
        } else {
            self.store.rename(&staged.upload, &blob).await?;
        }
        Ok(())
    }

    /// Store bytes held in memory (small objects, tests).
    pub async fn put_bytes(&self, bytes: Bytes, expect: Option<&str>) -> Result<Stored, BlobError> {
        self.put(
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]),
            expect,
        )
        .await
    }

    /// The blob's bytes as a stream.
    pub async fn get(&self, sha256: &str) -> Result<ByteStream, BlobError> {
        match self.store.get(&Self::path(sha256)).await {
            Ok(r) => Ok(r.into_stream()),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::Missing(sha256.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove a blob no object refers to any more. A missing blob is not an error.
    pub async fn delete(&self, sha256: &str) -> Result<(), BlobError> {
        match self.store.delete(&Self::path(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// How many entries are under `prefix` (`uploads`, `blobs`): tests check nothing is left.
    #[doc(hidden)]
    pub async fn count(&self, prefix: &str) -> Result<usize, BlobError> {
        use futures_util::TryStreamExt;
        let all: Vec<_> = self.store.list(Some(&BlobPath::from(prefix))).try_collect().await?;
        Ok(all.len())
    }

    /// Write a payload directly (used by tests to damage a blob).
    #[doc(hidden)]
    pub async fn overwrite_for_test(&self, sha256: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.store.put(&Self::path(sha256), PutPayload::from(bytes)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Send + use<> {
        futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    async fn read(b: &Blobs, sha: &str) -> Vec<u8> {
        let mut s = std::pin::pin!(b.get(sha).await.unwrap());
        let mut out = vec![];
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    fn uploads_left(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("uploads")).map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn s3_locations_parse_and_bad_ones_are_refused() {
        let l = S3Location::parse("s3://artifacts/stratus/prod?endpoint=http://127.0.0.1:8333&region=eu-1").unwrap();
        assert_eq!(
            (
                l.bucket.as_str(),
                l.prefix.as_str(),
                l.endpoint.as_deref(),
                l.region.as_str(),
                l.virtual_hosted
            ),
            (
                "artifacts",
                "stratus/prod",
                Some("http://127.0.0.1:8333"),
                "eu-1",
                false
            ),
            "a self-hosted endpoint defaults to path-style"
        );
        assert!(
            S3Location::parse("s3://artifacts").unwrap().virtual_hosted,
            "AWS: virtual-hosted"
        );
        let v = S3Location::parse("s3://b-1?endpoint=https://s3.example&style=virtual").unwrap();
        assert!(v.virtual_hosted);
        for bad in [
            "http://bucket",
            "s3://",
            "s3://UPPER",
            "s3://a",
            "s3://bucket/../x",
            "s3://bucket?endpoint=ftp://x",
            "s3://bucket?style=sideways",
            "s3://bucket?secret=x",
            "s3://bucket?novalue",
            "s3://-bucket",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn stores_by_content_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::local(dir.path(), 1024).unwrap();
        let s = b.put(chunks(&[b"hello ", b"world"]), None).await.unwrap();
        assert_eq!(s.size, 11);
        assert_eq!(s.sha256, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(read(&b, &s.sha256).await, b"hello world");
        // The same content again is the same blob.
        let again = b
            .put_bytes(Bytes::from_static(b"hello world"), Some(&s.sha256))
            .await
            .unwrap();
        assert_eq!(again, s);
        assert_eq!(uploads_left(dir.path()), 0);
        b.delete(&s.sha256).await.unwrap();
        b.delete(&s.sha256).await.unwrap();
        assert!(matches!(b.get(&s.sha256).await, Err(BlobError::Missing(_))));
    }

    #[tokio::test]
    async fn a_refused_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::local(dir.path(), 8).unwrap();
        let e = b.put(chunks(&[b"12345", b"6789"]), None).await.unwrap_err();
        assert!(matches!(e, BlobError::TooLarge { max: 8 }), "{e}");
        let e = b
            .put_bytes(Bytes::from_static(b"abc"), Some(&"0".repeat(64)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not the 000"), "{e}");
        let cut = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"ab")), Err("connection reset".to_string())]);
        let e = b.put(cut, None).await.unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
        assert_eq!(uploads_left(dir.path()), 0);
        assert!(!dir.path().join("blobs").exists());
    }
}
