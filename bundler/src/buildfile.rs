//! `bundle build -f bundle.toml`: everything the command line can say, in a file.
//!
//! Keys are named as the options are (`dir`, `files`, `file`, `rpm`, `oci`, `include`,
//! `entrypoint`, `output`, `level`, `block_size`, …); repeatable options take a string or
//! an array. Host paths are taken relative to the file's own directory, so a build file
//! works from wherever `bundle` is started. An unknown key is an error naming the key and
//! its line: a misspelt `entrypiont` must not be silently ignored.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    #[serde(default)]
    pub rpm: OneOrMany,
    #[serde(default)]
    pub dir: OneOrMany,
    #[serde(default)]
    pub files: OneOrMany,
    #[serde(default)]
    pub file: OneOrMany,
    #[serde(default)]
    pub include: OneOrMany,
    pub oci: Option<String>,
    pub oci_ref: Option<String>,
    pub sif: Option<String>,
    pub image: Option<String>,
    /// The program, or the program and its fixed leading arguments.
    pub entrypoint: Option<OneOrMany>,
    pub output: Option<String>,
    pub level: Option<i32>,
    pub block_size: Option<u32>,
    pub threads: Option<usize>,
    pub stub: Option<String>,
    pub closure: Option<bool>,
    pub allow_missing: Option<bool>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub binds: Vec<String>,
}

/// A string or an array of strings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(from = "OneOrManyRaw")]
pub struct OneOrMany(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrManyRaw {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrManyRaw> for OneOrMany {
    fn from(r: OneOrManyRaw) -> Self {
        match r {
            OneOrManyRaw::One(s) => OneOrMany(vec![s]),
            OneOrManyRaw::Many(v) => OneOrMany(v),
        }
    }
}

/// Reads and checks a build file; host paths in it come back relative to the current
/// directory (that is, joined to the file's directory).
pub fn load(path: &Path) -> Result<BuildFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read build file {}", path.display()))?;
    let mut f = parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    f.relative_to(base);
    Ok(f)
}

/// Parses build-file text; an error reads `LINE: message`. (Public for the fuzz target.)
pub fn parse(text: &str) -> Result<BuildFile> {
    match toml::from_str::<BuildFile>(text) {
        Ok(f) => Ok(f),
        Err(e) => {
            let line = e.span().map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            // The message's first line is enough; the rest quotes the file.
            let msg = e.message().lines().next().unwrap_or("invalid TOML").trim_end_matches('.');
            bail!("{line}: {msg}")
        }
    }
}

impl BuildFile {
    fn relative_to(&mut self, base: &Path) {
        let join = |p: &str| base.join(p).display().to_string();
        for list in [&mut self.rpm.0, &mut self.dir.0, &mut self.files.0, &mut self.include.0] {
            for p in list.iter_mut() {
                *p = join(p);
            }
        }
        // `file` is SRC[=DEST]: only SRC is a host path.
        for spec in self.file.0.iter_mut() {
            *spec = match spec.split_once('=') {
                Some((src, dest)) => format!("{}={dest}", join(src)),
                None if Path::new(spec.as_str()).is_absolute() => spec.clone(),
                // A relative SRC without DEST keeps its name as the destination.
                None => format!("{}=/{spec}", join(spec)),
            };
        }
        for p in [&mut self.oci, &mut self.sif, &mut self.image, &mut self.output, &mut self.stub].into_iter().flatten()
        {
            *p = join(p);
        }
    }
}

/// Path-valued strings as paths.
pub fn paths(v: &[String]) -> Vec<PathBuf> {
    v.iter().map(PathBuf::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_and_relative_paths() {
        let text = r#"
rpm = ["a.rpm", "b.rpm"]
dir = "root"
files = "list"
file = ["tool=/usr/bin/tool", "/etc/hosts"]
include = "/usr/bin/perl"
oci = "img"
oci_ref = "app:1"
entrypoint = ["/usr/bin/tool", "--fast"]
output = "out/app.sif"
level = 3
block_size = 131072
threads = 2
closure = true
allow_missing = false
binds = ["/scratch"]
[env]
A = "1"
[labels]
who = "me"
"#;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bundle.toml");
        std::fs::write(&p, text).unwrap();
        let f = load(&p).unwrap();
        let base = d.path().display().to_string();
        assert_eq!(f.rpm.0, [format!("{base}/a.rpm"), format!("{base}/b.rpm")]);
        assert_eq!(f.dir.0, [format!("{base}/root")]);
        assert_eq!(f.file.0, [format!("{base}/tool=/usr/bin/tool"), "/etc/hosts".to_string()]);
        assert_eq!(f.include.0, ["/usr/bin/perl"]);
        assert_eq!(f.output.unwrap(), format!("{base}/out/app.sif"));
        assert_eq!(f.entrypoint.unwrap().0, ["/usr/bin/tool", "--fast"]);
        assert_eq!(f.env["A"], "1");
        assert_eq!(f.labels["who"], "me");
        assert_eq!((f.level, f.block_size, f.closure), (Some(3), Some(131072), Some(true)));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse("dir = \"x\"\n\nentrypiont = \"/bin/sh\"\n").unwrap_err().to_string();
        assert!(err.starts_with("3: unknown field `entrypiont`"), "{err}");
        let err = parse("[env]\nA = 1\n").unwrap_err().to_string();
        assert!(err.starts_with("2: "), "{err}");
        let err = parse("level = \"high\"\n").unwrap_err().to_string();
        assert!(err.starts_with("1: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
