//! Instance-identity documents and their Ed25519 signatures.
//!
//! `dynamic/instance-identity/document` is EC2's JSON document (same field names, order and
//! `null`s), pretty-printed by `serde_json`; the bytes depend only on the
//! [`InstanceMetadata`], so every request gets the same bytes. `…/signature` is the standard
//! base64 of an Ed25519 signature over exactly those bytes (Ed25519 is deterministic, so the
//! signature is stable too). The control plane holds the public key ([`IdentityVerifier`]) and
//! checks a document an agent presents, which proves the agent runs on that instance.
//!
//! EC2 signs with AWS's RSA keys and also serves `pkcs7` and `rsa2048`; clients verify those
//! against AWS's published certificates, which we cannot produce. They are not served: a
//! signature no client can check is worse than a clear 404, and our `signature` is not EC2's
//! either (different algorithm) — it is meant for [`IdentityVerifier`].
//!
//! ## Key file
//!
//! [`IdentityKey::load_or_create`] keeps the 32-byte Ed25519 seed as 64 hex characters and a
//! newline, mode 0600. It is created atomically (written to a temporary file, then hard-linked
//! into place, so a crash never leaves a half-written key and two processes starting at once
//! agree on one key). A key file that group or others can access is refused, like the control
//! plane's `master.key`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SubsecRound, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{ImdsError, InstanceMetadata};

/// The account id the service reports (`accountId`, `owner-id`): there is no AWS account.
pub(crate) const ACCOUNT_ID: &str = "000000000000";

/// Ed25519 key that signs instance-identity documents; the control plane verifies them.
pub struct IdentityKey {
    signing: SigningKey,
}

impl IdentityKey {
    /// A fresh key from the operating system's random source.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes (nothing sensible can run then).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Self::from_seed(&seed)
    }

    fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// Load from a 0600 file holding the 32-byte seed as 64 hex characters (a trailing newline
    /// is fine), creating it — and its parent directories, 0700 — if missing.
    ///
    /// Refuses (`PermissionDenied`) a file that group or others can access, and
    /// (`InvalidData`) one that is not 64 hex characters.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match fs::symlink_metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(with_path(path, "cannot read the identity key file", e)),
        }
    }

    fn load(path: &Path) -> io::Result<Self> {
        let mode = fs::metadata(path)
            .map_err(|e| with_path(path, "cannot read the identity key file", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: the identity key file is accessible to others (mode {:o}); \
                     run `chmod 600` on it",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
        let text = fs::read(path).map_err(|e| with_path(path, "cannot read the identity key", e))?;
        let seed = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: the identity key file must hold 64 hex characters (a 32-byte \
                         Ed25519 seed); restore it from a backup, or delete it to create a new \
                         key (the control plane must then trust the new public key)",
                        path.display()
                    ),
                )
            })?;
        Ok(Self::from_seed(&seed))
    }

    fn create(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| with_path(parent, "cannot create the key directory", e))?;
        }
        let key = Self::generate();
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
        let name = path
            .file_name()
            .map_or_else(|| "identity.key".into(), |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", hex::encode(suffix)));
        let written = write_new(&tmp, format!("{}\n", hex::encode(key.signing.to_bytes())));
        let linked = written.and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(key),
            // Someone else created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(with_path(path, "cannot create the identity key file", e)),
        }
    }

    /// The standard base64 Ed25519 signature over exactly `document`.
    pub fn sign(&self, document: &[u8]) -> String {
        STANDARD.encode(self.signing.sign(document).to_bytes())
    }

    /// The public half, for whoever checks documents.
    pub fn verifier(&self) -> IdentityVerifier {
        IdentityVerifier {
            key: self.signing.verifying_key(),
        }
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public_key", &self.verifier().public_key_base64())
            .field("seed", &"***")
            .finish()
    }
}

fn write_new(path: &Path, contents: String) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

fn with_path(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

/// Checks instance-identity documents signed by an [`IdentityKey`].
#[derive(Clone)]
pub struct IdentityVerifier {
    key: VerifyingKey,
}

impl IdentityVerifier {
    /// Read a public key printed by [`IdentityVerifier::public_key_base64`].
    pub fn from_public_key_base64(s: &str) -> Result<Self, ImdsError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| ImdsError::InvalidPublicKey {
            reason: "it is not base64",
        })?;
        let bytes = <[u8; 32]>::try_from(bytes).map_err(|_| ImdsError::InvalidPublicKey {
            reason: "it is not 32 bytes long",
        })?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| ImdsError::InvalidPublicKey {
            reason: "it is not an Ed25519 public key",
        })?;
        Ok(Self { key })
    }

    /// The public key as standard base64 (44 characters).
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.to_bytes())
    }

    /// `Ok(parsed document)` only when the signature over exactly these bytes is valid.
    pub fn verify(&self, document: &[u8], signature_b64: &str) -> Result<IdentityDocument, ImdsError> {
        let bytes = STANDARD
            .decode(signature_b64.trim())
            .map_err(|_| ImdsError::InvalidSignature {
                reason: "it is not base64",
            })?;
        let bytes = <[u8; 64]>::try_from(bytes).map_err(|_| ImdsError::InvalidSignature {
            reason: "it is not 64 bytes long",
        })?;
        self.key
            .verify_strict(document, &Signature::from_bytes(&bytes))
            .map_err(|_| ImdsError::InvalidSignature {
                reason: "it does not match the document and this public key",
            })?;
        serde_json::from_slice(document).map_err(ImdsError::InvalidDocument)
    }
}

impl fmt::Debug for IdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityVerifier")
            .field("public_key", &self.public_key_base64())
            .finish()
    }
}

/// EC2's instance-identity document, field for field (camelCase, EC2's order and `null`s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityDocument {
    /// Always `000000000000`: there is no AWS account.
    pub account_id: String,
    /// `x86_64` or `arm64` (EC2's names), the host's architecture.
    pub architecture: String,
    pub availability_zone: String,
    /// Always `null`.
    pub billing_products: Option<Vec<String>>,
    /// Always `null`.
    pub devpay_product_codes: Option<Vec<String>>,
    /// Always `null`.
    pub marketplace_product_codes: Option<Vec<String>>,
    pub image_id: String,
    pub instance_id: String,
    pub instance_type: String,
    /// Always `null`.
    pub kernel_id: Option<String>,
    /// Launch time, whole seconds, `YYYY-MM-DDTHH:MM:SSZ` like EC2.
    #[serde(with = "ec2_time")]
    pub pending_time: DateTime<Utc>,
    pub private_ip: Ipv4Addr,
    /// Always `null`.
    pub ramdisk_id: Option<String>,
    pub region: String,
    /// EC2's document version, `2017-09-30`.
    pub version: String,
}

impl IdentityDocument {
    pub(crate) fn for_instance(meta: &InstanceMetadata) -> Self {
        Self {
            account_id: ACCOUNT_ID.into(),
            architecture: ec2_architecture().into(),
            availability_zone: meta.availability_zone.clone(),
            billing_products: None,
            devpay_product_codes: None,
            marketplace_product_codes: None,
            image_id: meta.image_id.clone(),
            instance_id: meta.instance_id.clone(),
            instance_type: meta.instance_type.clone(),
            kernel_id: None,
            pending_time: meta.launched_at.trunc_subsecs(0),
            private_ip: meta.local_ipv4,
            ramdisk_id: None,
            region: meta.region.clone(),
            version: "2017-09-30".into(),
        }
    }

    /// The exact bytes served (and signed): pretty JSON, no trailing newline.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an identity document always serialises")
    }
}

fn ec2_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86" => "i386",
        other => other,
    }
}

/// EC2 prints times as `2024-05-01T12:00:00Z` (no fractions).
mod ec2_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_seed() {
        let key = IdentityKey::from_seed(&[7u8; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("***"), "{shown}");
        assert!(!shown.contains(&hex::encode([7u8; 32])), "{shown}");
        assert!(!shown.contains("[7, 7"), "{shown}");
    }

    #[test]
    fn signatures_are_deterministic_and_verify() {
        let key = IdentityKey::from_seed(&[1u8; 32]);
        let doc = br#"{"a": 1}"#;
        assert_eq!(key.sign(doc), key.sign(doc));
        let verifier = IdentityVerifier::from_public_key_base64(&key.verifier().public_key_base64()).unwrap();
        // Valid signature over something that is not a document: a distinct error.
        assert!(matches!(
            verifier.verify(doc, &key.sign(doc)),
            Err(ImdsError::InvalidDocument(_))
        ));
        assert!(matches!(
            verifier.verify(b"other", &key.sign(doc)),
            Err(ImdsError::InvalidSignature { .. })
        ));
    }

    #[test]
    fn bad_public_keys_are_refused() {
        for bad in ["", "not base64!", "AAAA", &STANDARD.encode([0u8; 33])] {
            assert!(
                matches!(
                    IdentityVerifier::from_public_key_base64(bad),
                    Err(ImdsError::InvalidPublicKey { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pending_time_is_whole_seconds_and_round_trips() {
        let t = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.750Z")
            .unwrap()
            .with_timezone(&Utc);
        let json = serde_json::json!({"t": ec2_time::serialize(&t, serde_json::value::Serializer).unwrap()});
        assert_eq!(json["t"], "2024-05-01T12:00:00Z");
    }
}
