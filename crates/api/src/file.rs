//! Deployment files: `stratus apply -f FILE` (TOML, or YAML by extension).
//!
//! A file declares catalog entries (clouds, images, scripts, templates), one deployment, and
//! the deployment's servers and arrays:
//!
//! ```toml
//! [[script]]
//! name = "install-nginx"
//! frequency = "per-instance"
//! body_file = "scripts/install-nginx.sh"   # or body = '''...''' inline
//!
//! [[template]]
//! name = "app"
//! image = "debian-12"
//! boot_scripts = ["install-nginx"]
//!
//! [deployment]
//! name = "example"
//! cloud = "local"
//!
//! [[server]]
//! name = "app-1"
//! template = "app"
//! ```
//!
//! `body_file` paths are relative to the file and are read by the CLI; the control plane only
//! ever receives the parsed document. Unknown fields are errors, reported with their path.

use std::path::Path;

use stratus_types::cloud::CloudSpec;
use stratus_types::deployment::DeploymentSpec;
use stratus_types::image::ImageSpec;
use stratus_types::input::Inputs;
use stratus_types::script::ScriptSpec;
use stratus_types::size::SizeRequest;
use stratus_types::tag::Tag;
use stratus_types::template::TemplateSpec;
use stratus_types::{FieldError, Invalid, Name};

pub const FILE_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentFile {
    #[serde(default, rename = "cloud", skip_serializing_if = "Vec::is_empty")]
    pub clouds: Vec<CloudSpec>,
    #[serde(default, rename = "image", skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageSpec>,
    #[serde(default, rename = "script", skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<ScriptSpec>,
    #[serde(default, rename = "template", skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<TemplateSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentSpec>,
    #[serde(default, rename = "server", skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<FileServer>,
    #[serde(default, rename = "array", skip_serializing_if = "Vec::is_empty")]
    pub arrays: Vec<FileArray>,
}

/// A server of the file's deployment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub name: Name,
    pub template: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeRequest>,
    #[serde(default)]
    pub inputs: Inputs,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A server array of the file's deployment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileArray {
    pub name: Name,
    pub template: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<SizeRequest>,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    #[serde(default)]
    pub inputs: Inputs,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<stratus_types::server::Autoscale>,
    /// `oldest` (default) or `newest`: which members go first when the array shrinks.
    #[serde(default, skip_serializing_if = "stratus_types::server::ScaleIn::is_default")]
    pub scale_in: stratus_types::server::ScaleIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    /// By extension: `.yaml`/`.yml` are YAML, everything else TOML.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Toml,
        }
    }
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: the file is {size} bytes; the limit is {FILE_MAX}")]
    TooLarge { path: String, size: usize },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {problems}")]
    Invalid { path: String, problems: Invalid },
    #[error("{path}: cannot read {file}")]
    Io {
        path: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parse a deployment file's text. `base` is the file's directory, for `body_file`; without
/// it, `body_file` is an error.
pub fn parse(text: &str, format: Format, path: &str, base: Option<&Path>) -> Result<DeploymentFile, FileError> {
    if text.len() > FILE_MAX {
        return Err(FileError::TooLarge {
            path: path.into(),
            size: text.len(),
        });
    }
    let syntax = |message: String| FileError::Syntax {
        path: path.into(),
        message,
    };
    let mut value: serde_json::Value = match format {
        Format::Toml => toml::from_str(text).map_err(|e| syntax(e.to_string().trim_end().to_string()))?,
        Format::Yaml => yaml_serde::from_str(text).map_err(|e| syntax(e.to_string()))?,
    };
    inline_body_files(&mut value, path, base)?;
    let file: DeploymentFile =
        serde_path_to_error::deserialize(value).map_err(|e| syntax(format!("at {}: {}", e.path(), e.inner())))?;
    file.validate().map_err(|problems| FileError::Invalid {
        path: path.into(),
        problems,
    })?;
    Ok(file)
}

/// Replace each script's `body_file = "x.sh"` with `body = <contents of x.sh>`.
fn inline_body_files(value: &mut serde_json::Value, path: &str, base: Option<&Path>) -> Result<(), FileError> {
    let Some(scripts) = value.get_mut("script").and_then(|s| s.as_array_mut()) else {
        return Ok(());
    };
    for (i, script) in scripts.iter_mut().enumerate() {
        let Some(obj) = script.as_object_mut() else { continue };
        let Some(file) = obj.remove("body_file") else { continue };
        let invalid = |p: &str| FileError::Invalid {
            path: path.into(),
            problems: Invalid::one(format!("script[{i}].body_file"), p),
        };
        let file = file.as_str().ok_or_else(|| invalid("must be a path"))?.to_string();
        if obj.contains_key("body") {
            return Err(invalid("give either body or body_file, not both"));
        }
        let base = base.ok_or_else(|| invalid("body_file needs the file to be read from disk"))?;
        let full = base.join(&file);
        let meta = std::fs::metadata(&full).map_err(|source| FileError::Io {
            path: path.into(),
            file: file.clone(),
            source,
        })?;
        if meta.len() > stratus_types::script::SCRIPT_BODY_MAX as u64 {
            return Err(invalid("the script file is larger than 1 MiB"));
        }
        let body = std::fs::read_to_string(&full).map_err(|source| FileError::Io {
            path: path.into(),
            file,
            source,
        })?;
        obj.insert("body".into(), serde_json::Value::String(body));
    }
    Ok(())
}

impl DeploymentFile {
    /// Checks that need no knowledge of what exists: each entry on its own, duplicate names,
    /// servers and arrays without a deployment.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut errs = Invalid::default();
        fn dupes<'a>(errs: &mut Invalid, kind: &str, names: impl Iterator<Item = &'a Name>) {
            let mut seen = std::collections::BTreeSet::new();
            for (i, n) in names.enumerate() {
                if !seen.insert(n) {
                    errs.push(FieldError::new(
                        format!("{kind}[{i}].name"),
                        format!("{n} is declared twice"),
                    ));
                }
            }
        }
        for (i, c) in self.clouds.iter().enumerate() {
            if let Err(e) = c.validate() {
                errs.absorb(&format!("cloud[{i}]"), e);
            }
        }
        for (i, c) in self.images.iter().enumerate() {
            if let Err(e) = c.validate() {
                errs.absorb(&format!("image[{i}]"), e);
            }
        }
        for (i, c) in self.scripts.iter().enumerate() {
            if let Err(e) = c.validate() {
                errs.absorb(&format!("script[{i}]"), e);
            }
        }
        for (i, c) in self.templates.iter().enumerate() {
            if let Err(e) = c.validate() {
                errs.absorb(&format!("template[{i}]"), e);
            }
        }
        if let Some(d) = &self.deployment
            && let Err(e) = d.validate()
        {
            errs.absorb("deployment", e);
        }
        dupes(&mut errs, "cloud", self.clouds.iter().map(|c| &c.name));
        dupes(&mut errs, "image", self.images.iter().map(|c| &c.name));
        dupes(&mut errs, "script", self.scripts.iter().map(|c| &c.name));
        dupes(&mut errs, "template", self.templates.iter().map(|c| &c.name));
        dupes(
            &mut errs,
            "server",
            self.servers
                .iter()
                .map(|c| &c.name)
                .chain(self.arrays.iter().map(|a| &a.name)),
        );
        if self.deployment.is_none() && !(self.servers.is_empty() && self.arrays.is_empty()) {
            errs.push(FieldError::new(
                "deployment",
                "servers and arrays need a [deployment] section",
            ));
        }
        errs.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"
[[image]]
name = "debian-12"
[image.clouds.local]
native_id = "debian-12"

[[script]]
name = "hello"
frequency = "per-instance"
body = "echo hello"

[[template]]
name = "app"
image = "debian-12"
boot_scripts = ["hello"]

[deployment]
name = "example"

[[server]]
name = "app-1"
template = "app"
tags = ["lb:pool=www"]
"#;

    #[test]
    fn parses_a_good_file() {
        let f = parse(GOOD, Format::Toml, "d.toml", None).unwrap();
        assert_eq!(f.servers.len(), 1);
        assert_eq!(f.templates[0].boot_scripts[0].as_str(), "hello");
    }

    #[test]
    fn yaml_too() {
        let y = "deployment:\n  name: example\nserver:\n  - name: app-1\n    template: app\n";
        let f = parse(y, Format::Yaml, "d.yaml", None).unwrap();
        assert_eq!(f.servers[0].name.as_str(), "app-1");
    }

    #[test]
    fn errors_name_the_place() {
        let e = parse(
            "[[template]]\nname = \"a\"\nimage = \"b\"\nboot_script = []\n",
            Format::Toml,
            "d.toml",
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("template[0]") && e.to_string().contains("boot_script"),
            "{e}"
        );
        let e = parse("[deployment\nname = 1", Format::Toml, "d.toml", None).unwrap_err();
        assert!(
            e.to_string().starts_with("d.toml: ") && e.to_string().contains("line"),
            "{e}"
        );
        let e = parse(
            "[[server]]\nname = \"a\"\ntemplate = \"t\"\ntags = [\"bad tag\"]\n",
            Format::Toml,
            "d.toml",
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("server[0].tags[0]") && e.to_string().contains("invalid tag"),
            "{e}"
        );
        let e = parse("[deployment]\nname = \"d\"\n[[server]]\nname = \"a\"\ntemplate = \"t\"\n[[server]]\nname = \"a\"\ntemplate = \"t\"\n", Format::Toml, "d.toml", None).unwrap_err();
        assert!(e.to_string().contains("server[1].name: a is declared twice"), "{e}");
        let e = parse(
            "[[server]]\nname = \"a\"\ntemplate = \"t\"\n",
            Format::Toml,
            "d.toml",
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("need a [deployment]"), "{e}");
    }

    #[test]
    fn body_file_is_read_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("stratus-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.sh"), "echo from file\n").unwrap();
        let text = "[[script]]\nname = \"x\"\nbody_file = \"x.sh\"\n";
        let f = parse(text, Format::Toml, "d.toml", Some(&dir)).unwrap();
        assert_eq!(f.scripts[0].body, "echo from file\n");
        assert!(parse(text, Format::Toml, "d.toml", None).is_err());
        let missing = "[[script]]\nname = \"x\"\nbody_file = \"nope.sh\"\n";
        assert!(
            parse(missing, Format::Toml, "d.toml", Some(&dir))
                .unwrap_err()
                .to_string()
                .contains("nope.sh")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oversized_files_are_refused() {
        let big = "#".repeat(FILE_MAX + 1);
        assert!(matches!(
            parse(&big, Format::Toml, "d.toml", None),
            Err(FileError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,400}") {
            let _ = parse(&s, Format::Toml, "f", None);
            let _ = parse(&s, Format::Yaml, "f", None);
        }

        #[test]
        fn mutated_good_file_never_panics(cut in 0usize..400, junk in "[\\[\\]=\"a-z\n ]{0,10}") {
            let mut t = GOOD.to_string();
            let at = cut.min(t.len());
            if t.is_char_boundary(at) { t.insert_str(at, &junk); }
            let _ = parse(&t, Format::Toml, "f", None);
        }
    }
}
