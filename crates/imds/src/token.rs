//! IMDSv2 session tokens: stateless, HMAC-SHA256, bound to one instance.
//!
//! ## Protocol (as EC2, as botocore and cloud-init expect it)
//!
//! 1. `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..=21600`.
//!    * carries `X-Forwarded-For` → 403 (EC2 refuses tokens to requests that went through a
//!      proxy; botocore reads 403/404/405 as "no IMDSv2" and falls back to IMDSv1);
//!    * TTL header missing, not a number, 0 or above 21600 → 400 (botocore: an error);
//!    * peer not an instance → 403;
//!    * otherwise 200, body = the token, the TTL header echoed.
//! 2. Reads send `X-aws-ec2-metadata-token: <token>`. A token that is malformed, forged,
//!    expired or issued to another instance → 401, whether or not the instance requires tokens
//!    (EC2 also rejects a bad token when IMDSv2 is optional). No token at all → 401 only when
//!    the instance has `tokens_required` (EC2's `HttpTokens=required`).
//!
//! ## Format
//!
//! ```text
//! token = base64url_nopad( expiry (u64 big-endian, ms on this process's monotonic clock)
//!                          ‖ HMAC-SHA256(key, DOMAIN ‖ expiry ‖ instance_id) )   54 chars
//! ```
//!
//! * The key is 32 random bytes drawn when the service starts and never stored, so nothing is
//!   kept per token and **tokens do not survive a restart** of the service: clients get 401
//!   and fetch a new token, as they do on EC2 when a token expires (botocore fetches one per
//!   credential refresh; cloud-init per run).
//! * The instance id is only inside the MAC. Validation recomputes it for the instance the
//!   peer address maps to *at request time*, so a token used from another instance — or after
//!   the address moved to another instance — is refused.
//! * Expiry uses a monotonic clock, so wall-clock jumps neither extend nor cut tokens short.
//! * Tokens are secrets: [`TokenKey`]'s `Debug` shows nothing of the key, and neither tokens nor
//!   the reason a particular one failed beyond its kind are logged.

use std::fmt;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// EC2's longest token lifetime: six hours.
pub(crate) const MAX_TTL_SECS: u32 = 21_600;
/// Separates these MACs from any other use of the key.
const DOMAIN: &[u8] = b"stratus-imds token v1\0";
const MAC_LEN: usize = 32;
const TOKEN_LEN: usize = 8 + MAC_LEN;
/// Length of a well-formed token in characters; anything else is refused before decoding.
const TOKEN_CHARS: usize = (TOKEN_LEN * 4).div_ceil(3);

/// Why a token was refused (for logs; clients only see 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not something this service issues.
    Malformed,
    /// A valid shape, but not issued by this process for this instance.
    NotForThisInstance,
    /// Issued for this instance, but past its TTL.
    Expired,
}

/// The per-process secret that issues and checks tokens.
pub(crate) struct TokenKey {
    key: [u8; 32],
    epoch: Instant,
}

impl TokenKey {
    /// A fresh random key; tokens issued by any other key are refused.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes.
    pub(crate) fn random() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Self {
            key,
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since this key was made: the clock expiries are measured on.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A token for `instance_id`, valid for `ttl_secs` from `now_ms`.
    pub(crate) fn issue(&self, instance_id: &str, ttl_secs: u32, now_ms: u64) -> String {
        let expiry = now_ms.saturating_add(u64::from(ttl_secs) * 1000);
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.extend_from_slice(&expiry.to_be_bytes());
        bytes.extend_from_slice(&self.mac(expiry, instance_id).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `Ok` only for a token this key issued for `instance_id` that has not expired at `now_ms`.
    pub(crate) fn validate(&self, token: &str, instance_id: &str, now_ms: u64) -> Result<(), TokenError> {
        if token.len() != TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        let (expiry, tag) = bytes.split_at_checked(8).ok_or(TokenError::Malformed)?;
        let expiry = u64::from_be_bytes(expiry.try_into().map_err(|_| TokenError::Malformed)?);
        self.mac(expiry, instance_id)
            .verify_slice(tag)
            .map_err(|_| TokenError::NotForThisInstance)?;
        if now_ms >= expiry {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn mac(&self, expiry: u64, instance_id: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(DOMAIN);
        mac.update(&expiry.to_be_bytes());
        mac.update(instance_id.as_bytes());
        mac
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

/// The value of `X-aws-ec2-metadata-token-ttl-seconds`: decimal digits only, 1..=21600.
pub(crate) fn parse_ttl(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 8 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ttl: u32 = std::str::from_utf8(value).ok()?.parse().ok()?;
    (1..=MAX_TTL_SECS).contains(&ttl).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_token_is_valid_for_its_instance_until_expiry() {
        let key = TokenKey::random();
        let token = key.issue("i-1", 10, 5_000);
        assert_eq!(token.len(), TOKEN_CHARS);
        assert_eq!(key.validate(&token, "i-1", 5_000), Ok(()));
        assert_eq!(key.validate(&token, "i-1", 14_999), Ok(()));
        assert_eq!(key.validate(&token, "i-1", 15_000), Err(TokenError::Expired));
        assert_eq!(key.validate(&token, "i-2", 5_000), Err(TokenError::NotForThisInstance));
    }

    #[test]
    fn another_process_key_refuses_the_token() {
        let token = TokenKey::random().issue("i-1", 60, 0);
        assert_eq!(
            TokenKey::random().validate(&token, "i-1", 0),
            Err(TokenError::NotForThisInstance)
        );
    }

    #[test]
    fn a_later_expiry_cannot_be_forged() {
        let key = TokenKey::random();
        let token = key.issue("i-1", 1, 0);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[0] ^= 0x01;
        let forged = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(key.validate(&forged, "i-1", 0), Err(TokenError::NotForThisInstance));
    }

    #[test]
    fn ttl_header_values() {
        assert_eq!(parse_ttl(b"21600"), Some(21_600));
        assert_eq!(parse_ttl(b"1"), Some(1));
        assert_eq!(parse_ttl(b"0060"), Some(60));
        for bad in [
            &b""[..],
            b"0",
            b"21601",
            b"-1",
            b"+5",
            b" 5",
            b"5s",
            b"1e3",
            b"99999999999",
        ] {
            assert_eq!(parse_ttl(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn debug_shows_no_key() {
        assert_eq!(format!("{:?}", TokenKey::random()), "TokenKey(***)");
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_validate(token in any::<String>(), id in "[a-z0-9-]{0,20}") {
            let key = TokenKey::random();
            prop_assert!(key.validate(&token, &id, 0).is_err());
        }

        #[test]
        fn token_shaped_strings_never_validate(token in "[A-Za-z0-9_-]{54}") {
            let key = TokenKey::random();
            prop_assert!(key.validate(&token, "i-1", 0).is_err());
        }

        #[test]
        fn arbitrary_ttl_bytes_never_panic(value in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Some(ttl) = parse_ttl(&value) {
                prop_assert!((1..=MAX_TTL_SECS).contains(&ttl));
            }
        }
    }
}
