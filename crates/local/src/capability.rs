//! What the local cloud does beyond the calls every driver answers (the `CloudDriver`
//! capabilities): build and import images into its store, verify the identity documents its
//! metadata service signs, and tear itself down when its cloud is deleted.

use std::path::Path;

use stratus_cloud::{CloudError, ImageRecipe, MadeImage, VerifiedIdentity, VerifyIdentity};

use crate::image::{BuildSpec, ImageError, ImageStore, LocalImage};

/// The debootstrap spec of a recipe: the defaults ([`BuildSpec::default`]) where it says
/// nothing, its extra packages on top.
pub(crate) fn build_spec(recipe: &ImageRecipe) -> BuildSpec {
    let mut spec = BuildSpec::default();
    if let Some(s) = &recipe.suite {
        spec.suite.clone_from(s);
    }
    if let Some(m) = &recipe.mirror {
        spec.mirror.clone_from(m);
    }
    if let Some(p) = &recipe.packages {
        spec.packages.clone_from(p);
    }
    spec.packages.extend(recipe.extra_packages.iter().cloned());
    spec
}

pub(crate) async fn build(
    images: &ImageStore,
    name: &str,
    recipe: &ImageRecipe,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<MadeImage, CloudError> {
    let spec = build_spec(recipe);
    let built = images.build(name, &spec, progress).await.map_err(image_error)?;
    let description = format!("Debian {} ({}) built with debootstrap", spec.suite, spec.variant);
    Ok(made(built, description))
}

pub(crate) async fn import(images: &ImageStore, name: &str, tarball: &Path) -> Result<MadeImage, CloudError> {
    let imported = images.import(name, tarball).await.map_err(image_error)?;
    Ok(made(imported, format!("imported from {}", tarball.display())))
}

fn made(image: LocalImage, description: String) -> MadeImage {
    MadeImage {
        native_id: image.id,
        size_bytes: Some(image.size_bytes),
        description,
    }
}

/// Bad input (a spec, a file, a name) is `Invalid` with the store's words; the rest is the
/// store failing.
fn image_error(e: ImageError) -> CloudError {
    match e {
        ImageError::InvalidSpec { .. } | ImageError::Import { .. } | ImageError::NoSuchImage(_) => {
            CloudError::Invalid(e.to_string())
        }
        e => CloudError::Api(Box::new(e)),
    }
}

/// The cloud's metadata service key, as the control plane checks documents with it.
pub(crate) struct Verifier(pub(crate) stratus_imds::IdentityVerifier);

impl VerifyIdentity for Verifier {
    fn verify(&self, document: &[u8], signature: &str) -> Result<VerifiedIdentity, CloudError> {
        let doc = self
            .0
            .verify(document, signature)
            .map_err(|e| CloudError::Refused(e.to_string()))?;
        Ok(VerifiedIdentity {
            instance_id: doc.instance_id,
            private_ip: std::net::IpAddr::V4(doc.private_ip),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_overrides_only_what_it_names() {
        let spec = build_spec(&ImageRecipe {
            suite: Some("trixie".into()),
            extra_packages: vec!["jq".into()],
            ..Default::default()
        });
        let default = BuildSpec::default();
        assert_eq!(spec.suite, "trixie");
        assert_eq!(spec.mirror, default.mirror);
        assert_eq!(spec.packages.last().map(String::as_str), Some("jq"));
        assert_eq!(spec.packages.len(), default.packages.len() + 1);
    }
}
