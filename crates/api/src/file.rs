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
//! ever receives the parsed document. They must stay beneath the file's directory: absolute
//! paths, `..` and symbolic links that resolve outside it are refused (a file from someone else
//! must not upload the reader's own files as script bodies; see `read_beneath`). Unknown fields are errors, reported with their path.

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
        let body = read_beneath(base, &file).map_err(|e| match e {
            BodyFileError::Refused(why) => invalid(&why),
            BodyFileError::Io(source) => FileError::Io {
                path: path.into(),
                // Bounded and escaped: the name is the file's author's, not the reader's.
                file: format!("{:?}", stratus_types::name::truncate(&file)),
                source,
            },
        })?;
        obj.insert("body".into(), serde_json::Value::String(body));
    }
    Ok(())
}

/// Why a `body_file` could not be inlined.
enum BodyFileError {
    Refused(String),
    Io(std::io::Error),
}

/// Read `file`, a path relative to `base`, refusing anything that leaves `base`.
///
/// A deployment file is often written by someone other than the person who applies it (a
/// repository, a colleague), and what `body_file` names is uploaded as a script body others can
/// read. So the path must be relative, without `..`, and what it finally resolves to (after
/// every symbolic link, which a repository can carry) must be a regular file beneath `base`'s own
/// resolved directory: `body_file = "/root/.config/stratus/cli.toml"`, `"../../etc/shadow"` and
/// `x.sh -> ~/.ssh/id_ed25519` are all refused, and nothing is read. A FIFO or device is
/// refused too, so a hostile file cannot block or flood the reader.
fn read_beneath(base: &Path, file: &str) -> Result<String, BodyFileError> {
    use std::io::Read;
    use std::path::Component;
    let refused = |why: &str| BodyFileError::Refused(why.to_string());
    let rel = Path::new(file);
    if file.is_empty() || file.contains('\0') {
        return Err(refused("must be a path"));
    }
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(refused(
            "must be a path relative to the deployment file's directory, without `..`",
        ));
    }
    let root = std::fs::canonicalize(base).map_err(BodyFileError::Io)?;
    let full = std::fs::canonicalize(root.join(rel)).map_err(BodyFileError::Io)?;
    if !full.starts_with(&root) {
        return Err(refused(
            "is a symbolic link out of the deployment file's directory; copy the script beside the file",
        ));
    }
    // The type is checked before opening (opening a FIFO blocks) and again on the open file.
    if !std::fs::metadata(&full).map_err(BodyFileError::Io)?.is_file() {
        return Err(refused("is not a regular file"));
    }
    let mut f = std::fs::File::open(&full).map_err(BodyFileError::Io)?;
    let meta = f.metadata().map_err(BodyFileError::Io)?;
    if !meta.is_file() {
        return Err(refused("is not a regular file"));
    }
    // What was opened is checked again, by the kernel's name for the open file, in case a
    // directory on the way was swapped for a link after the check above.
    use std::os::fd::AsRawFd;
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        && !opened.starts_with(&root)
    {
        return Err(refused(
            "is a symbolic link out of the deployment file's directory; copy the script beside the file",
        ));
    }
    let max = stratus_types::script::SCRIPT_BODY_MAX as u64;
    if meta.len() > max {
        return Err(refused("the script file is larger than 1 MiB"));
    }
    let mut body = String::new();
    // Read at most one byte past the limit, in case the file grew since `metadata`.
    (&mut f)
        .take(max + 1)
        .read_to_string(&mut body)
        .map_err(BodyFileError::Io)?;
    if body.len() as u64 > max {
        return Err(refused("the script file is larger than 1 MiB"));
    }
    Ok(body)
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

    /// A scratch directory with a deployment directory `dep/` and a secret beside it.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("stratus-file-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("dep/scripts")).unwrap();
            std::fs::create_dir_all(dir.join("private")).unwrap();
            std::fs::write(dir.join("private/cli.toml"), "token = \"stratus_SECRET\"\n").unwrap();
            Self(dir)
        }
        fn dep(&self) -> std::path::PathBuf {
            self.0.join("dep")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn with_body_file(path: &str) -> String {
        format!("[[script]]\nname = \"x\"\nbody_file = {path:?}\n")
    }

    #[test]
    fn body_file_is_read_relative_to_the_file() {
        let s = Scratch::new("ok");
        std::fs::write(s.dep().join("x.sh"), "echo from file\n").unwrap();
        std::fs::write(s.dep().join("scripts/y.sh"), "echo nested\n").unwrap();
        let f = parse(&with_body_file("x.sh"), Format::Toml, "d.toml", Some(&s.dep())).unwrap();
        assert_eq!(f.scripts[0].body, "echo from file\n");
        let f = parse(
            &with_body_file("./scripts/y.sh"),
            Format::Toml,
            "d.toml",
            Some(&s.dep()),
        )
        .unwrap();
        assert_eq!(f.scripts[0].body, "echo nested\n");
        // A link that stays inside the directory is fine.
        std::os::unix::fs::symlink("scripts/y.sh", s.dep().join("link.sh")).unwrap();
        let f = parse(&with_body_file("link.sh"), Format::Toml, "d.toml", Some(&s.dep())).unwrap();
        assert_eq!(f.scripts[0].body, "echo nested\n");
        assert!(parse(&with_body_file("x.sh"), Format::Toml, "d.toml", None).is_err());
        let e = parse(&with_body_file("nope.sh"), Format::Toml, "d.toml", Some(&s.dep())).unwrap_err();
        assert!(e.to_string().contains("nope.sh"), "{e}");
    }

    #[test]
    fn body_file_never_reads_outside_the_file_directory() {
        let s = Scratch::new("hostile");
        let secret = s.0.join("private/cli.toml");
        std::os::unix::fs::symlink(&secret, s.dep().join("abs-link.sh")).unwrap();
        std::os::unix::fs::symlink("../private/cli.toml", s.dep().join("rel-link.sh")).unwrap();
        std::os::unix::fs::symlink(s.0.join("private"), s.dep().join("linkdir")).unwrap();
        std::os::unix::fs::symlink("../../private", s.dep().join("scripts/up")).unwrap();
        let hostile = [
            secret.display().to_string(),
            "../private/cli.toml".into(),
            "scripts/../../private/cli.toml".into(),
            "abs-link.sh".into(),
            "rel-link.sh".into(),
            "linkdir/cli.toml".into(),
            "scripts/up/cli.toml".into(),
            "/etc/passwd".into(),
            "".into(),
        ];
        for path in hostile {
            let e = parse(&with_body_file(&path), Format::Toml, "d.toml", Some(&s.dep()))
                .expect_err(&format!("{path:?} must be refused"));
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("stratus_SECRET"), "{path:?}: {shown}");
            assert!(shown.contains("body_file"), "{path:?} names the field: {shown}");
        }
    }

    #[test]
    fn body_file_refuses_special_and_oversized_files() {
        let s = Scratch::new("special");
        let status = std::process::Command::new("mkfifo")
            .arg(s.dep().join("fifo.sh"))
            .status()
            .unwrap();
        assert!(status.success());
        // A FIFO would block a reader forever: it is refused from its type, without opening it
        // for long (nothing writes to it, so a read would hang this test).
        let e = parse(&with_body_file("fifo.sh"), Format::Toml, "d.toml", Some(&s.dep()));
        assert!(e.unwrap_err().to_string().contains("not a regular file"));
        let e = parse(&with_body_file("scripts"), Format::Toml, "d.toml", Some(&s.dep())).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::write(
            s.dep().join("big.sh"),
            "#".repeat(stratus_types::script::SCRIPT_BODY_MAX + 1),
        )
        .unwrap();
        let e = parse(&with_body_file("big.sh"), Format::Toml, "d.toml", Some(&s.dep())).unwrap_err();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        let long = "a/".repeat(5000);
        let e = parse(&with_body_file(&long), Format::Toml, "d.toml", Some(&s.dep())).unwrap_err();
        assert!(
            e.to_string().len() < 2000,
            "the error stays small: {} bytes",
            e.to_string().len()
        );
    }

    /// YAML aliases cannot blow a small file up into a huge document (a "billion laughs").
    #[test]
    fn yaml_alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        text.push_str("deployment: { name: d, inputs: { X: *a11 } }\n");
        assert!(text.len() < 1000);
        let e = parse(&text, Format::Yaml, "bomb.yaml", None).unwrap_err();
        assert!(e.to_string().len() < 2000, "{e}");
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
