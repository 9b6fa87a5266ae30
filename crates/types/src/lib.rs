//! The Stratus domain model: every concept of the product as a typed, validated value.
//!
//! This crate does no I/O. Values are validated when they are built (`parse`/`validate`), so the
//! layers above can trust what they hold: a [`Name`] is always a valid name, a [`Tag`] always has
//! the `namespace:predicate=value` shape, a [`ServerState`] only moves along the lifecycle.
//!
//! References between catalog resources (a template naming its image and scripts, a server naming
//! its deployment) are by [`Name`]: names are unique per kind and immutable, and they are what
//! deployment files are written in.

pub mod address;
pub mod artifact;
pub mod audit;
pub mod cloud;
pub mod credential;
pub mod deployment;
pub mod error;
pub mod id;
pub mod image;
pub mod input;
pub mod name;
pub mod operation;
pub mod run;
pub mod schema;
pub mod script;
pub mod server;
pub mod size;
pub mod sshkey;
pub mod tag;
pub mod template;
pub mod user;

pub use error::{FieldError, Invalid};
pub use id::*;
pub use name::Name;

/// Every time in the model is UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
