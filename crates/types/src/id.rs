//! Typed ids: a `ServerId` can never be passed where a `TemplateId` is expected.
//!
//! Ids are UUIDv7, so they sort by creation time (list pages are stable and cheap to index).

use std::fmt;
use std::str::FromStr;

macro_rules! typed_id {
    ($($name:ident => $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }

        impl utoipa::__dev::ComposeSchema for $name {
            fn compose(
                _: Vec<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
            ) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )))
                    .description(Some($doc))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    )*};
}

typed_id! {
    CloudId => "Id of a cloud.",
    ImageId => "Id of a multi-cloud image.",
    ScriptId => "Id of a script.",
    TemplateId => "Id of a server template.",
    DeploymentId => "Id of a deployment.",
    ServerId => "Id of a server.",
    ArrayId => "Id of a server array.",
    RunId => "Id of a run (one execution of a script on a server).",
    RolloutId => "Id of a rollout (one script started on many servers).",
    OperationId => "Id of a durable operation (a replace, a rebundle).",
    CredentialId => "Id of a credential.",
    UserId => "Id of a user.",
    TokenId => "Id of an API token.",
    AddressId => "Id of an elastic IP address.",
    AuditId => "Id of an audit-log entry.",
    BucketId => "Id of an artifact bucket.",
    ObjectId => "Id of an artifact object.",
}
