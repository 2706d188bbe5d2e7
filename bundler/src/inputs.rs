//! Inputs that are already on the build host: a directory tree, a file list, single files.
//!
//! Owners are normalised to root (0:0): a bundle runs on other machines, where the build
//! user's uid means nothing. Modes and link targets are kept as they are; device nodes,
//! FIFOs and sockets are skipped with a warning (the runtime binds the host's `/dev`).

use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Adds host files to a tree, remembering hard links across all inputs of one build.
pub struct HostInputs<'t> {
    tree: &'t mut Tree,
    /// (device, inode) of multiply-linked files already added → their image path.
    links: HashMap<(u64, u64), ImagePath>,
    /// Symlinks put at their own host path (a file list's `/bin/sh`): the closure brings
    /// their targets from the host when the inputs do not have them.
    pub own_place_links: Vec<ImagePath>,
    pub warnings: Vec<String>,
}

impl<'t> HostInputs<'t> {
    pub fn new(tree: &'t mut Tree) -> Self {
        HostInputs { tree, links: HashMap::new(), own_place_links: Vec::new(), warnings: Vec::new() }
    }

    /// The whole tree under `root` becomes the image root.
    pub fn add_root_dir(&mut self, root: &Path) -> Result<()> {
        let meta = fs::metadata(root).with_context(|| format!("cannot read directory {}", root.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a directory", root.display());
        }
        self.add_path(root, &ImagePath::root(), false)
    }

    /// A file list: one `SRC` or `SRC=DEST` a line; blank lines and `#` comments are
    /// skipped. A relative SRC is taken from the list's own directory.
    pub fn add_list(&mut self, list: &Path) -> Result<()> {
        let text = fs::read_to_string(list).with_context(|| format!("cannot read file list {}", list.display()))?;
        let base = list.parent().unwrap_or(Path::new("."));
        for l in parse_list(&text) {
            self.add_spec(&base.join(l.src), l.dest)
                .with_context(|| format!("{}:{}: {}", list.display(), l.number, l.text))?;
        }
        Ok(())
    }

    /// `--file SRC[=DEST]`: a file or directory put at DEST (default: the same path).
    pub fn add_file_spec(&mut self, spec: &str) -> Result<()> {
        let (src, dest) = split_spec(spec);
        self.add_spec(Path::new(src), dest)
    }

    fn add_spec(&mut self, src: &Path, dest: Option<&str>) -> Result<()> {
        let own_place = dest.is_none();
        let dest = match dest {
            Some(d) => ImagePath::new(d).map_err(anyhow::Error::msg)?,
            // At its own place: the host's symlinked parents come too (on merged-/usr,
            // `/bin/sh` is `/bin -> usr/bin` and `usr/bin/sh`), so that every path to it
            // resolves in the image as on the host.
            None if src.is_absolute() => self.own_place(src)?,
            None => bail!("{}: a relative source needs a destination (SRC=DEST)", src.display()),
        };
        if dest.is_root() && !src.is_dir() {
            bail!("{}: only a directory can become the image root", src.display());
        }
        self.add_path(src, &dest, own_place)
    }

    /// Where a host path lands when put at its own place: its parent directory as the
    /// host has it, symlinks included (where the image already has a parent, the
    /// image's wins).
    fn own_place(&mut self, src: &Path) -> Result<ImagePath> {
        let at = ImagePath::new(src).map_err(anyhow::Error::msg)?;
        let (Some(parent), Some(name)) = (src.parent(), at.file_name()) else {
            return Ok(at);
        };
        let dir = crate::closure::host_directory(self.tree, parent)?;
        dir.join(name).map_err(anyhow::Error::msg)
    }

    /// Adds `src` (recursively if it is a directory, not following symlinks) at `dest`.
    /// `own_place`: `dest` is `src`'s own host path.
    fn add_path(&mut self, src: &Path, dest: &ImagePath, own_place: bool) -> Result<()> {
        let meta = fs::symlink_metadata(src).with_context(|| format!("cannot read {}", src.display()))?;
        let Some(kind) = self.kind_of(src, &meta, dest)? else {
            return Ok(());
        };
        let is_dir = kind == Kind::Dir;
        if own_place && matches!(kind, Kind::Symlink(_)) {
            self.own_place_links.push(dest.clone());
        }
        let entry = Entry { kind, mode: meta.mode() & 0o7777, uid: 0, gid: 0, mtime: clamp_time(meta.mtime()) };
        self.tree.insert(dest.clone(), entry).map_err(anyhow::Error::msg)?;
        if is_dir {
            let mut names: Vec<_> = fs::read_dir(src)
                .with_context(|| format!("cannot list {}", src.display()))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .with_context(|| format!("cannot list {}", src.display()))?;
            names.sort();
            for name in names {
                let child = dest.join(&name).map_err(anyhow::Error::msg)?;
                self.add_path(&src.join(&name), &child, own_place)?;
            }
        }
        Ok(())
    }

    fn kind_of(&mut self, src: &Path, meta: &Metadata, dest: &ImagePath) -> Result<Option<Kind>> {
        let t = meta.file_type();
        Ok(Some(if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink(fs::read_link(src).with_context(|| format!("cannot read link {}", src.display()))?)
        } else if t.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    if self.tree.contains(first) && first != dest {
                        return Ok(Some(Kind::HardLink(first.clone())));
                    }
                }
                self.links.insert((meta.dev(), meta.ino()), dest.clone());
            }
            // Absolute: the closure reads it through a view rooted at `/`.
            Kind::File(Source::Host(absolute(src)))
        } else {
            let what = if t.is_block_device() || t.is_char_device() {
                "device node"
            } else if t.is_fifo() {
                "FIFO"
            } else {
                "socket"
            };
            self.warnings.push(format!("skipped {what} {}", src.display()));
            return Ok(None);
        }))
    }
}

/// One line of a file list that names something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListLine<'a> {
    /// 1-based, for messages.
    pub number: usize,
    /// The line, trimmed.
    pub text: &'a str,
    pub src: &'a str,
    pub dest: Option<&'a str>,
}

/// The lines of a file list that name something: blank lines and `#` comments are
/// skipped. Pure text, no file system: the fuzz target `filelist` calls it too.
pub fn parse_list(text: &str) -> impl Iterator<Item = ListLine<'_>> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (src, dest) = split_spec(line);
        Some(ListLine { number: n + 1, text: line, src, dest })
    })
}

fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('=') {
        Some((s, d)) => (s.trim(), Some(d.trim())),
        None => (spec.trim(), None),
    }
}

/// squashfs stores 32-bit unsigned times.
pub fn clamp_time(t: i64) -> u32 {
    t.clamp(0, u32::MAX as i64) as u32
}

/// Absolute form of a host path, for messages and provenance.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn directory_tree_with_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("bin")).unwrap();
        fs::write(r.join("bin/a"), "x").unwrap();
        fs::hard_link(r.join("bin/a"), r.join("bin/b")).unwrap();
        symlink("a", r.join("bin/c")).unwrap();
        let mut tree = Tree::new(0);
        let mut inputs = HostInputs::new(&mut tree);
        inputs.add_root_dir(r).unwrap();
        let get = |p: &str| tree.get(&ImagePath::new(p).unwrap()).unwrap().kind.clone();
        assert!(matches!(get("/bin/a"), Kind::File(_)));
        assert_eq!(get("/bin/b"), Kind::HardLink(ImagePath::new("/bin/a").unwrap()));
        assert_eq!(get("/bin/c"), Kind::Symlink("a".into()));
    }

    #[test]
    fn file_list_with_destinations_and_comments() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("tool"), "x").unwrap();
        fs::write(d.path().join("list"), "# comment\n\ntool=/usr/bin/tool\n").unwrap();
        let mut tree = Tree::new(0);
        HostInputs::new(&mut tree).add_list(&d.path().join("list")).unwrap();
        assert!(tree.contains(&ImagePath::new("/usr/bin/tool").unwrap()));
    }

    #[test]
    fn dotdot_destination_is_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "x").unwrap();
        let spec = format!("{}=/../../etc/x", d.path().join("f").display());
        let mut tree = Tree::new(0);
        let err = HostInputs::new(&mut tree).add_file_spec(&spec).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
    }
}
