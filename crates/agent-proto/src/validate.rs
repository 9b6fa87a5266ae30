//! What a well-formed message must hold beyond its JSON shape. Both decoding and encoding check
//! it, so neither side sends what the other would refuse. Errors name the field and the problem,
//! never a value (a value may be a secret, or a megabyte).

use std::collections::BTreeSet;

use stratus_types::RunId;
use stratus_types::run::Phase;
use stratus_types::tag::Tag;

use crate::limits::*;
use crate::{AgentMessage, ControlMessage, EnvValue, Generation, Hello, Outcome, Output, RunFinished, ScriptRun};
use crate::{DesiredState, PeerServer, ProtoError, Welcome};

type Checked = Result<(), ProtoError>;

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ProtoError {
    ProtoError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A short, single-line string: 1..=`max` bytes, no control characters.
fn short(field: &str, s: &str, max: usize) -> Checked {
    if s.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if s.len() > max {
        return Err(invalid(field, format!("is {} bytes; the limit is {max}", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "contains a control character"));
    }
    Ok(())
}

/// Free text: at most `max` bytes, no NUL.
fn text(field: &str, s: &str, max: usize) -> Checked {
    if s.len() > max {
        return Err(invalid(field, format!("is {} bytes; the limit is {max}", s.len())));
    }
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

fn count(field: &str, n: usize, max: usize) -> Checked {
    if n > max {
        return Err(invalid(field, format!("has {n} entries; the limit is {max}")));
    }
    Ok(())
}

fn distinct_runs<'a>(field: &str, runs: impl Iterator<Item = &'a RunId>) -> Checked {
    let mut seen = BTreeSet::new();
    for (i, run) in runs.enumerate() {
        if !seen.insert(run) {
            return Err(invalid(format!("{field}[{i}]"), "repeats a run id"));
        }
    }
    Ok(())
}

fn generation(field: &str, g: Generation) -> Checked {
    if g == Generation::NONE {
        return Err(invalid(field, "must be at least 1"));
    }
    Ok(())
}

/// An environment variable name: an ASCII letter or `_`, then letters, digits and `_`.
fn env_name(field: &str, s: &str) -> Checked {
    short(field, s, MAX_NAME)?;
    let ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(
            field,
            "is not a variable name (a letter or '_', then letters, digits, '_')",
        ));
    }
    Ok(())
}

fn tags(field: &str, list: &[Tag]) -> Checked {
    count(field, list.len(), MAX_TAGS)
}

impl AgentMessage {
    /// Check the limits and rules a decoded message must also satisfy.
    pub fn validate(&self) -> Checked {
        match self {
            Self::Hello(h) => h.validate(),
            Self::Heartbeat { .. } | Self::RunStarted { .. } => Ok(()),
            Self::Applied { generation: g } => generation("generation", *g),
            Self::Output(o) => o.validate(),
            Self::RunFinished(f) => f.validate(),
            Self::TagChange { add, remove, .. } => {
                if add.is_empty() && remove.is_empty() {
                    return Err(invalid("add", "nothing to add or remove"));
                }
                count("add", add.len() + remove.len(), MAX_TAGS)?;
                match add.iter().position(|t| remove.contains(t)) {
                    Some(i) => Err(invalid(format!("add[{i}]"), "is also in remove")),
                    None => Ok(()),
                }
            }
            Self::Access { user, from, .. } => {
                if !crate::account_name_ok(user) {
                    return Err(invalid("user", "is not a Unix account name"));
                }
                match from {
                    Some(f) => short("from", f, MAX_NAME),
                    None => Ok(()),
                }
            }
            Self::FileStatus {
                path, sha256, error, ..
            } => {
                managed_path("path", path)?;
                sha256_hex("sha256", sha256)?;
                match error {
                    Some(e) => text("error", e, MAX_MESSAGE),
                    None => Ok(()),
                }
            }
            Self::ImagePrepared(p) => p.validate(),
            Self::TagQuery { selector, .. } => {
                let len = selector.to_string().len();
                if len > MAX_SELECTOR {
                    return Err(invalid(
                        "selector",
                        format!("is {len} bytes; the limit is {MAX_SELECTOR}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Hello {
    pub fn validate(&self) -> Checked {
        if self.versions.is_empty() {
            return Err(invalid("versions", "is empty; offer at least one protocol version"));
        }
        count("versions", self.versions.len(), MAX_VERSIONS)?;
        if self.versions.contains(&0) {
            return Err(invalid("versions", "0 is not a protocol version"));
        }
        short("agent_version", &self.agent_version, MAX_NAME)?;
        short("boot_id", &self.boot_id, MAX_NAME)?;
        count("unacked", self.unacked.len(), MAX_RUNS)?;
        distinct_runs("unacked", self.unacked.iter())
    }
}

impl Output {
    pub fn validate(&self) -> Checked {
        if self.data.is_empty() {
            return Err(invalid("data", "is empty"));
        }
        text("data", &self.data, MAX_OUTPUT_DATA)
    }
}

impl RunFinished {
    pub fn validate(&self) -> Checked {
        match (self.outcome, self.exit_code, self.signal) {
            (Outcome::Exited, None, _) => return Err(invalid("exit_code", "is required when the process exited")),
            (Outcome::Exited, _, Some(_)) => return Err(invalid("signal", "is set but the process exited")),
            (Outcome::Signalled, _, None) => return Err(invalid("signal", "is required when signalled")),
            (o, Some(_), _) if o != Outcome::Exited => {
                return Err(invalid("exit_code", "is set but the process did not exit"));
            }
            _ => {}
        }
        if let Some(s) = self.signal
            && !(1..=64).contains(&s)
        {
            return Err(invalid("signal", format!("{s} is not a signal number (1-64)")));
        }
        match &self.error {
            None if self.outcome == Outcome::FailedToStart => {
                return Err(invalid("error", "is required when the run failed to start"));
            }
            Some(e) => text("error", e, MAX_MESSAGE)?,
            None => {}
        }
        let max_bytes = self.output_chunks.saturating_mul(MAX_OUTPUT_DATA as u64);
        if self.output_bytes < self.output_chunks || self.output_bytes > max_bytes {
            return Err(invalid(
                "output_bytes",
                format!(
                    "{} bytes cannot be {} chunks of output",
                    self.output_bytes, self.output_chunks
                ),
            ));
        }
        Ok(())
    }
}

impl ControlMessage {
    /// Check the limits and rules a decoded message must also satisfy.
    pub fn validate(&self) -> Checked {
        match self {
            Self::Welcome(w) => w.validate(),
            Self::Refused(r) => text("message", &r.message, MAX_MESSAGE),
            Self::DesiredState(d) => d.validate(),
            Self::RunScript(s) => {
                if s.phase == Phase::Boot {
                    return Err(invalid(
                        "phase",
                        "boot runs come in the desired state, not as run_script",
                    ));
                }
                s.validate()
            }
            Self::Cancel { .. } | Self::AckOutput { .. } | Self::AckFinished { .. } | Self::Heartbeat { .. } => Ok(()),
            Self::TagChangeResult { tags: t, .. } => tags("tags", t),
            Self::TagQueryResult { servers, .. } => {
                count("servers", servers.len(), MAX_PEERS)?;
                servers.iter().enumerate().try_for_each(|(i, s)| s.validate(i))
            }
            Self::RequestFailed { message, .. } => text("message", message, MAX_MESSAGE),
            Self::PrepareImage(p) => {
                count("secrets", p.secrets.len(), MAX_SECRETS)?;
                for (i, v) in p.secrets.iter().enumerate() {
                    let at = format!("secrets[{i}]");
                    if v.expose().is_empty() {
                        return Err(invalid(at, "is empty"));
                    }
                    text(&at, v.expose(), MAX_ENV_VALUE)?;
                }
                Ok(())
            }
        }
    }
}

impl crate::ImagePrepared {
    pub fn validate(&self) -> Checked {
        if let Some(e) = &self.error {
            text("error", e, MAX_MESSAGE)?;
        }
        count("secret_found_in", self.secret_found_in.len(), MAX_PREPARED_LINES)?;
        for (i, p) in self.secret_found_in.iter().enumerate() {
            short(&format!("secret_found_in[{i}]"), p, MAX_URL)?;
        }
        count("removed", self.removed.len(), MAX_PREPARED_LINES)?;
        for (i, l) in self.removed.iter().enumerate() {
            short(&format!("removed[{i}]"), l, MAX_NAME)?;
        }
        if self.error.is_none() && !self.secret_found_in.is_empty() {
            return Err(invalid(
                "secret_found_in",
                "is set, but error is not: a secret found refuses the preparation",
            ));
        }
        Ok(())
    }
}

impl Welcome {
    pub fn validate(&self) -> Checked {
        if self.version == 0 {
            return Err(invalid("version", "0 is not a protocol version"));
        }
        if !HEARTBEAT_SECS.contains(&self.heartbeat_secs) {
            return Err(invalid(
                "heartbeat_secs",
                format!("must be {}-{}", HEARTBEAT_SECS.start(), HEARTBEAT_SECS.end()),
            ));
        }
        count("resume", self.resume.len(), MAX_RUNS)?;
        distinct_runs("resume", self.resume.iter().map(|r| &r.run))
    }
}

impl DesiredState {
    pub fn validate(&self) -> Checked {
        generation("generation", self.generation)?;
        count("boot", self.boot.len(), MAX_BOOT_RUNS)?;
        for (i, run) in self.boot.iter().enumerate() {
            if run.phase != Phase::Boot {
                return Err(invalid(format!("boot[{i}].phase"), "must be boot"));
            }
            run.validate().map_err(|e| e.within(&format!("boot[{i}]")))?;
        }
        distinct_runs("boot", self.boot.iter().map(|r| &r.run))?;
        tags("tags", &self.tags)?;
        count("files", self.files.len(), MAX_FILES)?;
        let mut paths = BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            managed_path(&format!("files[{i}].path"), &f.path)?;
            if !paths.insert(&f.path) {
                return Err(invalid(format!("files[{i}].path"), "is listed twice"));
            }
            text(&format!("files[{i}].content"), &f.content, MAX_FILE_CONTENT)?;
            if let Some(a) = &f.source {
                if !f.content.is_empty() {
                    return Err(invalid(
                        format!("files[{i}].content"),
                        "must be empty when source gives it",
                    ));
                }
                a.validate(&format!("files[{i}].source"))?;
            }
            if let Some(r) = f.recheck_secs
                && !(5..=86_400).contains(&r)
            {
                return Err(invalid(format!("files[{i}].recheck_secs"), "must be 5-86400"));
            }
            if f.mode > 0o777 {
                return Err(invalid(
                    format!("files[{i}].mode"),
                    "must be permission bits (at most 0777)",
                ));
            }
            for (name, cmd) in [("check", &f.check), ("reload", &f.reload)] {
                if let Some(c) = cmd {
                    text(&format!("files[{i}].{name}"), c, MAX_COMMAND)?;
                }
            }
        }
        if let Some(l) = &self.logins {
            count("logins.accounts", l.accounts.len(), MAX_ACCOUNTS)?;
            let mut names = BTreeSet::new();
            for (i, a) in l.accounts.iter().enumerate() {
                let field = format!("logins.accounts[{i}]");
                if !crate::account_name_ok(&a.name) {
                    return Err(invalid(format!("{field}.name"), "is not a Unix account name"));
                }
                if !names.insert(&a.name) {
                    return Err(invalid(format!("{field}.name"), "is listed twice"));
                }
                count(&format!("{field}.keys"), a.keys.len(), MAX_ACCOUNT_KEYS)?;
                for (j, k) in a.keys.iter().enumerate() {
                    short(&format!("{field}.keys[{j}]"), k, MAX_KEY_LINE)?;
                }
            }
        }
        Ok(())
    }
}

impl ScriptRun {
    pub fn validate(&self) -> Checked {
        if self.body.trim().is_empty() {
            return Err(invalid("body", "is empty"));
        }
        text("body", &self.body, MAX_BODY)?;
        if self.timeout_secs == Some(0) {
            return Err(invalid(
                "timeout_secs",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        count("env", self.env.len(), MAX_ENV)?;
        let mut names = BTreeSet::new();
        for (i, var) in self.env.iter().enumerate() {
            env_name(&format!("env[{i}].name"), &var.name)?;
            if !names.insert(&var.name) {
                return Err(invalid(format!("env[{i}].name"), "repeats a variable"));
            }
            let field = format!("env[{i}].value");
            match &var.value {
                EnvValue::Text(v) => text(&field, v, MAX_ENV_VALUE)?,
                EnvValue::Secret(v) => text(&field, v.expose(), MAX_ENV_VALUE)?,
                EnvValue::Instance(v) => env_name(&field, v)?,
                EnvValue::Artifact(a) => a.validate(&field)?,
            }
        }
        Ok(())
    }
}

impl crate::ArtifactRef {
    fn validate(&self, field: &str) -> Checked {
        text(&format!("{field}.url"), &self.url, MAX_URL)?;
        let url_ok = self.url.starts_with('/') || self.url.starts_with("http://") || self.url.starts_with("https://");
        if !url_ok || self.url.chars().any(char::is_whitespace) {
            return Err(invalid(
                format!("{field}.url"),
                "must be an http(s) URL or a path starting with '/'",
            ));
        }
        sha256_hex(&format!("{field}.sha256"), &self.sha256)?;
        short(&format!("{field}.name"), &self.name, MAX_NAME)?;
        if self.name.is_empty() || self.name == "." || self.name == ".." || self.name.contains(['/', '\0']) {
            return Err(invalid(
                format!("{field}.name"),
                "must be a file name (no '/', not '.' or '..')",
            ));
        }
        Ok(())
    }
}

fn managed_path(field: &str, p: &str) -> Checked {
    short(field, p, 4096)?;
    if !crate::absolute_path_ok(p) {
        return Err(invalid(
            field,
            "must be an absolute path without empty, '.' or '..' segments",
        ));
    }
    Ok(())
}

fn sha256_hex(field: &str, s: &str) -> Checked {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(field, "must be a SHA-256 in lower-case hex"));
    }
    Ok(())
}

impl PeerServer {
    fn validate(&self, i: usize) -> Checked {
        tags(&format!("servers[{i}].tags"), &self.tags)
    }
}
