//! Two views of a root filesystem with one interface: the build host's, and the image's
//! (the staging tree). The library search runs the same code over both, the image first.

use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// A read-only root filesystem. Paths are absolute and symlinks are followed.
pub trait View {
    /// The first `n` bytes (fewer if the file is shorter); `None` if not a regular file.
    fn head(&self, path: &Path, n: usize) -> Option<Vec<u8>>;
    fn read(&self, path: &Path) -> Option<Vec<u8>>;
    /// Names in a directory, sorted; empty if it is not one.
    fn list(&self, dir: &Path) -> Vec<OsString>;
    fn is_file(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
}

/// The build host, seen from `root` (`/` except in tests).
pub struct HostView {
    pub root: PathBuf,
}

impl HostView {
    pub fn real(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

impl View for HostView {
    fn head(&self, path: &Path, n: usize) -> Option<Vec<u8>> {
        let f = fs::File::open(self.real(path)).ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let mut buf = Vec::with_capacity(n);
        f.take(n as u64).read_to_end(&mut buf).ok()?;
        Some(buf)
    }

    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let p = self.real(path);
        fs::metadata(&p).ok().filter(|m| m.is_file())?;
        fs::read(p).ok()
    }

    fn list(&self, dir: &Path) -> Vec<OsString> {
        let mut names: Vec<_> =
            fs::read_dir(self.real(dir)).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        names.sort();
        names
    }

    fn is_file(&self, path: &Path) -> bool {
        self.real(path).is_file()
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.real(path).is_dir()
    }
}

/// The image as staged so far.
pub struct TreeView<'t>(pub &'t Tree);

impl TreeView<'_> {
    /// The regular file behind `path` (through symlinks and hard links).
    fn file(&self, path: &Path) -> Option<&Source> {
        let p = resolve(self.0, path)?;
        match &self.0.get(&p)?.kind {
            Kind::File(s) => Some(s),
            _ => None,
        }
    }
}

impl View for TreeView<'_> {
    fn head(&self, path: &Path, n: usize) -> Option<Vec<u8>> {
        match self.file(path)? {
            Source::Bytes(b) => Some(b[..b.len().min(n)].to_vec()),
            Source::Host(p) => HostView { root: "/".into() }.head(p, n),
        }
    }

    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        match self.file(path)? {
            Source::Bytes(b) => Some(b.to_vec()),
            Source::Host(p) => fs::read(p).ok(),
        }
    }

    fn list(&self, dir: &Path) -> Vec<OsString> {
        let Some(d) = resolve(self.0, dir) else { return Vec::new() };
        self.0.children(&d).filter_map(|(p, _)| p.file_name().map(|n| n.to_os_string())).collect()
    }

    fn is_file(&self, path: &Path) -> bool {
        self.file(path).is_some()
    }

    fn is_dir(&self, path: &Path) -> bool {
        resolve(self.0, path).is_some_and(|p| self.0.get(&p).is_some_and(|e| e.kind == Kind::Dir))
    }
}

/// Follows a path through the image as the kernel would inside the bundle: symlinks
/// (absolute targets from the image root, `..` stopping at the root) and, at the end,
/// a hard link to the file that holds its content. `None` if anything is missing.
pub fn resolve(tree: &Tree, path: &Path) -> Option<ImagePath> {
    let mut todo: VecDeque<OsString> = normal_parts(path);
    let mut cur = ImagePath::root();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            cur = cur.parent().unwrap_or_else(ImagePath::root);
            continue;
        }
        let next = cur.join(&part).ok()?;
        match &tree.get(&next)?.kind {
            Kind::Dir => cur = next,
            Kind::Symlink(target) => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                if target.is_absolute() {
                    cur = ImagePath::root();
                }
                prepend(&mut todo, target);
            }
            Kind::File(_) if todo.is_empty() => cur = next,
            Kind::HardLink(to) if todo.is_empty() => cur = to.clone(),
            _ => return None,
        }
    }
    Some(cur)
}

/// `/a/./b/../c` → ["a", "b", "..", "c"]: `..` is kept, it must be applied after any
/// symlink before it is followed.
pub fn normal_parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

pub fn prepend(todo: &mut VecDeque<OsString>, target: &Path) {
    for part in normal_parts(target).into_iter().rev() {
        todo.push_front(part);
    }
}

/// Expands a glob (`*`, `?` and `[...]` in any component) against a view, sorted as
/// glob(3) sorts.
pub fn glob(view: &dyn View, pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("/")];
    for part in normal_parts(pattern) {
        let part = part.to_string_lossy().into_owned();
        let wild = part.contains(['*', '?', '[']);
        found = found
            .into_iter()
            .flat_map(|dir| {
                if !wild {
                    return vec![dir.join(&part)];
                }
                view.list(&dir)
                    .into_iter()
                    .filter(|n| wildmatch(&part, &n.to_string_lossy()))
                    .map(|n| dir.join(n))
                    .collect()
            })
            .collect();
    }
    found.retain(|p| view.is_file(p) || view.is_dir(p));
    found.sort();
    found
}

/// Shell-style matching of one name; a leading `.` must be matched explicitly.
pub fn wildmatch(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches(&p, &n)
}

fn matches(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| matches(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && matches(&p[1..], &n[1..]),
        Some('[') => match (p.iter().position(|&c| c == ']'), n.first()) {
            (Some(end), Some(c)) if end > 1 => {
                let (negate, set) = match p[1] {
                    '!' | '^' => (true, &p[2..end]),
                    _ => (false, &p[1..end]),
                };
                in_set(set, *c) != negate && matches(&p[end + 1..], &n[1..])
            }
            _ => n.first() == Some(&'[') && matches(&p[1..], &n[1..]),
        },
        Some(c) => n.first() == Some(c) && matches(&p[1..], &n[1..]),
    }
}

fn in_set(set: &[char], c: char) -> bool {
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == '-' {
            if set[i] <= c && c <= set[i + 2] {
                return true;
            }
            i += 3;
        } else {
            if set[i] == c {
                return true;
            }
            i += 1;
        }
    }
    false
}

/// A regular file entry for a host file (owner root, host permissions and time).
pub fn host_entry(kind: Kind, meta: &fs::Metadata) -> Entry {
    use std::os::unix::fs::MetadataExt;
    Entry { kind, mode: meta.mode() & 0o7777, uid: 0, gid: 0, mtime: crate::inputs::clamp_time(meta.mtime()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn put(t: &mut Tree, p: &str, kind: Kind) {
        let e = Entry { kind, mode: 0o755, uid: 0, gid: 0, mtime: 0 };
        t.insert(ImagePath::new(p).unwrap(), e).unwrap();
    }

    #[test]
    fn resolve_follows_directory_and_file_symlinks_inside_the_image() {
        let mut t = Tree::new(0);
        put(&mut t, "/usr/lib64/libz.so.1.3", Kind::File(Source::Bytes(Arc::from(&b"z"[..]))));
        put(&mut t, "/usr/lib64/libz.so.1", Kind::Symlink("libz.so.1.3".into()));
        put(&mut t, "/lib64", Kind::Symlink("usr/lib64".into()));
        put(&mut t, "/opt/escape", Kind::Symlink("../../../../lib64/libz.so.1".into()));
        let want = ImagePath::new("/usr/lib64/libz.so.1.3").unwrap();
        assert_eq!(resolve(&t, Path::new("/lib64/libz.so.1")), Some(want.clone()));
        assert_eq!(resolve(&t, Path::new("/opt/escape")), Some(want));
        assert_eq!(resolve(&t, Path::new("/lib64/nothing")), None);
        assert!(TreeView(&t).is_dir(Path::new("/lib64")));
        assert_eq!(TreeView(&t).head(Path::new("/lib64/libz.so.1"), 10).unwrap(), b"z");
    }

    #[test]
    fn wildcards() {
        assert!(wildmatch("*.conf", "libc.conf"));
        assert!(!wildmatch("*.conf", ".hidden.conf"));
        assert!(wildmatch("lib[a-c]?.so", "libb1.so"));
        assert!(!wildmatch("lib[!a-c]?.so", "libb1.so"));
        assert!(!wildmatch("*.conf", "libc.conf~"));
    }
}
