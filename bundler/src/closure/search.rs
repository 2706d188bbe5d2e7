//! Finding a library the way glibc's ld.so does, first in the image, then on the host.
//!
//! Order for a DT_NEEDED name without a `/` (ld.so(8)):
//! 1. DT_RPATH of the requesting object (only if it has no DT_RUNPATH), then of the
//!    objects that loaded it, up to the executable;
//! 2. (LD_LIBRARY_PATH: deliberately not used; the build shell's value says nothing
//!    about the cluster);
//! 3. DT_RUNPATH of the requesting object;
//! 4. ld.so.cache, built from the ld.so.conf directories;
//! 5. the default directories (`/lib64`, `/usr/lib64` or the multiarch ones, `/lib`,
//!    `/usr/lib`).
//!
//! `$ORIGIN`, `$LIB` and `$PLATFORM` are expanded in RPATH/RUNPATH. `$LIB` depends on
//! the loader (`lib64` on Fedora/RHEL, `lib/x86_64-linux-gnu` on Debian), so both are
//! tried. At every step a candidate of another ELF class, byte order or machine is
//! skipped, as ld.so skips it. glibc-hwcaps subdirectories are not searched.
//!
//! The whole order runs over the image first, so that the bundle's own files win over
//! the host's; only then over the host, where step 4 reads the host's real
//! `/etc/ld.so.cache` and step 5 the host's directories.

use super::elf::{platform, triplet, Abi, ElfInfo};
use super::ldconfig::{cache_flags, parse_conf, read_cache, CacheEntry};
use super::view::{HostView, TreeView, View};
use crate::tree::Tree;
use std::path::{Path, PathBuf};

/// Who asks for a library, and the context ld.so would search it in.
pub struct Requester<'a> {
    pub info: &'a ElfInfo,
    /// The directory of the requesting object inside the image (its `$ORIGIN`).
    pub origin: &'a Path,
    /// RPATH directories inherited from the objects that loaded this one, expanded.
    pub inherited: &'a [PathBuf],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Already in the image, at this path.
    Image(PathBuf),
    /// On the build host, at this path (the same path it gets in the image).
    Host(PathBuf),
}

/// The library search configuration of the build host.
pub struct Search {
    pub host: HostView,
    /// Entries of the host's `/etc/ld.so.cache`, in file order.
    host_cache: Vec<CacheEntry>,
    /// The host's `ld.so.conf` directories: searched when its cache is unreadable, and
    /// part of the image's cache since host libraries keep their host paths.
    pub host_conf: Vec<PathBuf>,
    /// The image's own `ld.so.conf` directories, read once: the closure adds none.
    image_conf: Vec<PathBuf>,
}

impl Search {
    pub fn load(host: HostView, tree: &Tree) -> Search {
        let host_cache = host.read(Path::new("/etc/ld.so.cache")).and_then(|b| read_cache(&b)).unwrap_or_default();
        let host_conf = parse_conf(&host, Path::new("/etc/ld.so.conf"));
        Search { host, host_cache, host_conf, image_conf: image_conf_dirs(tree) }
    }

    /// Where ld.so would load `name` from for `req`; `None` if nowhere.
    pub fn find(&self, tree: &Tree, name: &str, req: &Requester) -> Option<Found> {
        let abi = req.info.abi?;
        if name.contains('/') {
            // A path in DT_NEEDED is used as it is (relative ones from the working
            // directory, which cannot be known here).
            let p = Path::new(name);
            return p.is_absolute().then(|| self.at(tree, p, abi)).flatten();
        }
        let own = [expand_all(req.info.effective_rpath(), req.origin, abi), req.inherited.to_vec()].concat();
        let runpath = expand_all(&req.info.runpath, req.origin, abi);
        let defaults = default_dirs(abi);
        let tree_view = TreeView(tree);
        let image_dirs = own.iter().chain(&runpath).chain(&self.image_conf).chain(&defaults);
        for dir in image_dirs {
            let p = dir.join(name);
            if compatible(&tree_view, &p, abi) {
                return Some(Found::Image(p));
            }
        }
        for dir in own.iter().chain(&runpath) {
            let p = dir.join(name);
            if compatible(&self.host, &p, abi) {
                return Some(Found::Host(p));
            }
        }
        if let Some(p) = self.host_cached(name, abi) {
            return Some(Found::Host(p));
        }
        self.host_conf
            .iter()
            .chain(&defaults)
            .map(|d| d.join(name))
            .find(|p| compatible(&self.host, p, abi))
            .map(Found::Host)
    }

    /// An absolute path (a PT_INTERP, a `#!` interpreter), image first.
    pub fn at(&self, tree: &Tree, path: &Path, abi: Abi) -> Option<Found> {
        if compatible(&TreeView(tree), path, abi) {
            Some(Found::Image(path.to_path_buf()))
        } else if compatible(&self.host, path, abi) {
            Some(Found::Host(path.to_path_buf()))
        } else {
            None
        }
    }

    fn host_cached(&self, name: &str, abi: Abi) -> Option<PathBuf> {
        let flags = cache_flags(abi)?;
        self.host_cache
            .iter()
            .filter(|e| e.name == name && e.flags == flags)
            .map(|e| PathBuf::from(&e.path))
            .find(|p| compatible(&self.host, p, abi))
    }
}

/// A regular file of the same ELF ABI as the requester.
fn compatible(view: &dyn View, path: &Path, abi: Abi) -> bool {
    view.head(path, 64).and_then(|h| Abi::from_head(&h)).is_some_and(|a| a == abi)
}

/// The directories the image's own `ld.so.conf` names; packages often drop only a file
/// into `/etc/ld.so.conf.d`, so those are read even without an `ld.so.conf`.
pub fn image_conf_dirs(tree: &Tree) -> Vec<PathBuf> {
    let view = TreeView(tree);
    let mut dirs = parse_conf(&view, Path::new("/etc/ld.so.conf"));
    for d in parse_conf_d(&view) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

fn parse_conf_d(view: &dyn View) -> Vec<PathBuf> {
    super::view::glob(view, Path::new("/etc/ld.so.conf.d/*.conf")).iter().flat_map(|f| parse_conf(view, f)).collect()
}

/// The trusted directories, for the loaders of both Debian and Fedora/RHEL.
pub fn default_dirs(abi: Abi) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(t) = triplet(abi) {
        dirs.push(PathBuf::from(format!("/lib/{t}")));
        dirs.push(PathBuf::from(format!("/usr/lib/{t}")));
    }
    if abi.class64 {
        dirs.push("/lib64".into());
        dirs.push("/usr/lib64".into());
    }
    dirs.push("/lib".into());
    dirs.push("/usr/lib".into());
    dirs
}

pub fn expand_all(entries: &[String], origin: &Path, abi: Abi) -> Vec<PathBuf> {
    entries.iter().flat_map(|e| expand(e, origin, abi)).collect()
}

/// Expands the dynamic string tokens of one RPATH/RUNPATH entry. Empty and relative
/// entries (searched from the working directory at run time) give nothing.
pub fn expand(entry: &str, origin: &Path, abi: Abi) -> Vec<PathBuf> {
    let origin = origin.to_string_lossy();
    let with = |s: &str, token: &str, value: &str| {
        s.replace(&format!("${{{token}}}"), value).replace(&format!("${token}"), value)
    };
    let base = with(&with(entry, "ORIGIN", &origin), "PLATFORM", platform(abi));
    let libs: Vec<String> = if abi.class64 {
        let mut l = vec!["lib64".to_string()];
        l.extend(triplet(abi).map(|t| format!("lib/{t}")));
        l
    } else {
        let mut l = vec!["lib".to_string()];
        l.extend(triplet(abi).map(|t| format!("lib/{t}")));
        l
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for lib in &libs {
        let p = PathBuf::from(with(&base, "LIB", lib));
        if p.is_absolute() && !out.contains(&normalize(&p)) {
            out.push(normalize(&p));
        }
    }
    out
}

/// Removes `.` and applies `..` lexically (`$ORIGIN/../lib`), as ld.so does with the
/// string before opening it.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Entry, ImagePath, Kind, Source};
    use goblin::elf::header::{ELFCLASS32, ELFCLASS64, ELFDATA2LSB, EM_386, EM_X86_64};
    use std::sync::Arc;

    const X86_64: Abi = Abi { class64: true, little_endian: true, machine: EM_X86_64 };

    #[test]
    fn origin_lib_and_platform_are_expanded() {
        let o = Path::new("/opt/app/bin");
        assert_eq!(expand("$ORIGIN/../lib", o, X86_64), [PathBuf::from("/opt/app/lib")]);
        assert_eq!(expand("${ORIGIN}", o, X86_64), [PathBuf::from("/opt/app/bin")]);
        assert_eq!(
            expand("/opt/$LIB/$PLATFORM", o, X86_64),
            [PathBuf::from("/opt/lib64/x86_64"), PathBuf::from("/opt/lib/x86_64-linux-gnu/x86_64")]
        );
        assert!(expand("relative/lib", o, X86_64).is_empty());
        assert!(expand("", o, X86_64).is_empty());
    }

    fn elf_head(class: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = ELFDATA2LSB;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    fn put(t: &mut Tree, p: &str, bytes: Vec<u8>) {
        let e = Entry { kind: Kind::File(Source::Bytes(Arc::from(bytes))), mode: 0o755, uid: 0, gid: 0, mtime: 0 };
        t.insert(ImagePath::new(p).unwrap(), e).unwrap();
    }

    fn empty_host() -> (tempfile::TempDir, Search) {
        let d = tempfile::tempdir().unwrap();
        let s = Search::load(HostView { root: d.path().to_path_buf() }, &Tree::new(0));
        (d, s)
    }

    #[test]
    fn other_class_or_machine_is_skipped_and_runpath_beats_defaults() {
        let mut t = Tree::new(0);
        put(&mut t, "/opt/app/lib/libx.so.1", elf_head(ELFCLASS32, EM_386));
        put(&mut t, "/usr/lib64/libx.so.1", elf_head(ELFCLASS64, EM_X86_64));
        put(&mut t, "/opt/app/lib/liby.so.1", elf_head(ELFCLASS64, EM_X86_64));
        put(&mut t, "/usr/lib64/liby.so.1", elf_head(ELFCLASS64, EM_X86_64));
        let info = ElfInfo { abi: Some(X86_64), runpath: vec!["$ORIGIN/../lib".into()], ..Default::default() };
        let req = Requester { info: &info, origin: Path::new("/opt/app/bin"), inherited: &[] };
        let (_d, s) = empty_host();
        assert_eq!(s.find(&t, "libx.so.1", &req), Some(Found::Image("/usr/lib64/libx.so.1".into())));
        assert_eq!(s.find(&t, "liby.so.1", &req), Some(Found::Image("/opt/app/lib/liby.so.1".into())));
        assert_eq!(s.find(&t, "libnone.so", &req), None);
    }

    #[test]
    fn image_conf_d_and_host_conf_are_searched() {
        let mut t = Tree::new(0);
        put(&mut t, "/etc/ld.so.conf.d/app.conf", b"/opt/app/lib\n".to_vec());
        put(&mut t, "/opt/app/lib/libz.so.1", elf_head(ELFCLASS64, EM_X86_64));
        let info = ElfInfo { abi: Some(X86_64), ..Default::default() };
        let req = Requester { info: &info, origin: Path::new("/usr/bin"), inherited: &[] };
        let (d, _) = empty_host();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::create_dir_all(d.path().join("srv/lib")).unwrap();
        std::fs::write(d.path().join("etc/ld.so.conf"), "/srv/lib\n").unwrap();
        std::fs::write(d.path().join("srv/lib/libq.so.2"), elf_head(ELFCLASS64, EM_X86_64)).unwrap();
        let s = Search::load(HostView { root: d.path().to_path_buf() }, &t);
        assert_eq!(s.find(&t, "libz.so.1", &req), Some(Found::Image("/opt/app/lib/libz.so.1".into())));
        assert_eq!(s.find(&t, "libq.so.2", &req), Some(Found::Host("/srv/lib/libq.so.2".into())));
    }
}
