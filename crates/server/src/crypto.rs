//! Credentials at rest: XChaCha20-Poly1305 under a key the control plane creates on first start.
//!
//! The key is 32 random bytes in `<data dir>/master.key` (mode 0600), apart from the database:
//! a copy of the database alone reveals no credential. Each value gets a fresh 24-byte nonce, and
//! the credential's id is bound in as associated data, so a ciphertext moved to another
//! credential's row does not decrypt.
//!
//! Messages one replica leaves for another in the database (`outbox`: run frames carry the
//! decrypted inputs of a run) are sealed the same way under a key derived from the master key
//! every replica shares ([`KeyRing::seal_relay`]), with the receiving replica and the server
//! as associated data: a row is opened only by the replica it was addressed to, for the agent
//! it names, so moving it to another replica or another server makes it unreadable.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use stratus_store::Sealed;
use stratus_types::credential::Secret;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read or create the key file {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {path} is not 32 bytes; restore it from backup (credentials cannot be read without it)")]
    BadKey { path: String },
    #[error("the key file {path} is readable by others (mode {mode:o}); run chmod 600 on it")]
    LooseKey { path: String, mode: u32 },
    #[error("credential {0} was encrypted with another key (key id {1}); restore the matching master.key")]
    WrongKey(String, String),
    #[error("credential {0} cannot be decrypted (damaged or tampered with)")]
    Damaged(String),
    #[error("the system random generator failed")]
    Random,
    #[error("a relayed message cannot be opened (sealed under another master key, damaged, or addressed elsewhere)")]
    Relay,
}

/// How a sealed relay message starts (version 1: key id, nonce and ciphertext, base64).
const RELAY_V1: &str = "sealed1";

pub struct KeyRing {
    cipher: XChaCha20Poly1305,
    key_id: String,
    /// Derived from the master key, only for enrolment tokens (never used to encrypt).
    enrolment: [u8; 32],
    /// Derived from the master key, only for signing artifact fetch URLs.
    fetch: [u8; 32],
    /// Derived from the master key, only for messages relayed between replicas.
    relay: XChaCha20Poly1305,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing(key {})", self.key_id)
    }
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|_| CryptoError::Random)?;
    Ok(b)
}

impl KeyRing {
    /// Load the key, creating it (0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let shown = path.display().to_string();
        let io = |source| CryptoError::KeyFile {
            path: shown.clone(),
            source,
        };
        if !path.exists() {
            let key: [u8; 32] = random_bytes()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(&key).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::LooseKey { path: shown, mode });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadKey { path: shown.clone() })?;
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &[u8; 32]) -> Self {
        let key_id = hex::encode(&Sha256::digest(key)[..8]);
        let mut h = Sha256::new();
        h.update(b"stratus enrolment key v1\0");
        h.update(key);
        let mut f = Sha256::new();
        f.update(b"stratus artifact fetch key v1\0");
        f.update(key);
        let mut r = Sha256::new();
        r.update(b"stratus replica relay key v1\0");
        r.update(key);
        let relay: [u8; 32] = r.finalize().into();
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            key_id,
            enrolment: h.finalize().into(),
            fetch: f.finalize().into(),
            relay: XChaCha20Poly1305::new((&relay).into()),
        }
    }

    /// The one-time enrolment token of a server's agent: an HMAC of the server id, so the
    /// control plane can recompute it (a retried launch writes the same user-data) and stores
    /// nothing secret. It is accepted once, while the server is booting.
    pub fn enrolment_token(&self, server_id: &str) -> String {
        use base64::Engine;
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.enrolment).expect("any key length");
        mac.update(b"enrol\0");
        mac.update(server_id.as_bytes());
        format!(
            "stratus_enrol_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The signature of an artifact fetch URL: it names one object's one content (its SHA-256)
    /// until `expires` (Unix seconds), minted by `by` (a token or an agent, see
    /// `app::artifacts::Minter`), so the URL is worthless for any other object, for the same key
    /// after it was overwritten, after it expires, and for anyone to re-attribute to another
    /// minter.
    pub fn fetch_signature(&self, bucket: &str, key: &str, sha256: &str, expires: i64, by: &str) -> String {
        use base64::Engine;
        use hmac::Mac;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.fetch_mac(bucket, key, sha256, expires, by).finalize().into_bytes())
    }

    /// Check a fetch URL's signature (in constant time).
    pub fn fetch_signature_ok(
        &self,
        bucket: &str,
        key: &str,
        sha256: &str,
        expires: i64,
        by: &str,
        signature: &str,
    ) -> bool {
        use base64::Engine;
        use hmac::Mac;
        let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        self.fetch_mac(bucket, key, sha256, expires, by)
            .verify_slice(&sig)
            .is_ok()
    }

    fn fetch_mac(&self, bucket: &str, key: &str, sha256: &str, expires: i64, by: &str) -> hmac::Hmac<Sha256> {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.fetch).expect("any key length");
        // Lengths first, so no two (bucket, key) pairs run together into the same bytes.
        for part in [bucket.as_bytes(), key.as_bytes(), sha256.as_bytes(), by.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// Seal a message for `server`'s agent that `replica` will deliver: text safe to store.
    pub fn seal_relay(&self, replica: &str, server: &str, message: &str) -> Result<String, CryptoError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let nonce: [u8; 24] = random_bytes()?;
        let ciphertext = self
            .relay
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: message.as_bytes(),
                    aad: &relay_aad(replica, server),
                },
            )
            .map_err(|_| CryptoError::Relay)?;
        Ok(format!(
            "{RELAY_V1}:{}:{}:{}",
            self.key_id,
            b64.encode(nonce),
            b64.encode(ciphertext)
        ))
    }

    /// Open a message [`KeyRing::seal_relay`] sealed for this `replica` and `server`; anything
    /// else (plain text, another key, another address, a changed byte) is refused.
    pub fn open_relay(&self, replica: &str, server: &str, sealed: &str) -> Result<String, CryptoError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let mut parts = sealed.split(':');
        let (Some(RELAY_V1), Some(key_id), Some(nonce), Some(ct), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Relay);
        };
        if key_id != self.key_id {
            return Err(CryptoError::Relay);
        }
        let nonce = b64.decode(nonce).map_err(|_| CryptoError::Relay)?;
        let nonce = XNonce::try_from(nonce.as_slice()).map_err(|_| CryptoError::Relay)?;
        let ct = b64.decode(ct).map_err(|_| CryptoError::Relay)?;
        let plain = self
            .relay
            .decrypt(
                &nonce,
                Payload {
                    msg: &ct,
                    aad: &relay_aad(replica, server),
                },
            )
            .map_err(|_| CryptoError::Relay)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Relay)
    }

    pub fn seal(&self, id: &str, secret: &Secret) -> Result<Sealed, CryptoError> {
        let nonce: [u8; 24] = random_bytes()?;
        let ciphertext = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Damaged(id.to_string()))?;
        Ok(Sealed {
            key_id: self.key_id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub fn open(&self, id: &str, sealed: &Sealed) -> Result<Secret, CryptoError> {
        if sealed.key_id != self.key_id {
            return Err(CryptoError::WrongKey(id.to_string(), sealed.key_id.clone()));
        }
        let nonce = XNonce::try_from(sealed.nonce.as_slice()).map_err(|_| CryptoError::Damaged(id.to_string()))?;
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Damaged(id.to_string()))?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| CryptoError::Damaged(id.to_string()))
    }
}

/// The associated data of a relayed message: where it goes, length-prefixed so no two
/// (replica, server) pairs run together into the same bytes.
fn relay_aad(replica: &str, server: &str) -> Vec<u8> {
    let mut aad = b"stratus outbox v1\0".to_vec();
    for part in [replica.as_bytes(), server.as_bytes()] {
        aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_messages_are_sealed_and_bound_to_their_address() {
        let k = KeyRing::from_key(&[7; 32]);
        let msg = r#"{"type":"run_script","env":[{"name":"P","value":"hunter2-secret"}]}"#;
        let sealed = k.seal_relay("replica-a", "server-1", msg).unwrap();
        assert!(!sealed.contains("hunter2"), "{sealed}");
        assert_eq!(k.open_relay("replica-a", "server-1", &sealed).unwrap(), msg);
        // Another replica, another server, another key, a plain or damaged row: refused.
        assert!(k.open_relay("replica-b", "server-1", &sealed).is_err());
        assert!(k.open_relay("replica-a", "server-2", &sealed).is_err());
        assert!(k.open_relay("replica-as", "erver-1", &sealed).is_err());
        assert!(
            KeyRing::from_key(&[8; 32])
                .open_relay("replica-a", "server-1", &sealed)
                .is_err()
        );
        assert!(k.open_relay("replica-a", "server-1", msg).is_err());
        let mut bad = sealed.clone();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert!(k.open_relay("replica-a", "server-1", &bad).is_err());
        // A fresh nonce each time: the same message never seals the same way twice.
        assert_ne!(sealed, k.seal_relay("replica-a", "server-1", msg).unwrap());
    }

    #[test]
    fn fetch_signatures_bind_object_content_and_expiry() {
        let k = KeyRing::from_key(&[7; 32]);
        let sha = "a".repeat(64);
        let by = "t.1";
        let sig = k.fetch_signature("apps", "web/v1.tgz", &sha, 1000, by);
        assert!(k.fetch_signature_ok("apps", "web/v1.tgz", &sha, 1000, by, &sig));
        assert!(!k.fetch_signature_ok("apps", "web/v2.tgz", &sha, 1000, by, &sig));
        assert!(!k.fetch_signature_ok("appsw", "eb/v1.tgz", &sha, 1000, by, &sig));
        assert!(!k.fetch_signature_ok("apps", "web/v1.tgz", &"b".repeat(64), 1000, by, &sig));
        assert!(!k.fetch_signature_ok("apps", "web/v1.tgz", &sha, 1001, by, &sig));
        assert!(
            !k.fetch_signature_ok("apps", "web/v1.tgz", &sha, 1000, "t.2", &sig),
            "bound to its minter"
        );
        assert!(!k.fetch_signature_ok("apps", "web/v1.tgz", &sha, 1000, "", &sig));
        assert!(!k.fetch_signature_ok("apps", "web/v1.tgz", &sha, 1000, by, "not base64!"));
        assert!(!k.fetch_signature_ok("apps", "web/v1.tgz", &sha, 1000, by, ""));
        let other = KeyRing::from_key(&[8; 32]);
        assert!(!other.fetch_signature_ok("apps", "web/v1.tgz", &sha, 1000, by, &sig));
    }

    #[test]
    fn round_trip_and_binding() {
        let k = KeyRing::from_key(&[7; 32]);
        let s = k.seal("cred-a", &Secret::new("hunter2")).unwrap();
        assert!(!s.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open("cred-a", &s).unwrap().expose(), "hunter2");
        assert!(
            matches!(k.open("cred-b", &s), Err(CryptoError::Damaged(_))),
            "bound to its id"
        );
        let other = KeyRing::from_key(&[8; 32]);
        assert!(matches!(other.open("cred-a", &s), Err(CryptoError::WrongKey(..))));
        let mut bad = s.clone();
        bad.ciphertext[0] ^= 1;
        assert!(k.open("cred-a", &bad).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let a = KeyRing::load_or_create(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let b = KeyRing::load_or_create(&p).unwrap();
        assert_eq!(a.key_id, b.key_id);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(KeyRing::load_or_create(&p), Err(CryptoError::LooseKey { .. })));
    }
}
