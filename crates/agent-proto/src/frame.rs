//! Frames: one JSON text message per WebSocket frame, decoded strictly and within limits.
//!
//! Decoding checks, in order: the frame's size (before parsing anything), the JSON and the
//! message's shape (unknown `"type"`s and fields, wrong types, duplicate fields and nesting
//! deeper than serde_json's limit of 128 are refused), then the message's own rules
//! ([`AgentMessage::validate`], [`ControlMessage::validate`]). A refused frame is refused whole.
//!
//! Errors are for logs and for the peer, and the input is hostile: an error quotes at most
//! [`QUOTE_MAX`] characters of any value from the frame, and a [`ProtoError`] is at most a few
//! hundred bytes however large the frame was.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::limits::{MAX_AGENT_FRAME, MAX_CONTROL_FRAME};
use crate::{AgentMessage, ControlMessage};

/// The most characters of one quoted value an error repeats from a frame.
pub const QUOTE_MAX: usize = 32;
/// The most characters of a parser message an error keeps.
const MESSAGE_MAX: usize = 300;

/// Why a frame was refused (or could not be built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The frame is larger than the receiver accepts.
    #[error("the frame is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    /// Not JSON, or not a message of this protocol version. `line` and `column` are 0 when the
    /// parser cannot tell (a problem found after the message was buffered to read its `"type"`).
    #[error("malformed message{}: {problem}", position(*line, *column))]
    Malformed {
        line: usize,
        column: usize,
        problem: String,
    },
    /// A well-formed message that breaks a rule or a limit.
    #[error("invalid message: {field}: {problem}")]
    Invalid { field: String, problem: String },
}

fn position(line: usize, column: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" at line {line}, column {column}")
    }
}

impl ProtoError {
    /// The same error, for a field one level deeper: `prefix.field`.
    pub(crate) fn within(self, prefix: &str) -> Self {
        match self {
            Self::Invalid { field, problem } => Self::Invalid {
                field: format!("{prefix}.{field}"),
                problem,
            },
            other => other,
        }
    }
}

/// Decode a frame an agent sent.
pub fn decode_agent(frame: &str) -> Result<AgentMessage, ProtoError> {
    let msg: AgentMessage = decode(frame, MAX_AGENT_FRAME)?;
    msg.validate()?;
    Ok(msg)
}

/// Decode a frame the control plane sent.
pub fn decode_control(frame: &str) -> Result<ControlMessage, ProtoError> {
    let msg: ControlMessage = decode(frame, MAX_CONTROL_FRAME)?;
    msg.validate()?;
    Ok(msg)
}

/// Encode a message for the agent to send; refuses what the control plane would refuse.
pub fn encode_agent(msg: &AgentMessage) -> Result<String, ProtoError> {
    msg.validate()?;
    encode(msg, MAX_AGENT_FRAME)
}

/// Encode a message for the control plane to send; refuses what the agent would refuse (a boot
/// list too large for one frame is an error here, where it is made).
pub fn encode_control(msg: &ControlMessage) -> Result<String, ProtoError> {
    msg.validate()?;
    encode(msg, MAX_CONTROL_FRAME)
}

fn decode<T: DeserializeOwned>(frame: &str, max: usize) -> Result<T, ProtoError> {
    if frame.len() > max {
        return Err(ProtoError::TooLarge { len: frame.len(), max });
    }
    serde_json::from_str(frame).map_err(|e| malformed(&e))
}

fn encode<T: Serialize>(msg: &T, max: usize) -> Result<String, ProtoError> {
    let frame = serde_json::to_string(msg).map_err(|e| ProtoError::Invalid {
        field: String::new(),
        problem: format!("cannot be encoded: {}", shorten_quotes(&e.to_string())),
    })?;
    if frame.len() > max {
        return Err(ProtoError::TooLarge { len: frame.len(), max });
    }
    Ok(frame)
}

fn malformed(e: &serde_json::Error) -> ProtoError {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let problem = full.strip_suffix(&position).unwrap_or(&full);
    ProtoError::Malformed {
        line: e.line(),
        column: e.column(),
        problem: shorten_quotes(problem),
    }
}

/// Shorten every quoted span (`` `…` `` or `"…"`) of a parser message to [`QUOTE_MAX`]
/// characters, and the whole message to [`MESSAGE_MAX`]. Parser messages quote the offending
/// value, which may be a megabyte of hostile text.
fn shorten_quotes(message: &str) -> String {
    let mut out = String::new();
    let mut kept = 0;
    let mut push = |out: &mut String, c: char| {
        out.push(c);
        kept += 1;
        kept < MESSAGE_MAX
    };
    let mut open: Option<char> = None;
    let (mut quoted, mut escaped, mut cut) = (0, false, false);
    for c in message.chars() {
        let room = match open {
            None => {
                if c == '`' || c == '"' {
                    (open, quoted, escaped, cut) = (Some(c), 0, false, false);
                }
                push(&mut out, c)
            }
            Some(q) if c == q && !escaped => {
                open = None;
                (!cut || push(&mut out, '…')) && push(&mut out, c)
            }
            Some(q) => {
                escaped = q == '"' && c == '\\' && !escaped;
                quoted += 1;
                cut |= quoted > QUOTE_MAX;
                cut || push(&mut out, c)
            }
        };
        if !room {
            out.push('…');
            return out;
        }
    }
    if cut && open.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_shortened() {
        let long = "x".repeat(1000);
        let msg = format!("unknown field `{long}`, expected `a` or \"{long}\"");
        let short = shorten_quotes(&msg);
        assert!(short.len() < 150, "{short}");
        assert!(short.contains(&format!("`{}…`", "x".repeat(QUOTE_MAX))), "{short}");
        assert!(short.ends_with(&format!("\"{}…\"", "x".repeat(QUOTE_MAX))), "{short}");
        assert_eq!(shorten_quotes(r#"a "b\"c" d"#), r#"a "b\"c" d"#);
        assert!(shorten_quotes(&"y".repeat(5000)).chars().count() <= MESSAGE_MAX + 1);
    }
}
