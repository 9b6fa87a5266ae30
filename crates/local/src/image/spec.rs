//! What a debootstrap image is built from, its validation and its cache key.

use sha2::{Digest, Sha256};

use super::ImageError;

/// Bumped whenever post-processing (see the `image` module docs) changes, so images built by an
/// older Stratus get a new cache key and are rebuilt instead of reused.
pub const IMAGE_FORMAT: u32 = 1;

/// Debian 12.
pub const DEFAULT_SUITE: &str = "bookworm";
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_VARIANT: &str = "minbase";

/// What the example deployment (HAProxy in front of nginx app servers, see
/// `examples/quickstart.toml`) needs on top of minbase, so its boot scripts find everything
/// installed and never run `apt-get` at boot:
///
/// - `nginx`, `haproxy`: the services themselves.
/// - `openssh-server`: `login_user = "root"` logins (host keys are made per instance).
/// - `procps`: `ps`, used by the `show-status` script, and `pkill`/`top` for operators (and
///   the agent ends a revoked user's sessions with `pkill`).
/// - `sudo`: managed SSH's `server_superuser` role (passwordless sudo).
/// - `iproute2`: `ip`, to look at an instance's network (nginx depends on it anyway).
/// - `curl` + `ca-certificates`: health checks and fetching things over https from scripts.
/// - `netcat-openbsd` (~100 KB): `nc -z` port checks in scripts.
///
/// Left out on purpose: `python3-minimal` (~20 MB with libpython; no script or agent needs it),
/// `systemd`/`dbus` (the instance init is not systemd), editors and docs.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "ca-certificates",
    "curl",
    "haproxy",
    "iproute2",
    "netcat-openbsd",
    "nginx",
    "openssh-server",
    "procps",
    "sudo",
];

/// At most this many packages in [`BuildSpec::packages`].
pub const MAX_PACKAGES: usize = 200;
/// The debootstrap variants a spec may ask for. The default variant (`-`) is refused because it
/// adds `Priority: important` packages, systemd among them, which the instance init does not use.
pub const VARIANTS: &[&str] = &["minbase", "buildd"];

/// What to build. `Default` is Debian 12 (bookworm) minbase from deb.debian.org with
/// [`DEFAULT_PACKAGES`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildSpec {
    /// Debian suite or codename, e.g. `bookworm`.
    pub suite: String,
    /// http(s) URL of a Debian mirror.
    pub mirror: String,
    /// debootstrap `--variant`: one of [`VARIANTS`].
    pub variant: String,
    /// Extra packages (`--include`); order and duplicates do not matter.
    pub packages: Vec<String>,
}

impl Default for BuildSpec {
    fn default() -> Self {
        BuildSpec {
            suite: DEFAULT_SUITE.to_owned(),
            mirror: DEFAULT_MIRROR.to_owned(),
            variant: DEFAULT_VARIANT.to_owned(),
            packages: DEFAULT_PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

impl BuildSpec {
    /// Checks every field strictly: the values end up on debootstrap's command line (which is a
    /// shell script), so anything that is not plainly a suite, URL or package name is refused.
    pub fn validate(&self) -> Result<(), ImageError> {
        check_suite(&self.suite)?;
        check_mirror(&self.mirror)?;
        if !VARIANTS.contains(&self.variant.as_str()) {
            return Err(invalid(
                "variant",
                format!("{:?} is not one of {VARIANTS:?}", self.variant),
            ));
        }
        if self.packages.len() > MAX_PACKAGES {
            let problem = format!("{} packages; at most {MAX_PACKAGES} are allowed", self.packages.len());
            return Err(invalid("packages", problem));
        }
        self.packages.iter().try_for_each(|p| check_package(p))
    }

    /// The packages as debootstrap gets them: sorted, without duplicates.
    pub fn normalized_packages(&self) -> Vec<String> {
        let mut packages = self.packages.clone();
        packages.sort();
        packages.dedup();
        packages
    }

    /// The cache key: hex SHA-256 over a canonical JSON form (format version, suite, mirror
    /// without trailing `/`, variant, sorted deduplicated packages). Two specs with the same key
    /// build the same image.
    pub fn cache_key(&self) -> String {
        let canonical = serde_json::json!({
            "format": IMAGE_FORMAT,
            "suite": self.suite,
            "mirror": self.mirror.trim_end_matches('/'),
            "variant": self.variant,
            "packages": self.normalized_packages(),
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

fn invalid(field: &'static str, problem: String) -> ImageError {
    ImageError::InvalidSpec { field, problem }
}

fn check_suite(suite: &str) -> Result<(), ImageError> {
    let ok = (1..=64).contains(&suite.len())
        && suite.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && suite
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        return Ok(());
    }
    let problem = format!("{suite:?} is not a suite name (lowercase letters, digits and '-', e.g. \"bookworm\")");
    Err(invalid("suite", problem))
}

fn check_mirror(mirror: &str) -> Result<(), ImageError> {
    let rest = mirror
        .strip_prefix("http://")
        .or_else(|| mirror.strip_prefix("https://"));
    let problem = match rest {
        None => "must start with http:// or https://",
        Some(_) if mirror.len() > 512 => "is longer than 512 characters",
        Some(rest) if rest.is_empty() || rest.starts_with('/') => "has no host",
        Some(_)
            if !mirror
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~:/%+@[]".contains(c)) =>
        {
            "contains characters that do not belong in a mirror URL (whitespace, quotes or shell metacharacters)"
        }
        Some(_) => return Ok(()),
    };
    Err(invalid("mirror", format!("{mirror:?} {problem}")))
}

/// Debian policy 5.6.1: lowercase letters, digits, `+`, `-`, `.`; at least two characters;
/// starting with a letter or digit (so a name can never be taken for an option).
fn check_package(name: &str) -> Result<(), ImageError> {
    let ok = (2..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    if ok {
        return Ok(());
    }
    let problem =
        format!("{name:?} is not a Debian package name (at least 2 of a-z 0-9 + . -, starting with a letter or digit)");
    Err(invalid("packages", problem))
}
