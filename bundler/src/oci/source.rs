//! Where an image's blobs are read from: an OCI image layout directory, or a tar archive
//! holding one (`oci-archive`) or a `docker save` tree (`docker-archive`).
//!
//! An archive is not unpacked: its members are indexed once (name → offset and size)
//! and read in place, so a 10 GB archive costs no extra disk before its layers are
//! applied.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

pub enum Blobs {
    Dir(PathBuf),
    Archive { file: PathBuf, members: HashMap<String, (u64, u64)> },
}

impl Blobs {
    pub fn open(path: &Path) -> Result<Blobs> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            return Ok(Blobs::Dir(path.to_path_buf()));
        }
        Ok(Blobs::Archive { file: path.to_path_buf(), members: index_archive(path)? })
    }

    pub fn exists(&self, name: &str) -> bool {
        match self {
            Blobs::Dir(d) => safe_relative(name).is_some_and(|p| d.join(p).is_file()),
            Blobs::Archive { members, .. } => members.contains_key(&normal_name(name)),
        }
    }

    /// A member by its path relative to the layout or archive root.
    pub fn read(&self, name: &str) -> Result<Box<dyn Read>> {
        let Some(rel) = safe_relative(name) else {
            bail!("the image names a blob outside itself: {name}");
        };
        match self {
            Blobs::Dir(d) => {
                let p = d.join(rel);
                Ok(Box::new(File::open(&p).with_context(|| format!("cannot read {}", p.display()))?))
            }
            Blobs::Archive { file, members } => {
                let Some(&(offset, size)) = members.get(&normal_name(name)) else {
                    bail!("{} has no member {name}", file.display());
                };
                let mut f = File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
                f.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(f.take(size)))
            }
        }
    }

    pub fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.read(name)?.read_to_end(&mut v).with_context(|| format!("cannot read {name} of the image"))?;
        Ok(v)
    }

    /// The path of a content-addressed blob, `blobs/sha256/HEX`.
    pub fn blob_name(digest: &str) -> Result<String> {
        match digest.split_once(':') {
            Some((alg, hex)) if !alg.is_empty() && !hex.is_empty() && !hex.contains('/') && !alg.contains('/') => {
                Ok(format!("blobs/{alg}/{hex}"))
            }
            _ => bail!("malformed digest {digest}"),
        }
    }
}

/// Members of a tar archive with their data offsets. Symlinked members (old `docker save`
/// links a repeated layer to its first copy) point at their target's data.
fn index_archive(path: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut archive = tar::Archive::new(f);
    let mut members = HashMap::new();
    let mut links = Vec::new();
    let entries =
        archive.entries().with_context(|| format!("{} is not a directory or a tar archive", path.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("{} is not a directory or a tar archive", path.display()))?;
        let name = normal_name(&e.path()?.to_string_lossy());
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                members.insert(name, (e.raw_file_position(), e.size()));
            }
            tar::EntryType::Symlink => {
                if let Some(target) = e.link_name()? {
                    let dir = Path::new(&name).parent().unwrap_or(Path::new("")).to_path_buf();
                    links.push((name, normal_name(&dir.join(target).to_string_lossy())));
                }
            }
            _ => {}
        }
    }
    for (name, target) in links {
        if let Some(&t) = members.get(&target) {
            members.insert(name, t);
        }
    }
    if members.is_empty() {
        bail!("{} is not a directory or a tar archive", path.display());
    }
    Ok(members)
}

/// `./a/../b` → `b`: member names as lookups use them.
fn normal_name(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or("")),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// A relative path with no `..`: what a blob reference may be.
fn safe_relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    let ok = p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (ok && !name.is_empty()).then(|| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_references_stay_inside() {
        assert!(safe_relative("../etc/passwd").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert_eq!(safe_relative("./blobs/sha256/ab").unwrap(), Path::new("./blobs/sha256/ab"));
        assert!(Blobs::blob_name("sha256:../../x").is_err());
        assert_eq!(Blobs::blob_name("sha256:ab").unwrap(), "blobs/sha256/ab");
        assert_eq!(normal_name("./a/./b"), "a/b");
    }
}
