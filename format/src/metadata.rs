//! The JSON metadata block: what the runtime needs to start the application, and where
//! everything in the image came from.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Digests of what the trailer's digests do not cover directly (version 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrity: Option<Integrity>,
}

/// The chunk table's and the stub's digests: with these in the metadata, the trailer's
/// metadata digest (and so a signature) stands for every byte before the signatures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// Bytes per chunk of the image in the chunk table.
    pub chunk_size: u64,
    /// Hex SHA-256 of the chunk table.
    pub chunks_sha256: String,
    /// Hex SHA-256 of the stub and its padding: bytes 0 to the image offset.
    pub stub_sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageInfo {
    pub compression: String,
    pub level: i32,
    pub block_size: u32,
    /// Number of entries (files, directories, links) in the image.
    pub entries: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// `dir`, `files`, `file`, `rpm`, `oci`, `sif` or `image`.
    pub kind: String,
    /// The path given on the command line.
    pub path: String,
    /// name-version-release.arch for an RPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nevra: Option<String>,
    /// sha256 of the input file (absent for directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The image's own digest, `sha256:…`: of its manifest for an OCI image (what a
    /// registry names it by), of its config (the image id) for a docker archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The name the image was chosen by (`--oci-ref`) or its only name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvidedFile {
    /// Path inside the image.
    pub path: String,
    /// Host path it was copied from.
    pub source: String,
    /// Why it was added (e.g. "needed by /usr/bin/app").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The build host's package that owns `source`, when its package database says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<HostPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPackage {
    /// `dpkg` or `rpm`.
    pub manager: String,
    pub name: String,
    pub version: String,
    /// e.g. `amd64`, `x86_64`; empty when the database does not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arch: String,
}

impl Metadata {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("metadata serialises");
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<Metadata, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
