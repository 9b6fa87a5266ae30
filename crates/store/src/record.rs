//! The backend-facing shapes: records, changes, queries.

use std::fmt;

use chrono::{DateTime, Utc};
use stratus_types::audit::AuditEntry;
use stratus_types::tag::{Selector, Tag};

/// Every kind of resource the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Cloud,
    Image,
    Script,
    Template,
    TemplateVersion,
    Deployment,
    Server,
    Array,
    Run,
    Credential,
    User,
    Token,
    Address,
    /// An enrolled instance agent (its credential's hash).
    Agent,
    /// One script started on many servers.
    Rollout,
    /// An artifact bucket.
    Bucket,
    /// An artifact object (its content is in the blob backend, by SHA-256).
    Object,
    /// A durable multi-step operation (replace, rebundle).
    Operation,
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::Cloud,
        Kind::Image,
        Kind::Script,
        Kind::Template,
        Kind::TemplateVersion,
        Kind::Deployment,
        Kind::Server,
        Kind::Array,
        Kind::Run,
        Kind::Credential,
        Kind::User,
        Kind::Token,
        Kind::Address,
        Kind::Agent,
        Kind::Rollout,
        Kind::Bucket,
        Kind::Object,
        Kind::Operation,
    ];

    /// The kind stored under this name.
    pub fn parse(s: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cloud => "cloud",
            Kind::Image => "image",
            Kind::Script => "script",
            Kind::Template => "template",
            Kind::TemplateVersion => "template_version",
            Kind::Deployment => "deployment",
            Kind::Server => "server",
            Kind::Array => "array",
            Kind::Run => "run",
            Kind::Credential => "credential",
            Kind::User => "user",
            Kind::Token => "token",
            Kind::Address => "address",
            Kind::Agent => "agent",
            Kind::Rollout => "rollout",
            Kind::Bucket => "bucket",
            Kind::Object => "object",
            Kind::Operation => "operation",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: Kind,
    pub id: String,
    /// What the name is unique within: `""` for global kinds, the deployment for servers.
    pub scope: String,
    pub name: String,
    /// Names are unique among live records only.
    pub live: bool,
    /// A queryable state (`operational`, `succeeded`).
    pub state: Option<String>,
    pub revision: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Indexed for selector queries on write; empty on records read back (the typed value
    /// holds them).
    pub tags: Vec<Tag>,
    pub body: serde_json::Value,
}

/// An encrypted value (XChaCha20-Poly1305; see the server's `crypto` module).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes, key {})", self.ciphertext.len(), self.key_id)
    }
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Change {
    /// Insert (`expect: None`: must not exist) or replace (`expect: Some(rev)`: the stored
    /// revision must be `rev`). The record's own `revision` is what gets stored.
    Put {
        record: Record,
        expect: Option<u32>,
    },
    /// Remove; the stored revision must be `expect`.
    Delete {
        kind: Kind,
        id: String,
        expect: u32,
    },
    PutSealed {
        id: String,
        sealed: Sealed,
    },
    DeleteSealed {
        id: String,
    },
    Audit(AuditEntry),
    /// Chunk `seq` of run `run`'s output, into the run-output table (append-only, beside the
    /// run's record, so a chunk never rewrites the run). Kept at most once: a chunk already
    /// stored is ignored. The oldest chunks are dropped so that a run keeps at most
    /// [`OUTPUT_KEEP_BYTES`] in at most [`OUTPUT_KEEP_CHUNKS`] chunks.
    Output {
        run: String,
        seq: u64,
        data: String,
    },
}

/// Output bytes kept per run in the run-output table: the run's cap (its tail is what
/// matters), checked every [`OUTPUT_TRIM_EVERY`] chunks.
pub const OUTPUT_KEEP_BYTES: u64 = stratus_types::run::RUN_OUTPUT_MAX as u64;
/// Output chunks kept per run (an agent sending tiny chunks cannot make a run's output
/// a million rows).
pub const OUTPUT_KEEP_CHUNKS: u64 = 4096;
/// The oldest chunks beyond the caps are dropped when a chunk whose `seq` is a multiple of
/// this arrives (so the table may hold up to this many chunks more, briefly).
pub const OUTPUT_TRIM_EVERY: u64 = 32;

/// One stored chunk of a run's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub seq: u64,
    pub data: String,
}

/// Filters for [`crate::Datastore::list`]. All given filters must hold.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub scope: Option<String>,
    pub state: Option<String>,
    /// Skip records that are no longer live (terminated servers).
    pub live_only: bool,
    pub selector: Option<Selector>,
    /// Exact name.
    pub name: Option<String>,
    /// Start after this id (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many (the backend caps it at [`Query::MAX_LIMIT`]); 0 means the cap.
    pub limit: u32,
}

impl Query {
    pub const MAX_LIMIT: u32 = 1000;

    pub fn effective_limit(&self) -> u32 {
        if self.limit == 0 {
            Self::MAX_LIMIT
        } else {
            self.limit.min(Self::MAX_LIMIT)
        }
    }
}

/// A page of records; `next` is the cursor for the following page, if there is one.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub items: Vec<Record>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    /// Entries whose action starts with this (`server.` for every server action).
    pub action_prefix: Option<String>,
    /// Entries whose target starts with this (`server/web-1`).
    pub target_prefix: Option<String>,
    /// Entries older than this id (for paging backwards in time).
    pub before: Option<String>,
    pub limit: u32,
}
