//! # Stratus instance metadata service
//!
//! An EC2-compatible instance metadata service (IMDS). Instances launched by the local cloud
//! driver reach it at `169.254.169.254` (the driver routes that address to the listener given
//! to [`serve`]) and run unmodified EC2 clients against it: cloud-init's `DataSourceEc2`,
//! botocore / the AWS CLI (`InstanceMetadataFetcher`, `InstanceMetadataRegionFetcher`),
//! afterburn, `ec2-metadata` scripts and `curl`.
//!
//! ## A request, step by step
//!
//! ```text
//!  TCP peer ──► hyper http1 (half-close ok, 10 s head timeout; ConnectInfo = peer) ──► service::handle
//!                 1. bound the head: URI ≤ 4 KiB (else 414), headers ≤ 16 KiB (else 431)
//!                 2. PUT /latest/api/token ─► token.rs: X-Forwarded-For → 403,
//!                                             bad TTL → 400, unknown peer → 403, else token,
//!                                             sent with IP TTL = the PUT response hop limit
//!                    GET / HEAD anything else:
//!                 3. MetadataSource::lookup(peer ip)     unknown → 403 (plain text)
//!                 4. token check (token.rs)              bad/expired/other instance → 401,
//!                                                        none but tokens_required → 401
//!                 5. path.rs: split, percent-decode      undecodable → 404
//!                 6. tree.rs: resolve in the tree built from this instance's metadata
//!                    directory + "/" → listing · directory without "/" → 301 to "…/"
//!                    leaf (with or without "/") → value · nothing there → 404
//!    other methods → 405 with `Allow`
//! ```
//!
//! The instance is decided by the TCP peer address alone, never by anything the caller sends
//! (`X-Forwarded-For`, `Host`), and the [`MetadataSource`] is asked on every request, so a moved
//! elastic IP, a changed tag or a terminated instance shows at once. Listings are derived from
//! the same tree as the values, so a listing never names a path that 404s.
//!
//! ## EC2 behaviours mirrored (and where we differ)
//!
//! * `GET /` lists EC2's dated versions and `latest`; every dated version is served exactly
//!   like `latest` (EC2 hides categories newer than the version; clients that pin an old
//!   version only ever ask for old categories, so showing more harms no one).
//! * Listings are newline-separated without a trailing newline; sub-directories end in `/`;
//!   `public-keys/` lists `0=<name>` and the key is at `public-keys/0/openssh-key`.
//! * A directory requested without its trailing slash answers `301` with
//!   `Location: <path>/` (EC2 does this, e.g. for `iam/security-credentials`; libraries rely
//!   on it). The location is path-only (a relative reference) rather than
//!   `http://169.254.169.254/…`, so it also works when the service is reached at another
//!   address. A leaf requested *with* a trailing slash returns its value: botocore's region
//!   fetcher asks for `meta-data/placement/availability-zone/`.
//! * `404` carries EC2's XHTML "404 - Not Found" page (`text/html`), `401` and `400` their
//!   EC2 counterparts; leaves and listings are `text/plain`, user-data is
//!   `application/octet-stream`.
//! * Token responses leave with IP TTL (IPv6 hop limit) 1, EC2's default
//!   `HttpPutResponseHopLimit` ([`Imds::with_put_response_hop_limit`] changes it): a process one
//!   routed hop behind the instance (a container on a bridge inside it, a forwarding proxy)
//!   cannot get a token, as on EC2. The limit is set on the connection's socket before the
//!   token is written and stays for the rest of that connection; if it cannot be set, no token
//!   is given (500). Reads are not limited: with `tokens_required`, no token means no reads.
//! * IMDSv2: see `token.rs` for the token format and the status codes botocore relies on
//!   (`PUT` 403/404/405 mean "no IMDSv2, fall back"; 400 is an error).
//! * An unknown peer gets `403` with a plain-text explanation: EC2 uses 403 for "not allowed /
//!   IMDS turned off", and botocore treats 403 on the token `PUT` as "no IMDSv2" and then fails
//!   cleanly on the reads, where a 404 would suggest a wrong path.
//! * `hostname` and `local-hostname` are the instance's short hostname (EC2 serves its private
//!   DNS name; cloud-init uses the first label anyway). `public-hostname` is the elastic IP as a
//!   dotted quad: there is no public DNS name to give, and the address is what a client can
//!   reach. The account id (`owner-id`, `accountId`) is `000000000000`; `interface-id` and
//!   `reservation-id` are derived from the instance id (`eni-…`, `r-…`).
//! * Not served: `iam/` (no instance roles: botocore's credential fetch gets 404 and returns no
//!   credentials), `block-device-mapping/`, `events/`, `spot/`, `dynamic/fws/`, and the
//!   `pkcs7` / `rsa2048` identity signatures (see [`IdentityKey`]).
//!
//! Secrets: user-data and tokens are never logged; [`IdentityKey`]'s `Debug` shows only the
//! public key.

mod identity;
mod path;
mod service;
mod token;
mod tree;

pub use identity::{IdentityDocument, IdentityKey, IdentityVerifier};
pub use service::{DEFAULT_PUT_RESPONSE_HOP_LIMIT, Imds, serve};

use std::net::{IpAddr, Ipv4Addr};

/// Everything the service says about one instance. The caller (the local cloud driver) owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `instance-id`, e.g. `i-0123456789abcdef0`.
    pub instance_id: String,
    /// `ami-id`.
    pub image_id: String,
    /// `instance-type`: the size name.
    pub instance_type: String,
    /// Short hostname (a DNS label), served as `hostname` and `local-hostname`.
    pub hostname: String,
    /// `local-ipv4`, the instance's private address.
    pub local_ipv4: Ipv4Addr,
    /// The elastic IP when one is associated: `public-ipv4`, `public-hostname`.
    pub public_ipv4: Option<Ipv4Addr>,
    /// `mac`, e.g. `02:00:0a:4d:00:05`; also the key under `network/interfaces/macs/`.
    pub mac: String,
    /// `subnet-ipv4-cidr-block`, e.g. `10.77.0.0/24`.
    pub subnet_cidr: String,
    /// `placement/region`.
    pub region: String,
    /// `placement/availability-zone`.
    pub availability_zone: String,
    /// `(key name, OpenSSH public key line)`, served under `public-keys/` in this order.
    pub public_keys: Vec<(String, String)>,
    /// `(key, value)`, exposed under `tags/instance/`. Keys that cannot be a path segment
    /// (empty, `.`, `..`, or containing `/`, which EC2 also refuses for metadata tags) are
    /// left out; of duplicate keys the first wins.
    pub tags: Vec<(String, String)>,
    /// Served raw at `user-data`; `None` makes `user-data` 404 and drops it from `latest/`.
    pub user_data: Option<Vec<u8>>,
    /// `pendingTime` of the identity document.
    pub launched_at: chrono::DateTime<chrono::Utc>,
    /// EC2's `HttpTokens=required`: plain IMDSv1 GETs get 401.
    pub tokens_required: bool,
}

/// Who is asking: the driver maps the TCP peer address (never anything the caller claims) to an
/// instance. Called on every request, so keep it quick (a map lookup under a lock).
pub trait MetadataSource: Send + Sync + 'static {
    /// The instance whose address is `peer`, if any. IPv4-mapped IPv6 peers are passed as IPv4.
    fn lookup(&self, peer: IpAddr) -> Option<InstanceMetadata>;
}

/// What went wrong verifying an instance-identity document.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The verifier's public key could not be read.
    #[error(
        "the identity public key is not valid: {reason}; expected the standard base64 of 32 \
         bytes, as printed by IdentityVerifier::public_key_base64"
    )]
    InvalidPublicKey {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The signature is malformed or does not match the document bytes.
    #[error(
        "the instance-identity signature is not valid: {reason}; fetch the document and its \
         signature again from dynamic/instance-identity/ and send both unchanged"
    )]
    InvalidSignature {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The signature is valid but the signed bytes are not an identity document.
    #[error("the signed bytes are not an EC2 instance-identity document")]
    InvalidDocument(#[source] serde_json::Error),
}
