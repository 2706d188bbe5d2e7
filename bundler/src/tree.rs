//! The staging tree: every path the image will hold, and where its content comes from.
//!
//! Inputs (directories, file lists, RPMs) add entries here; the closure adds more; the
//! image writer turns the finished tree into squashfs. Nothing is copied until the writer
//! reads a [`Source`], so a tree of a 10 GB directory costs only its listing.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A path inside the image, relative to its root, normalised: no leading `/`, no `.` or
/// `..` components, no empty components. The root itself is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImagePath(PathBuf);

impl ImagePath {
    /// Normalises an absolute or relative path given by an input. Any `..` is rejected:
    /// an input must never name a place outside the image root.
    pub fn new(p: impl AsRef<Path>) -> Result<ImagePath, String> {
        let p = p.as_ref();
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(s) => out.push(s),
                Component::ParentDir => return Err(format!("path {} contains `..`", p.display())),
                Component::Prefix(_) => return Err(format!("path {} is not a Unix path", p.display())),
            }
        }
        Ok(ImagePath(out))
    }

    pub fn root() -> ImagePath {
        ImagePath(PathBuf::new())
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    pub fn parent(&self) -> Option<ImagePath> {
        self.0.parent().map(|p| ImagePath(p.to_path_buf()))
    }

    pub fn file_name(&self) -> Option<&std::ffi::OsStr> {
        self.0.file_name()
    }

    pub fn join(&self, name: impl AsRef<Path>) -> Result<ImagePath, String> {
        ImagePath::new(self.0.join(name))
    }

    /// `/usr/bin/app`: the path as the application inside the bundle sees it.
    pub fn absolute(&self) -> String {
        format!("/{}", self.0.display())
    }
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on the build host, read when the image is written.
    Host(PathBuf),
    /// Bytes held in memory (small generated files, empty mount-point files).
    Bytes(Arc<[u8]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Source),
    /// Target exactly as it will be stored; may be relative or absolute.
    Symlink(PathBuf),
    /// Another regular file of the tree sharing this one's inode. The target must be a
    /// `Kind::File` entry.
    HardLink(ImagePath),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits, including setuid/setgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: u32,
}

/// The whole image-to-be, sorted by path so that every walk of it is deterministic.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    entries: BTreeMap<ImagePath, Entry>,
}

impl Tree {
    /// An empty tree holding only its root directory (mode 0755, root-owned).
    pub fn new(mtime: u32) -> Tree {
        let mut entries = BTreeMap::new();
        entries.insert(ImagePath::root(), Entry { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime });
        Tree { entries }
    }

    /// Adds or replaces an entry, creating missing parent directories (root-owned, 0755,
    /// with the entry's time). Fails if a parent exists but is not a directory, or if a
    /// directory that already holds entries would be replaced by something else.
    pub fn insert(&mut self, path: ImagePath, entry: Entry) -> Result<(), String> {
        self.ensure_parents(&path, entry.mtime)?;
        if path.is_root() && entry.kind != Kind::Dir {
            return Err("the image root must be a directory".into());
        }
        let was_dir = self.entries.get(&path).is_some_and(|e| e.kind == Kind::Dir);
        if was_dir && entry.kind != Kind::Dir && self.children(&path).next().is_some() {
            return Err(format!("{} is a directory with contents, it cannot become a file or link", path.absolute()));
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    fn ensure_parents(&mut self, path: &ImagePath, mtime: u32) -> Result<(), String> {
        let mut missing = Vec::new();
        let mut cur = path.parent();
        while let Some(p) = cur {
            match self.entries.get(&p) {
                Some(e) if e.kind == Kind::Dir => break,
                Some(_) => return Err(format!("{} is not a directory, cannot hold {}", p.absolute(), path.absolute())),
                None => {
                    cur = p.parent();
                    missing.push(p);
                }
            }
        }
        for p in missing {
            self.entries.insert(p, Entry { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0, mtime });
        }
        Ok(())
    }

    pub fn get(&self, path: &ImagePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn contains(&self, path: &ImagePath) -> bool {
        self.entries.contains_key(path)
    }

    /// All entries in path order; a directory always comes before its contents.
    pub fn iter(&self) -> impl Iterator<Item = (&ImagePath, &Entry)> {
        self.entries.iter()
    }

    /// Direct children of `dir`, in name order.
    pub fn children<'a>(&'a self, dir: &'a ImagePath) -> impl Iterator<Item = (&'a ImagePath, &'a Entry)> + 'a {
        self.entries
            .range(dir.clone()..)
            .skip(1)
            .take_while(move |(p, _)| dir.is_root() || p.as_path().starts_with(dir.as_path()))
            .filter(move |(p, _)| p.parent().as_ref() == Some(dir))
    }

    /// Everything below `dir` (not `dir` itself), in path order.
    pub fn descendants(&self, dir: &ImagePath) -> Vec<ImagePath> {
        self.entries
            .range(dir.clone()..)
            .skip(1)
            .take_while(|(p, _)| dir.is_root() || p.as_path().starts_with(dir.as_path()))
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Removes one entry (an image layer's whiteout); the caller removes what is below it.
    pub fn remove(&mut self, path: &ImagePath) {
        if !path.is_root() {
            self.entries.remove(path);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Sets every time to `mtime` (reproducible builds with `SOURCE_DATE_EPOCH`).
    pub fn set_all_mtimes(&mut self, mtime: u32) {
        for e in self.entries.values_mut() {
            e.mtime = mtime;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Entry {
        Entry { kind: Kind::File(Source::Bytes(Arc::from(&b"x"[..]))), mode: 0o644, uid: 0, gid: 0, mtime: 1 }
    }

    #[test]
    fn image_paths_are_normalised_and_reject_dotdot() {
        assert_eq!(ImagePath::new("/usr/./bin/").unwrap().as_path(), Path::new("usr/bin"));
        assert!(ImagePath::new("usr/../../etc").is_err());
        assert!(ImagePath::new("/").unwrap().is_root());
    }

    #[test]
    fn insert_creates_parents_and_children_are_direct_only() {
        let mut t = Tree::new(1);
        t.insert(ImagePath::new("/a/b/c").unwrap(), file()).unwrap();
        t.insert(ImagePath::new("/a/d").unwrap(), file()).unwrap();
        t.insert(ImagePath::new("/ab").unwrap(), file()).unwrap();
        let a = ImagePath::new("a").unwrap();
        let names: Vec<_> = t.children(&a).map(|(p, _)| p.absolute()).collect();
        assert_eq!(names, ["/a/b", "/a/d"]);
        let root: Vec<_> = t.children(&ImagePath::root()).map(|(p, _)| p.absolute()).collect();
        assert_eq!(root, ["/a", "/ab"]);
    }

    #[test]
    fn a_directory_with_contents_is_not_replaced_by_a_file() {
        let mut t = Tree::new(1);
        t.insert(ImagePath::new("/a/b").unwrap(), file()).unwrap();
        let err = t.insert(ImagePath::new("/a").unwrap(), file()).unwrap_err();
        assert!(err.contains("/a is a directory with contents"), "{err}");
    }

    #[test]
    fn a_file_cannot_hold_children() {
        let mut t = Tree::new(1);
        t.insert(ImagePath::new("/a").unwrap(), file()).unwrap();
        assert!(t.insert(ImagePath::new("/a/b").unwrap(), file()).is_err());
    }
}
