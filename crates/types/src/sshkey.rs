//! SSH public keys as users register them (`authorized_keys` lines).

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::FieldError;
use crate::name::truncate;

/// Key types Stratus accepts. DSA and RSA-SHA1-only setups are refused (OpenSSH dropped them).
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

pub const KEY_LINE_MAX: usize = 16 * 1024;

/// A parsed, checked public key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SshPublicKey {
    pub key_type: String,
    /// The base64 blob.
    pub data: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

impl SshPublicKey {
    pub fn parse(line: &str) -> Result<Self, FieldError> {
        let bad = |p: String| FieldError::new("public_key", p);
        if line.len() > KEY_LINE_MAX {
            return Err(bad(format!(
                "is {} bytes; a public key line is at most {KEY_LINE_MAX}",
                line.len()
            )));
        }
        if line.contains(['\n', '\r', '\0']) {
            return Err(bad("must be a single line".into()));
        }
        if line.contains("PRIVATE KEY") {
            return Err(bad(
                "this is a private key; register the public key (the .pub file)".into()
            ));
        }
        let mut parts = line.split_whitespace();
        let key_type = parts.next().ok_or_else(|| bad("is empty".into()))?;
        if !KEY_TYPES.contains(&key_type) {
            return Err(bad(format!(
                "key type {:?} is not supported; use one of {} (options before the key type are not accepted)",
                truncate(key_type),
                KEY_TYPES.join(", ")
            )));
        }
        let data = parts
            .next()
            .ok_or_else(|| bad("has no key data after the key type".into()))?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| bad("the key data is not valid base64".into()))?;
        // The blob starts with the key type as an SSH string: u32 length + bytes.
        let inner = blob
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .and_then(|n| blob.get(4..4 + n))
            .ok_or_else(|| bad("the key data is truncated".into()))?;
        if inner != key_type.as_bytes() {
            return Err(bad(format!(
                "the key data is a {:?} key, not {key_type}",
                truncate(&String::from_utf8_lossy(inner))
            )));
        }
        if key_type == "ssh-ed25519" && blob.len() != 4 + 11 + 4 + 32 {
            return Err(bad("an ed25519 key must hold 32 bytes".into()));
        }
        if key_type == "ssh-rsa" && blob.len() < 256 {
            return Err(bad("RSA keys shorter than 2048 bits are refused".into()));
        }
        let comment: Vec<&str> = parts.collect();
        let comment = comment.join(" ");
        if comment.chars().any(char::is_control) || comment.len() > 256 {
            return Err(bad("the comment has control characters or is over 256 bytes".into()));
        }
        let digest = Sha256::digest(&blob);
        let fp = base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest);
        Ok(Self {
            key_type: key_type.into(),
            data: data.into(),
            comment,
            fingerprint: format!("SHA256:{fp}"),
        })
    }

    /// The `authorized_keys` line.
    pub fn line(&self) -> String {
        if self.comment.is_empty() {
            format!("{} {}", self.key_type, self.data)
        } else {
            format!("{} {} {}", self.key_type, self.data, self.comment)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Generated with `ssh-keygen -t ed25519 -C test@example`.
    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEf2dWvj9w2fUYvM8XIS3o1m2hKuVX1yqX5gXnHJxY8o test@example";

    #[test]
    fn parses_ed25519() {
        let k = SshPublicKey::parse(ED).unwrap();
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(k.comment, "test@example");
        assert!(k.fingerprint.starts_with("SHA256:"));
        assert_eq!(k.line(), ED);
    }

    #[test]
    fn rejects_bad_keys() {
        for (bad, why) in [
            ("", "empty"),
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "not supported"),
            ("ssh-ed25519", "no key data"),
            ("ssh-ed25519 !!!notbase64", "base64"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIEf2dWvj9w2fUYvM8XIS3o1m2hKuVX1yqX5gXnHJxY8o",
                "not ssh-rsa",
            ),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEf2 x", "32 bytes"),
            ("ssh-ed25519 AAAA", "truncated"),
        ] {
            let e = SshPublicKey::parse(bad).unwrap_err();
            assert!(e.problem.contains(why), "{bad:?} -> {e}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = SshPublicKey::parse(&s);
            let _ = SshPublicKey::parse(&format!("ssh-ed25519 {s}"));
        }
    }
}
