//! Copying host files into the image at the same paths, symlinks included.
//!
//! A library found as `/lib/x86_64-linux-gnu/libm.so.6` on a merged-/usr host is
//! `/lib -> usr/lib` plus a real file: the image gets the same symlink and the same file,
//! so that every path the loader or the application uses resolves inside the bundle as it
//! did on the host, and one file is never stored twice under two directory names.
//! Symlink chains (`libfoo.so.1 -> libfoo.so.1.2.3`) are kept link by link.

use super::view::{host_entry, normal_parts, prepend, HostView};
use crate::tree::{ImagePath, Kind, Source, Tree};
use anyhow::{bail, Context, Result};
use bundle_format::ProvidedFile;
use std::fs;
use std::path::Path;

/// Adds files to the tree from the host, recording each one it adds.
pub struct Copier<'a> {
    pub host: &'a HostView,
    pub provided: Vec<ProvidedFile>,
}

impl Copier<'_> {
    /// Makes the host path `path` exist in the image, copying whatever part of it (links,
    /// directories, the file) the image does not have yet. Where the image already has a
    /// component, the image's wins. Returns the image path of the final file or directory.
    pub fn add(&mut self, tree: &mut Tree, path: &Path, reason: &str) -> Result<ImagePath> {
        let mut todo = normal_parts(path);
        let mut cur = ImagePath::root();
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            if part == ".." {
                cur = cur.parent().unwrap_or_else(ImagePath::root);
                continue;
            }
            let next = cur.join(&part).map_err(anyhow::Error::msg)?;
            if tree.get(&next).is_none() {
                self.copy_one(tree, &next, todo.is_empty(), reason)?;
            }
            match &tree.get(&next).expect("present or just copied").kind {
                Kind::Dir => cur = next,
                Kind::Symlink(target) => {
                    hops += 1;
                    if hops > 40 {
                        bail!("too many levels of symlinks in {}", path.display());
                    }
                    if target.is_absolute() {
                        cur = ImagePath::root();
                    }
                    prepend(&mut todo, &target.clone());
                }
                Kind::File(_) | Kind::HardLink(_) if todo.is_empty() => cur = next,
                Kind::File(_) | Kind::HardLink(_) => {
                    bail!("{} is a file in the image, it cannot hold {}", next.absolute(), path.display())
                }
            }
        }
        Ok(cur)
    }

    /// Copies one host entry (not what is below it) to the same path in the image.
    fn copy_one(&mut self, tree: &mut Tree, at: &ImagePath, last: bool, reason: &str) -> Result<()> {
        let host_path = self.host.real(Path::new(&at.absolute()));
        let meta = fs::symlink_metadata(&host_path)
            .with_context(|| format!("cannot read {} on the build host", at.absolute()))?;
        let t = meta.file_type();
        let kind = if t.is_symlink() {
            Kind::Symlink(
                fs::read_link(&host_path).with_context(|| format!("cannot read link {}", host_path.display()))?,
            )
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() && last {
            Kind::File(Source::Host(host_path.clone()))
        } else if t.is_file() {
            bail!("{} is a file, not a directory", host_path.display());
        } else {
            bail!("{} is not a regular file, directory or symlink", host_path.display());
        };
        if kind != Kind::Dir {
            self.provided.push(ProvidedFile {
                path: at.absolute(),
                source: host_path.display().to_string(),
                reason: reason.to_string(),
                package: None,
            });
        }
        tree.insert(at.clone(), host_entry(kind, &meta)).map_err(anyhow::Error::msg)
    }

    /// Adds a host path and, for a directory, everything below it (symlinks are copied
    /// as links, with what they point to, but not descended into). Returns the image
    /// paths of the regular files added or already present.
    pub fn add_recursive(&mut self, tree: &mut Tree, path: &Path, reason: &str) -> Result<Vec<ImagePath>> {
        let at = self.add(tree, path, reason)?;
        let mut files = Vec::new();
        match tree.get(&at).map(|e| &e.kind) {
            Some(Kind::Dir) => {}
            _ => {
                files.push(at);
                return Ok(files);
            }
        }
        let real = self.host.real(path);
        let mut names: Vec<_> = fs::read_dir(&real)
            .with_context(|| format!("cannot list {}", real.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list {}", real.display()))?;
        names.sort();
        for name in names {
            let child = path.join(&name);
            let is_link = fs::symlink_metadata(self.host.real(&child)).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                let target = self.add(tree, &child, reason)?;
                if matches!(tree.get(&target).map(|e| &e.kind), Some(Kind::File(_))) {
                    files.push(target);
                }
            } else {
                files.extend(self.add_recursive(tree, &child, reason)?);
            }
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn directory_symlinks_and_library_chains_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        fs::write(r.join("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"), "elf").unwrap();
        symlink("libfoo.so.1.2.3", r.join("usr/lib/x86_64-linux-gnu/libfoo.so.1")).unwrap();
        let host = HostView { root: r.to_path_buf() };
        let mut c = Copier { host: &host, provided: Vec::new() };
        let mut t = Tree::new(0);
        let got = c.add(&mut t, Path::new("/lib/x86_64-linux-gnu/libfoo.so.1"), "needed by /app").unwrap();
        assert_eq!(got.absolute(), "/usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3");
        let kind = |p: &str| t.get(&ImagePath::new(p).unwrap()).map(|e| e.kind.clone());
        assert_eq!(kind("/lib"), Some(Kind::Symlink("usr/lib".into())));
        assert_eq!(kind("/usr/lib/x86_64-linux-gnu/libfoo.so.1"), Some(Kind::Symlink("libfoo.so.1.2.3".into())));
        let provided: Vec<_> = c.provided.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            provided,
            ["/lib", "/usr/lib/x86_64-linux-gnu/libfoo.so.1", "/usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"]
        );
        // A second path to the same file adds nothing.
        let again = c.add(&mut t, Path::new("/usr/lib/x86_64-linux-gnu/libfoo.so.1"), "x").unwrap();
        assert_eq!(again, got);
        assert_eq!(c.provided.len(), 3);
    }

    #[test]
    fn the_image_wins_where_it_already_has_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib64")).unwrap();
        symlink("usr/lib64", r.join("lib64")).unwrap();
        fs::write(r.join("usr/lib64/ld.so"), "elf").unwrap();
        let host = HostView { root: r.to_path_buf() };
        let mut c = Copier { host: &host, provided: Vec::new() };
        let mut t = Tree::new(0);
        t.insert(ImagePath::new("/lib64/own").unwrap(), host_entry(Kind::Dir, &fs::metadata(r).unwrap())).unwrap();
        let got = c.add(&mut t, Path::new("/lib64/ld.so"), "x").unwrap();
        assert_eq!(got.absolute(), "/lib64/ld.so");
    }
}
