//! Hard limits on frames and on the values in them. A frame that breaks one is refused whole.
//!
//! The two directions have different frame limits. The control plane holds thousands of agent
//! connections and must not let one hostile agent make it buffer much: an agent frame is at most
//! 1 MiB, and the WebSocket server should be configured with the same maximum message size so a
//! larger frame is refused before it is buffered. A control-plane frame carries script bodies
//! (up to [`stratus_types::script::SCRIPT_BODY_MAX`], 1 MiB, each) and a boot list of several
//! scripts, so it may be larger; the agent trusts the control plane it authenticated, and the
//! limit only bounds the damage of a broken one. [`crate::encode_control`] refuses to build a
//! frame the agent would refuse, so an oversized boot list is an error where it is made.

/// Largest frame an agent may send, in bytes.
pub const MAX_AGENT_FRAME: usize = 1024 * 1024;
/// Largest frame the control plane may send, in bytes.
pub const MAX_CONTROL_FRAME: usize = 16 * 1024 * 1024;
/// Largest `data` of one `Output` message, in bytes.
pub const MAX_OUTPUT_DATA: usize = 64 * 1024;
/// Largest short string: `agent_version`, `boot_id`, an environment variable name.
pub const MAX_NAME: usize = 255;
/// Largest message for a person: `error`, `Refused.message`, `RequestFailed.message`.
pub const MAX_MESSAGE: usize = 4 * 1024;
/// Largest script body, in bytes (the same as a stored script's).
pub const MAX_BODY: usize = stratus_types::script::SCRIPT_BODY_MAX;
/// Most environment variables of one run.
pub const MAX_ENV: usize = 256;
/// Largest environment value, in bytes (the same as a text input's or a credential's).
pub const MAX_ENV_VALUE: usize = stratus_types::input::TEXT_MAX;
/// Largest tag selector of a `TagQuery`, as printed, in bytes.
pub const MAX_SELECTOR: usize = 4 * 1024;
/// Most tags in one message (a server's tags, or one `TagChange`'s `add` plus `remove`).
pub const MAX_TAGS: usize = 256;
/// Most run ids in `Hello.unacked` and `Welcome.resume`.
pub const MAX_RUNS: usize = 4096;
/// Most runs in one boot list.
pub const MAX_BOOT_RUNS: usize = 256;
/// Most protocol versions a `Hello` may offer.
pub const MAX_VERSIONS: usize = 16;
/// Most servers in one `TagQueryResult`.
pub const MAX_PEERS: usize = 1000;
/// Most managed files in one desired state.
pub const MAX_FILES: usize = 16;
/// Largest managed file, in bytes.
pub const MAX_FILE_CONTENT: usize = 1024 * 1024;
/// Largest artifact URL, in bytes.
pub const MAX_URL: usize = 8 * 1024;
/// Largest shell command of a managed file (`check`, `reload`), in bytes.
pub const MAX_COMMAND: usize = 4 * 1024;
/// Most login accounts in one desired state.
pub const MAX_ACCOUNTS: usize = 1000;
/// Most keys of one login account.
pub const MAX_ACCOUNT_KEYS: usize = 32;
/// Largest `authorized_keys` line, in bytes.
pub const MAX_KEY_LINE: usize = 8 * 1024;
/// Heartbeat intervals a `Welcome` may set, in seconds.
pub const HEARTBEAT_SECS: std::ops::RangeInclusive<u32> = 1..=3600;
/// Most secret values one `PrepareImage` carries.
pub const MAX_SECRETS: usize = 256;
/// Most paths or lines in an `ImagePrepared` list.
pub const MAX_PREPARED_LINES: usize = 64;
