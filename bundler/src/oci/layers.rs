//! Applies image layers to the staging tree, in order, as a container engine unpacks
//! them: a later layer's entry replaces an earlier one, `.wh.NAME` deletes `NAME` from
//! the layers below, and `.wh..wh..opq` empties its directory of what the layers below
//! put there.
//!
//! Safety: every member path is normalised (absolute paths become relative) and one with
//! `..` is refused; nothing is ever written at a member's path on the host (contents go
//! to numbered files in a private staging directory), so no symlink of the image can
//! lead outside it; a symlink met as a *parent* of a member is followed inside the tree
//! only, as the kernel would inside the container; a hard link must name a file of the
//! image.

use crate::closure;
use crate::inputs::clamp_time;
use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// Applies layers one after the other, staging file contents under one directory.
pub struct Applier<'t> {
    tree: &'t mut Tree,
    staging: PathBuf,
    staged: usize,
    /// Paths the current layer has put: a whiteout in it never removes them.
    this_layer: HashSet<ImagePath>,
    /// Device nodes, FIFOs and sockets skipped (the runtime binds the host's `/dev`).
    pub skipped: usize,
}

impl<'t> Applier<'t> {
    pub fn new(tree: &'t mut Tree, staging: &Path) -> Self {
        Applier { tree, staging: staging.to_path_buf(), staged: 0, this_layer: HashSet::new(), skipped: 0 }
    }

    /// One layer blob, gzip, zstd or uncompressed (told by its first bytes, since
    /// docker archives do not say). Returns the sha256 of the uncompressed tar, the
    /// layer's "diff id".
    pub fn apply(&mut self, blob: impl Read) -> Result<String> {
        let mut raw = BufReader::with_capacity(1 << 16, blob);
        let head = raw.fill_buf().context("cannot read the layer")?.to_vec();
        let tar: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::MultiGzDecoder::new(raw))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::with_buffer(raw).context("cannot start zstd")?)
        } else {
            Box::new(raw)
        };
        let mut hashed = Hashing { inner: tar, hasher: Sha256::new() };
        self.this_layer.clear();
        let mut archive = tar::Archive::new(&mut hashed);
        for member in archive.entries().context("the layer is not a tar archive")? {
            let mut member = member.context("the layer is not a valid tar archive")?;
            let name = member.path().context("a layer member has an unreadable name")?.into_owned();
            self.member(&name, &mut member).with_context(|| format!("layer member {}", name.display()))?;
        }
        // The tar end marker may come before the end of the stream: hash all of it.
        io::copy(&mut hashed, &mut io::sink()).context("cannot read the layer")?;
        Ok(bundle_format::hex(&hashed.hasher.finalize()))
    }

    fn member(&mut self, name: &Path, member: &mut tar::Entry<impl Read>) -> Result<()> {
        let path = ImagePath::new(name).map_err(anyhow::Error::msg)?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if file_name == OPAQUE {
            let dir = self.placed(&path.parent().unwrap_or_else(ImagePath::root))?;
            return self.remove_below(&dir, false);
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT) {
            if hidden.starts_with(".wh.") {
                return Ok(()); // aufs bookkeeping (`.wh..wh.plnk` and the like)
            }
            let dir = self.placed(&path.parent().unwrap_or_else(ImagePath::root))?;
            let gone = dir.join(hidden).map_err(anyhow::Error::msg)?;
            return self.remove_below(&gone, true);
        }
        let header = member.header();
        let (mode, uid, gid) = (header.mode()? & 0o7777, header.uid()? as u32, header.gid()? as u32);
        let mtime = clamp_time(header.mtime().unwrap_or(0) as i64);
        let kind = match header.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(member.link_name()?.context("symlink without target")?.into()),
            tar::EntryType::Link => Kind::HardLink(self.link_target(member)?),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::File(Source::Host(self.stage(member)?))
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                self.skipped += 1;
                return Ok(());
            }
            other => bail!("unsupported tar member type {other:?}"),
        };
        if path.is_root() {
            if kind == Kind::Dir {
                let root = Entry { kind, mode, uid, gid, mtime };
                self.tree.insert(path, root).map_err(anyhow::Error::msg)?;
            }
            return Ok(());
        }
        self.put(path, Entry { kind, mode, uid, gid, mtime })
    }

    /// Puts an entry, replacing what the layers below had there, unless both are
    /// directories (then the contents stay and the directory's own metadata changes).
    fn put(&mut self, path: ImagePath, entry: Entry) -> Result<()> {
        let parent = self.placed(&path.parent().unwrap_or_else(ImagePath::root))?;
        let path = parent.join(path.file_name().unwrap_or_default()).map_err(anyhow::Error::msg)?;
        let both_dirs = entry.kind == Kind::Dir && self.tree.get(&path).is_some_and(|e| e.kind == Kind::Dir);
        if !both_dirs && self.tree.contains(&path) {
            for p in self.tree.descendants(&path) {
                self.tree.remove(&p);
            }
            self.tree.remove(&path);
        }
        self.tree.insert(path.clone(), entry).map_err(anyhow::Error::msg)?;
        self.this_layer.insert(path);
        Ok(())
    }

    /// Where a directory named by a member is in the tree: through symlinks the layers
    /// below made (`/bin` → `usr/bin` on merged-/usr images), inside the tree only.
    fn placed(&self, dir: &ImagePath) -> Result<ImagePath> {
        if dir.is_root() || self.tree.get(dir).is_some_and(|e| e.kind == Kind::Dir) {
            return Ok(dir.clone());
        }
        match closure::resolve(self.tree, dir.as_path()) {
            Some(p) if self.tree.get(&p).is_some_and(|e| e.kind == Kind::Dir) => Ok(p),
            // Missing: the tree creates it as a plain directory.
            None if self.tree.get(dir).is_none() => Ok(dir.clone()),
            _ => bail!("{} is not a directory inside the image", dir.absolute()),
        }
    }

    /// Removes `path` (with `inclusive`) and everything under it that the layers below
    /// put there; what this layer put stays, and so do the directories leading to it.
    fn remove_below(&mut self, path: &ImagePath, inclusive: bool) -> Result<()> {
        let keep: HashSet<ImagePath> =
            self.this_layer.iter().flat_map(|p| std::iter::successors(Some(p.clone()), |p| p.parent())).collect();
        let mut doomed = self.tree.descendants(path);
        if inclusive && self.tree.contains(path) {
            doomed.push(path.clone());
        }
        for p in doomed.into_iter().filter(|p| !keep.contains(p)) {
            self.tree.remove(&p);
        }
        Ok(())
    }

    fn link_target(&self, member: &tar::Entry<impl Read>) -> Result<ImagePath> {
        let target = member.link_name()?.context("hard link without target")?;
        let target = ImagePath::new(&*target).map_err(anyhow::Error::msg)?;
        let dir = self.placed(&target.parent().unwrap_or_else(ImagePath::root))?;
        let target = dir.join(target.file_name().unwrap_or_default()).map_err(anyhow::Error::msg)?;
        match self.tree.get(&target).map(|e| &e.kind) {
            Some(Kind::File(_)) => Ok(target),
            Some(Kind::HardLink(first)) => Ok(first.clone()),
            _ => bail!("hard link to {}, which is not a file of the image", target.absolute()),
        }
    }

    fn stage(&mut self, member: &mut impl Read) -> Result<PathBuf> {
        let p = self.staging.join(self.staged.to_string());
        self.staged += 1;
        let mut f = File::create(&p).with_context(|| format!("cannot write {}", p.display()))?;
        io::copy(member, &mut f).with_context(|| format!("cannot write {}", p.display()))?;
        Ok(p)
    }
}

/// Hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum M<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    fn layer(members: &[M]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for m in members {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            let (name, data): (&str, &[u8]) = match m {
                M::Dir(n) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    (n, b"")
                }
                M::File(n, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    (n, d.as_bytes())
                }
                M::Link(n, t) | M::Hard(n, t) => {
                    let ty = if matches!(m, M::Link(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                    h.set_entry_type(ty);
                    h.set_link_name(t).unwrap();
                    (n, b"")
                }
            };
            h.set_size(data.len() as u64);
            // set_path refuses `..`; write the raw name to test our own check.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(tree: &mut Tree, staging: &Path, layers: &[Vec<u8>]) -> Result<()> {
        let mut a = Applier::new(tree, staging);
        for l in layers {
            a.apply(&l[..])?;
        }
        Ok(())
    }

    fn has(t: &Tree, p: &str) -> bool {
        t.contains(&ImagePath::new(p).unwrap())
    }

    #[test]
    fn whiteouts_and_opaque_directories() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(0);
        let lower = layer(&[
            M::Dir("etc/"),
            M::File("etc/gone", "x"),
            M::File("etc/kept", "x"),
            M::Dir("opt/app/"),
            M::File("opt/app/old", "x"),
            M::Dir("opt/app/sub/"),
            M::File("opt/app/sub/deep", "x"),
        ]);
        let upper = layer(&[
            M::File("etc/.wh.gone", ""),
            // The new file comes before the marker: a layer's own entries survive it.
            M::File("opt/app/new", "y"),
            M::File("opt/app/.wh..wh..opq", ""),
        ]);
        apply(&mut t, d.path(), &[lower, upper]).unwrap();
        assert!(!has(&t, "/etc/gone"));
        assert!(!has(&t, "/etc/.wh.gone"));
        assert!(has(&t, "/etc/kept"));
        assert!(has(&t, "/opt/app/new"));
        assert!(!has(&t, "/opt/app/old"));
        assert!(!has(&t, "/opt/app/sub/deep"));
        assert!(!has(&t, "/opt/app/sub"));
        assert!(!has(&t, "/opt/app/.wh..wh..opq"));
    }

    #[test]
    fn later_layers_replace_and_follow_parent_links_inside() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(0);
        let lower = layer(&[M::Dir("usr/bin/"), M::Link("bin", "usr/bin"), M::Dir("data/"), M::File("data/x", "1")]);
        let upper =
            layer(&[M::File("bin/tool", "t"), M::File("data", "now a file"), M::Hard("/usr/bin/t2", "bin/tool")]);
        apply(&mut t, d.path(), &[lower, upper]).unwrap();
        assert!(has(&t, "/usr/bin/tool"));
        assert!(matches!(t.get(&ImagePath::new("/bin").unwrap()).unwrap().kind, Kind::Symlink(_)));
        assert!(matches!(t.get(&ImagePath::new("/data").unwrap()).unwrap().kind, Kind::File(_)));
        assert!(!has(&t, "/data/x"));
        assert_eq!(
            t.get(&ImagePath::new("/usr/bin/t2").unwrap()).unwrap().kind,
            Kind::HardLink(ImagePath::new("/usr/bin/tool").unwrap())
        );
    }

    #[test]
    fn dotdot_and_escaping_links_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(0);
        let err = apply(&mut t, d.path(), &[layer(&[M::File("a/../../etc/x", "x")])]).unwrap_err();
        assert!(format!("{err:#}").contains(".."), "{err:#}");
        // A parent that is a symlink pointing outside resolves inside the tree (absolute
        // targets start at the image root; `..` stops at it), never on the host.
        let mut t = Tree::new(0);
        let l = layer(&[M::Dir("etc/"), M::Link("esc", "../../../../etc"), M::File("esc/x", "x")]);
        apply(&mut t, d.path(), &[l]).unwrap();
        assert!(has(&t, "/etc/x"));
        let mut t = Tree::new(0);
        let err = apply(&mut t, d.path(), &[layer(&[M::Link("esc", "/nowhere"), M::File("esc/x", "x")])]);
        assert!(format!("{:#}", err.unwrap_err()).contains("not a directory inside the image"));
        let mut t = Tree::new(0);
        let err = apply(&mut t, d.path(), &[layer(&[M::Hard("x", "nowhere")])]).unwrap_err();
        assert!(format!("{err:#}").contains("not a file of the image"), "{err:#}");
    }

    #[test]
    fn gzip_and_zstd_layers_and_their_diff_ids() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let plain = layer(&[M::File("a", "x")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        let want = bundle_format::hex(&Sha256::digest(&plain));
        for blob in [&plain, &gz, &zst] {
            let mut t = Tree::new(0);
            assert_eq!(Applier::new(&mut t, d.path()).apply(&blob[..]).unwrap(), want);
            assert!(has(&t, "/a"));
        }
    }
}
