//! The typed face of the store: domain values in, domain values out.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stratus_types::address::Address;
use stratus_types::artifact::{Bucket, Object};
use stratus_types::cloud::Cloud;
use stratus_types::credential::Credential;
use stratus_types::deployment::Deployment;
use stratus_types::image::Image;
use stratus_types::operation::Operation;
use stratus_types::run::{Rollout, Run};
use stratus_types::script::Script;
use stratus_types::server::{Server, ServerArray, ServerState};
use stratus_types::tag::Tag;
use stratus_types::template::ServerTemplate;
use stratus_types::user::User;

use crate::{Change, Datastore, Kind, Query, Record, StoreError};

/// A domain value the store can hold.
pub trait Resource: Serialize + DeserializeOwned + Send + Sync + 'static {
    const KIND: Kind;
    fn id_string(&self) -> String;
    fn name_string(&self) -> String;
    fn revision(&self) -> u32;
    fn set_revision(&mut self, revision: u32);
    fn created_at(&self) -> DateTime<Utc>;
    fn updated_at(&self) -> DateTime<Utc>;
    fn set_updated_at(&mut self, at: DateTime<Utc>);
    fn scope(&self) -> String {
        String::new()
    }
    fn live(&self) -> bool {
        true
    }
    fn state(&self) -> Option<String> {
        None
    }
    fn tags(&self) -> Vec<Tag> {
        Vec::new()
    }

    fn to_record(&self) -> Record {
        Record {
            kind: Self::KIND,
            id: self.id_string(),
            scope: self.scope(),
            name: self.name_string(),
            live: self.live(),
            state: self.state(),
            revision: self.revision(),
            created_at: self.created_at(),
            updated_at: self.updated_at(),
            tags: self.tags(),
            // Serialising plain data structs to a JSON value cannot fail.
            body: serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
        }
    }

    fn from_record(r: Record) -> Result<Self, StoreError> {
        let (kind, id) = (r.kind, r.id);
        serde_json::from_value(r.body).map_err(|source| StoreError::Corrupt { kind, id, source })
    }
}

impl Change {
    /// Insert a new resource; fails with `Conflict` if its name is taken.
    pub fn insert<T: Resource>(value: &T) -> Change {
        Change::Put {
            record: value.to_record(),
            expect: None,
        }
    }

    /// Store a changed resource: bumps its revision and update time, and expects the stored
    /// revision to be the one it was loaded at.
    pub fn update<T: Resource>(value: &mut T, now: DateTime<Utc>) -> Change {
        let expect = value.revision();
        value.set_revision(expect + 1);
        value.set_updated_at(now);
        Change::Put {
            record: value.to_record(),
            expect: Some(expect),
        }
    }

    pub fn delete<T: Resource>(value: &T) -> Change {
        Change::Delete {
            kind: T::KIND,
            id: value.id_string(),
            expect: value.revision(),
        }
    }
}

/// Typed reads on any [`Datastore`].
#[async_trait]
pub trait TypedStore {
    async fn get_as<T: Resource>(&self, id: &str) -> Result<Option<T>, StoreError>;
    async fn find_as<T: Resource>(&self, scope: &str, name: &str) -> Result<Option<T>, StoreError>;
    async fn list_as<T: Resource>(&self, query: &Query) -> Result<(Vec<T>, Option<String>), StoreError>;
    /// Every record matching `query`, following pages.
    async fn list_all<T: Resource>(&self, query: &Query) -> Result<Vec<T>, StoreError>;
}

#[async_trait]
impl<S: Datastore + ?Sized> TypedStore for S {
    async fn get_as<T: Resource>(&self, id: &str) -> Result<Option<T>, StoreError> {
        self.get(T::KIND, id).await?.map(T::from_record).transpose()
    }

    async fn find_as<T: Resource>(&self, scope: &str, name: &str) -> Result<Option<T>, StoreError> {
        self.find(T::KIND, scope, name).await?.map(T::from_record).transpose()
    }

    async fn list_as<T: Resource>(&self, query: &Query) -> Result<(Vec<T>, Option<String>), StoreError> {
        let page = self.list(T::KIND, query).await?;
        let items = page
            .items
            .into_iter()
            .map(T::from_record)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((items, page.next))
    }

    async fn list_all<T: Resource>(&self, query: &Query) -> Result<Vec<T>, StoreError> {
        let mut q = query.clone();
        q.limit = Query::MAX_LIMIT;
        let mut out = Vec::new();
        loop {
            let (items, next) = self.list_as::<T>(&q).await?;
            out.extend(items);
            match next {
                Some(n) => q.after = Some(n),
                None => return Ok(out),
            }
        }
    }
}

/// The fields every resource struct shares (`id`, `revision`, `created_at`, `updated_at`).
#[macro_export]
macro_rules! resource_meta {
    () => {
        fn id_string(&self) -> String {
            self.id.to_string()
        }
        fn revision(&self) -> u32 {
            self.revision
        }
        fn set_revision(&mut self, revision: u32) {
            self.revision = revision;
        }
        fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
            self.created_at
        }
        fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
            self.updated_at
        }
        fn set_updated_at(&mut self, at: chrono::DateTime<chrono::Utc>) {
            self.updated_at = at;
        }
    };
}

macro_rules! spec_named {
    ($($ty:ty => $kind:ident),* $(,)?) => {$(
        impl Resource for $ty {
            const KIND: Kind = Kind::$kind;
            resource_meta!();
            fn name_string(&self) -> String {
                self.spec.name.to_string()
            }
        }
    )*};
}

spec_named! {
    Cloud => Cloud,
    Image => Image,
    Script => Script,
    Deployment => Deployment,
    User => User,
}

impl Resource for ServerTemplate {
    const KIND: Kind = Kind::Template;
    fn id_string(&self) -> String {
        self.id.to_string()
    }
    fn name_string(&self) -> String {
        self.spec.name.to_string()
    }
    // A template's revision is its version.
    fn revision(&self) -> u32 {
        self.version
    }
    fn set_revision(&mut self, revision: u32) {
        self.version = revision;
    }
    fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
    fn set_updated_at(&mut self, at: DateTime<Utc>) {
        self.updated_at = at;
    }
}

/// A past version of a template, kept so a server can say what it was launched from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TemplateVersion(pub ServerTemplate);

impl Resource for TemplateVersion {
    const KIND: Kind = Kind::TemplateVersion;
    fn id_string(&self) -> String {
        // Zero-padded so id order is version order.
        format!("{}@{:010}", self.0.id, self.0.version)
    }
    fn name_string(&self) -> String {
        self.0.version.to_string()
    }
    /// Versions are kept per template id, so a template deleted and created again starts afresh.
    fn scope(&self) -> String {
        self.0.id.to_string()
    }
    fn revision(&self) -> u32 {
        1
    }
    fn set_revision(&mut self, _: u32) {}
    /// A version is created when its template is updated.
    #[allow(clippy::misnamed_getters)]
    fn created_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    fn set_updated_at(&mut self, _: DateTime<Utc>) {}
}

impl Resource for Server {
    const KIND: Kind = Kind::Server;
    resource_meta!();
    fn name_string(&self) -> String {
        self.name.to_string()
    }
    fn scope(&self) -> String {
        self.deployment.to_string()
    }
    fn live(&self) -> bool {
        self.state != ServerState::Terminated
    }
    fn state(&self) -> Option<String> {
        Some(self.state.as_str().to_string())
    }
    fn tags(&self) -> Vec<Tag> {
        self.tags.clone()
    }
}

impl Resource for ServerArray {
    const KIND: Kind = Kind::Array;
    resource_meta!();
    fn name_string(&self) -> String {
        self.spec.name.to_string()
    }
    fn scope(&self) -> String {
        self.spec.deployment.to_string()
    }
}

impl Resource for Run {
    const KIND: Kind = Kind::Run;
    fn id_string(&self) -> String {
        self.id.to_string()
    }
    fn name_string(&self) -> String {
        self.id.to_string()
    }
    /// Runs are listed per server.
    fn scope(&self) -> String {
        self.server.to_string()
    }
    fn state(&self) -> Option<String> {
        serde_json::to_value(self.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }
    fn revision(&self) -> u32 {
        self.revision
    }
    fn set_revision(&mut self, revision: u32) {
        self.revision = revision;
    }
    fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    fn updated_at(&self) -> DateTime<Utc> {
        self.finished_at.or(self.started_at).unwrap_or(self.created_at)
    }
    fn set_updated_at(&mut self, _: DateTime<Utc>) {}
}

impl Resource for Credential {
    const KIND: Kind = Kind::Credential;
    resource_meta!();
    fn name_string(&self) -> String {
        self.name.to_string()
    }
}

impl Resource for Address {
    const KIND: Kind = Kind::Address;
    resource_meta!();
    fn name_string(&self) -> String {
        self.name.to_string()
    }
}

impl Resource for Rollout {
    const KIND: Kind = Kind::Rollout;
    fn id_string(&self) -> String {
        self.id.to_string()
    }
    fn name_string(&self) -> String {
        self.id.to_string()
    }
    fn state(&self) -> Option<String> {
        serde_json::to_value(self.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }
    fn revision(&self) -> u32 {
        self.revision
    }
    fn set_revision(&mut self, revision: u32) {
        self.revision = revision;
    }
    fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    fn updated_at(&self) -> DateTime<Utc> {
        self.finished_at.unwrap_or(self.created_at)
    }
    fn set_updated_at(&mut self, _: DateTime<Utc>) {}
}

impl Resource for Operation {
    const KIND: Kind = Kind::Operation;
    resource_meta!();
    /// An unfinished operation is named `in-progress` under its server: live names are unique
    /// per scope, so the store itself refuses a second operation on a server while one goes.
    fn name_string(&self) -> String {
        if self.step.is_finished() {
            self.id.to_string()
        } else {
            "in-progress".into()
        }
    }
    fn live(&self) -> bool {
        !self.step.is_finished()
    }
    /// Scoped by the server it is about, so a server's operations are one query.
    fn scope(&self) -> String {
        self.server.to_string()
    }
    fn state(&self) -> Option<String> {
        Some(self.step.as_str().to_string())
    }
}

impl Resource for Bucket {
    const KIND: Kind = Kind::Bucket;
    resource_meta!();
    fn name_string(&self) -> String {
        self.name.to_string()
    }
}

/// Objects are named by key within their bucket; the state holds the content's SHA-256, so
/// the blob sweep finds whether any object still refers to a blob.
impl Resource for Object {
    const KIND: Kind = Kind::Object;
    resource_meta!();
    fn name_string(&self) -> String {
        self.key.clone()
    }
    fn scope(&self) -> String {
        self.bucket.to_string()
    }
    fn state(&self) -> Option<String> {
        Some(self.sha256.clone())
    }
}
