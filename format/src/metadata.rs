//! The JSON metadata block: what the runtime needs to start the application, and where
//! everything in the image came from.

//!
//! Written with serde (feature `write`, the bundler's); read by hand from the small tree
//! of `tree.rs`, so that the runtime stub carries no serde machinery (60 KiB of it). The
//! two agree: a round trip is tested here and fuzzed (`fuzz/`, target `metadata`).

use crate::tree::{self, Value};
#[cfg(feature = "write")]
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "write", derive(Serialize))]
pub struct Metadata {
    /// Absolute path (inside the image) of the program to run, then fixed leading arguments.
    pub entrypoint: Vec<String>,
    /// Environment set inside the bundle, over the caller's.
    pub env: BTreeMap<String, String>,
    /// Free-form labels (`--label K=V`).
    pub labels: BTreeMap<String, String>,
    /// Build time, seconds since the epoch (`SOURCE_DATE_EPOCH` when set).
    pub created: u64,
    /// The `bundle` version that wrote this file.
    pub bundler: String,
    pub image: ImageInfo,
    /// Every input the image was built from, in command-line order.
    pub inputs: Vec<Input>,
    /// Files that the bundler added to make the bundle self-contained, with their origin.
    pub provided: Vec<ProvidedFile>,
    /// Binds the runtime adds by default, as `SRC[:DST[:ro]]`.
    pub binds: Vec<String>,
    /// The working directory an OCI image's config names, kept for the record: the
    /// runtime starts the application in the caller's directory, as HPC jobs expect.
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "Option::is_none"))]
    pub workdir: Option<String>,
    /// Digests of what the trailer's digests do not cover directly (versions 2 and 3).
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "Option::is_none"))]
    pub integrity: Option<Integrity>,
}

/// The chunk table's and the stub's digests: with these in the metadata, the trailer's
/// metadata digest (and so a signature) stands for every byte before the signatures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "write", derive(Serialize))]
pub struct Integrity {
    /// Bytes per chunk of the image in the chunk table.
    pub chunk_size: u64,
    /// Hex SHA-256 of the chunk table.
    pub chunks_sha256: String,
    /// Hex SHA-256 of the chunk table's index (version 3; empty in version 2).
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "String::is_empty"))]
    pub index_sha256: String,
    /// Hex SHA-256 of the stub and its padding: bytes 0 to the image offset.
    pub stub_sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "write", derive(Serialize))]
pub struct ImageInfo {
    pub compression: String,
    pub level: i32,
    pub block_size: u32,
    /// Number of entries (files, directories, links) in the image.
    pub entries: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "write", derive(Serialize))]
pub struct Input {
    /// `dir`, `files`, `file`, `rpm`, `oci`, `sif` or `image`.
    pub kind: String,
    /// The path given on the command line.
    pub path: String,
    /// name-version-release.arch for an RPM.
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "Option::is_none"))]
    pub nevra: Option<String>,
    /// sha256 of the input file (absent for directories).
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "Option::is_none"))]
    pub sha256: Option<String>,
    /// The image's own digest, `sha256:…`: of its manifest for an OCI image (what a
    /// registry names it by), of its config (the image id) for a docker archive.
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "Option::is_none"))]
    pub digest: Option<String>,
    /// The name the image was chosen by (`--oci-ref`) or its only name.
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "Option::is_none"))]
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "write", derive(Serialize))]
pub struct ProvidedFile {
    /// Path inside the image.
    pub path: String,
    /// Host path it was copied from.
    pub source: String,
    /// Why it was added (e.g. "needed by /usr/bin/app").
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "String::is_empty"))]
    pub reason: String,
    /// The build host's package that owns `source`, when its package database says.
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "Option::is_none"))]
    pub package: Option<HostPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "write", derive(Serialize))]
pub struct HostPackage {
    /// `dpkg` or `rpm`.
    pub manager: String,
    pub name: String,
    pub version: String,
    /// e.g. `amd64`, `x86_64`; empty when the database does not say.
    #[cfg_attr(feature = "write", serde(skip_serializing_if = "String::is_empty"))]
    pub arch: String,
}

impl Metadata {
    #[cfg(feature = "write")]
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("metadata serialises");
        v.push(b'\n');
        v
    }

    /// Reads the metadata. Unknown fields are ignored (a newer bundler may add some);
    /// a known field of the wrong shape is an error naming it.
    pub fn from_json(bytes: &[u8]) -> Result<Metadata, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the metadata is not UTF-8".to_string())?;
        let v = tree::parse_json(text)?;
        if !matches!(v, Value::Object(_)) {
            return Err("the metadata is not a JSON object".into());
        }
        Ok(Metadata {
            entrypoint: strings(&v, "entrypoint")?,
            env: map(&v, "env")?,
            labels: map(&v, "labels")?,
            created: number(&v, "created")?,
            bundler: string(&v, "bundler")?,
            image: match v.get("image") {
                None | Some(Value::Null) => ImageInfo::default(),
                Some(i) => ImageInfo {
                    compression: string(i, "compression")?,
                    level: number(i, "level")?,
                    block_size: number(i, "block_size")?,
                    entries: number(i, "entries")?,
                },
            },
            inputs: objects(&v, "inputs", |i| {
                Ok(Input {
                    kind: required(i, "kind")?,
                    path: required(i, "path")?,
                    nevra: optional(i, "nevra")?,
                    sha256: optional(i, "sha256")?,
                    digest: optional(i, "digest")?,
                    reference: optional(i, "reference")?,
                })
            })?,
            provided: objects(&v, "provided", |p| {
                Ok(ProvidedFile {
                    path: required(p, "path")?,
                    source: required(p, "source")?,
                    reason: string(p, "reason")?,
                    package: match p.get("package") {
                        None | Some(Value::Null) => None,
                        Some(k) => Some(HostPackage {
                            manager: required(k, "manager")?,
                            name: required(k, "name")?,
                            version: required(k, "version")?,
                            arch: string(k, "arch")?,
                        }),
                    },
                })
            })?,
            binds: strings(&v, "binds")?,
            workdir: optional(&v, "workdir")?,
            integrity: match v.get("integrity") {
                None | Some(Value::Null) => None,
                Some(i) => Some(Integrity {
                    chunk_size: number(i, "chunk_size")?,
                    chunks_sha256: required(i, "chunks_sha256")?,
                    index_sha256: string(i, "index_sha256")?,
                    stub_sha256: required(i, "stub_sha256")?,
                }),
            },
        })
    }
}

/// A string field; absent or null is empty.
fn string(v: &Value, key: &str) -> Result<String, String> {
    Ok(optional(v, key)?.unwrap_or_default())
}

fn optional(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("metadata field `{key}` is not a string")),
    }
}

fn required(v: &Value, key: &str) -> Result<String, String> {
    optional(v, key)?.ok_or_else(|| format!("metadata field `{key}` is missing"))
}

/// A number field (the tree keeps numbers as their text); absent or null is 0.
fn number<T: std::str::FromStr + Default>(v: &Value, key: &str) -> Result<T, String> {
    match optional(v, key)? {
        None => Ok(T::default()),
        Some(s) => s.parse().map_err(|_| format!("metadata field `{key}` is not a number: {s}")),
    }
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("metadata field `{key}` holds something that is not a string")),
            })
            .collect(),
        Some(_) => Err(format!("metadata field `{key}` is not a list")),
    }
}

fn map(v: &Value, key: &str) -> Result<BTreeMap<String, String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(entries)) => entries
            .iter()
            .map(|(k, val)| match val {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("metadata field `{key}.{k}` is not a string")),
            })
            .collect(),
        Some(_) => Err(format!("metadata field `{key}` is not an object")),
    }
}

fn objects<T>(v: &Value, key: &str, each: impl Fn(&Value) -> Result<T, String>) -> Result<Vec<T>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(&each).collect(),
        Some(_) => Err(format!("metadata field `{key}` is not a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "write")]
    #[test]
    fn every_field_round_trips() {
        let mut m = Metadata {
            entrypoint: vec!["/bin/app".into(), "--flag \"q\"".into()],
            created: 1_700_000_000,
            bundler: "bundle 0.1.0".into(),
            image: ImageInfo { compression: "zstd".into(), level: -3, block_size: 131072, entries: 9 },
            inputs: vec![Input {
                kind: "rpm".into(),
                path: "a.rpm".into(),
                nevra: Some("a-1-1.x86_64".into()),
                ..Default::default()
            }],
            provided: vec![ProvidedFile {
                path: "/lib/x.so".into(),
                source: "/usr/lib/x.so".into(),
                reason: "needed by /bin/app".into(),
                package: Some(HostPackage {
                    manager: "dpkg".into(),
                    name: "x".into(),
                    version: "1".into(),
                    arch: String::new(),
                }),
            }],
            binds: vec!["/data:/data:ro".into()],
            workdir: Some("/work dir".into()),
            integrity: Some(Integrity {
                chunk_size: 65536,
                chunks_sha256: "ab".into(),
                index_sha256: "ef".into(),
                stub_sha256: "cd".into(),
            }),
            ..Default::default()
        };
        m.env.insert("PATH".into(), "/bin:/usr/bin".into());
        m.labels.insert("é\n\t".into(), "\u{1F600} x".into());
        assert_eq!(Metadata::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert!(Metadata::from_json(b"[]").is_err());
        assert!(Metadata::from_json(br#"{"entrypoint":"/x"}"#).unwrap_err().contains("entrypoint"));
        assert!(Metadata::from_json(br#"{"created":"soon"}"#).unwrap_err().contains("created"));
        assert!(Metadata::from_json(br#"{"inputs":[{"path":"x"}]}"#).unwrap_err().contains("kind"));
    }

    #[cfg(feature = "write")]
    #[test]
    fn round_trip_and_unknown_fields_ignored() {
        let mut m = Metadata { entrypoint: vec!["/bin/hello".into()], ..Default::default() };
        m.env.insert("A".into(), "1".into());
        let back = Metadata::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        let newer = br#"{"entrypoint":["/x"],"future_field":42}"#;
        assert_eq!(Metadata::from_json(newer).unwrap().entrypoint, vec!["/x"]);
    }
}
