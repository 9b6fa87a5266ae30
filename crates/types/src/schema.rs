//! OpenAPI schemas for types that serialise as strings (names, tags, ids).

/// Implement `utoipa::ToSchema` for a type that serialises as a string.
#[macro_export]
macro_rules! string_schema {
    ($ty:ty, $name:literal, $desc:literal, $example:literal) => {
        impl utoipa::__dev::ComposeSchema for $ty {
            fn compose(
                _: Vec<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
            ) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($desc))
                    .examples([serde_json::json!($example)])
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($name)
            }
        }
    };
}
