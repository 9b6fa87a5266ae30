//! Scripts: the recipes that turn a stock image into a working server.

use crate::input::InputDecl;
use crate::name::truncate;
use crate::{FieldError, Invalid, Name, ScriptId};
use chrono::{DateTime, Utc};

pub const SCRIPT_BODY_MAX: usize = 1024 * 1024;
pub const INPUTS_MAX: usize = 128;

/// Script names with this prefix are the control plane's own (`stratus-deploy`).
pub const RESERVED_PREFIX: &str = "stratus-";

/// When a script runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Frequency {
    /// Once in an instance's life (again after a rebundle, since that is a new instance). Such
    /// a script must be idempotent: on a rebundled image it finds its work (partly) done.
    PerInstance,
    /// Once per image: like `per-instance`, but skipped on an instance booted from a rebundled
    /// image whose source server ran this very script (same body, inputs and frequency) to
    /// the end. The heavy steps (building, unpacking) belong here.
    PerImage,
    /// On every boot, including reboots.
    EveryBoot,
    /// Only when somebody runs it.
    OnDemand,
}

/// A script and what it declares.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Script {
    pub id: ScriptId,
    /// Counts up on every change.
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: ScriptSpec,
}

/// What a user gives to create or update a script.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptSpec {
    pub name: Name,
    #[serde(default)]
    pub description: String,
    pub body: String,
    #[serde(default)]
    pub inputs: Vec<InputDecl>,
    #[serde(default = "on_demand")]
    pub frequency: Frequency,
}

impl ScriptSpec {
    /// What decides whether a run of this script on one server is worth as much as on another:
    /// SHA-256 (hex) over its body, inputs and frequency. A rebundled image records it for the
    /// per-image scripts it has baked in.
    pub fn body_hash(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"stratus-script-v1\0");
        h.update(serde_json::to_vec(&(&self.body, &self.inputs, self.frequency)).unwrap_or_default());
        hex::encode(h.finalize())
    }
}

fn on_demand() -> Frequency {
    Frequency::OnDemand
}

impl ScriptSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if self.name.as_str().starts_with(RESERVED_PREFIX) {
            errs.push(FieldError::new(
                "name",
                format!("names starting with {RESERVED_PREFIX:?} are reserved for built-in scripts"),
            ));
        }
        if self.body.trim().is_empty() {
            errs.push(FieldError::new("body", "is empty"));
        }
        if self.body.len() > SCRIPT_BODY_MAX {
            errs.push(FieldError::new(
                "body",
                format!("is {} bytes; the limit is {SCRIPT_BODY_MAX}", self.body.len()),
            ));
        }
        if self.body.contains('\0') {
            errs.push(FieldError::new("body", "contains a NUL byte"));
        }
        if self.description.len() > 4096 {
            errs.push(FieldError::new("description", "is longer than 4096 bytes"));
        }
        if self.inputs.len() > INPUTS_MAX {
            errs.push(FieldError::new(
                "inputs",
                format!("{} inputs; the limit is {INPUTS_MAX}", self.inputs.len()),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.inputs.iter().enumerate() {
            if let Err(e) = d.validate() {
                errs.absorb(&format!("inputs[{i}]"), e);
            }
            if !seen.insert(&d.name) {
                errs.push(FieldError::new(
                    format!("inputs[{i}].name"),
                    format!("{} is declared twice", truncate(&d.name)),
                ));
            }
        }
        errs.into_result()
    }
}
