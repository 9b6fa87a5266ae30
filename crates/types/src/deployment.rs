//! Deployments: named groups of servers and arrays with shared inputs.

use crate::input::Inputs;
use crate::{DeploymentId, FieldError, Invalid, Name};
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub name: Name,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Where its servers launch unless they say otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Name>,
    /// Input values for every server of the deployment (override template inputs).
    #[serde(default)]
    pub inputs: Inputs,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    pub id: DeploymentId,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(flatten)]
    pub spec: DeploymentSpec,
}

impl DeploymentSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        if self.description.len() > 4096 {
            errs.push(FieldError::new("description", "is longer than 4096 bytes"));
        }
        if self.inputs.len() > crate::script::INPUTS_MAX {
            errs.push(FieldError::new("inputs", "too many inputs"));
        }
        errs.into_result()
    }
}
