//! Where the CLI finds the control plane and its token.
//!
//! Order: `--url`/`--token` (or `STRATUS_URL`/`STRATUS_TOKEN`), then the file `stratus login`
//! writes (`$XDG_CONFIG_HOME/stratus/cli.toml`, mode 0600), then for a control plane on this
//! machine the first admin's token in the data directory.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;

pub const DEFAULT_URL: &str = "http://127.0.0.1:7400";

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub url: Option<String>,
    pub token: Option<String>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

pub fn config_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME").map_or_else(|| home().join(".config"), PathBuf::from);
    base.join("stratus").join("cli.toml")
}

/// Where `stratus user add-key --generate` keeps the private key it made for `user`.
pub fn ssh_key_file(user: &str) -> PathBuf {
    config_file().with_file_name("ssh").join(format!("{user}_ed25519"))
}

/// The default data directory: `$XDG_DATA_HOME/stratus` or `~/.local/share/stratus`.
pub fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME").map_or_else(|| home().join(".local/share"), PathBuf::from);
    base.join("stratus")
}

pub fn load() -> anyhow::Result<Saved> {
    let path = config_file();
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{} is not a valid CLI config", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn save(saved: &Saved) -> anyhow::Result<PathBuf> {
    let path = config_file();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(saved)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}
