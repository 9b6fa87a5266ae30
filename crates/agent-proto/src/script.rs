//! A script run as delivered to the agent.

use std::fmt;

use stratus_types::run::Phase;
use stratus_types::script::Frequency;
use stratus_types::{Name, RunId};

use crate::{EnvValue, EnvVar};

/// One execution of one script on this server: everything the agent needs to run it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRun {
    /// Unique per execution. The agent runs a given run id at most once.
    pub run: RunId,
    /// The script's name, for logs and the agent's journal.
    pub name: Name,
    /// The script's text, run as an executable file (its `#!` line chooses the interpreter).
    pub body: String,
    /// Inputs as environment variables, in order. Secret values are masked in the output.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Kill the process after this many seconds; `None` means no limit (operational runs
    /// default to none; the control plane always bounds decommission runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    pub phase: Phase,
    /// For boot runs: `per-instance` runs are recorded by name in the agent's journal, and a
    /// later boot list naming a script that already succeeded on this instance is answered with
    /// outcome `skipped` (a guard against a control plane restored from an old backup).
    pub frequency: Frequency,
}

impl ScriptRun {
    /// The secret values among the run's environment, for a [`crate::Masker`].
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.env.iter().filter_map(|v| match &v.value {
            EnvValue::Secret(s) => Some(s.expose()),
            _ => None,
        })
    }
}

/// `Debug` shows the body's size, not its text; secret values print as `***`.
impl fmt::Debug for ScriptRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptRun")
            .field("run", &self.run)
            .field("name", &self.name)
            .field("body_bytes", &self.body.len())
            .field("env", &self.env)
            .field("timeout_secs", &self.timeout_secs)
            .field("phase", &self.phase)
            .field("frequency", &self.frequency)
            .finish()
    }
}
