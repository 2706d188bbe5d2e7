//! A walk over the whole tree, for listing and extraction: depth first, each directory
//! before what it holds, names in order.

use super::dir::Entries;
use super::inode::{Inode, InodeRef, Kind};
use super::{corrupt, Image};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Deeper than any path Linux can name (PATH_MAX is 4096 bytes): only a hostile image
/// nests further.
const MAX_DEPTH: usize = 2048;

impl Image {
    /// Calls `visit` with the path and inode of every entry below the root, a directory
    /// before its contents. A directory met twice (a loop, or a directory with two
    /// parents) is an error: the image is damaged.
    pub fn walk(&self, mut visit: impl FnMut(&Path, &Inode) -> io::Result<()>) -> io::Result<()> {
        let root = self.root_inode()?;
        let mut seen: HashSet<InodeRef> = HashSet::from([root.reference]);
        let mut stack: Vec<(PathBuf, Entries<'_>)> =
            vec![(PathBuf::from("/"), self.entries(&root, Default::default())?)];
        while let Some((dir, entries)) = stack.last_mut() {
            let Some(next) = entries.next() else {
                stack.pop();
                continue;
            };
            let (entry, _) = next?;
            let path = dir.join(OsStr::from_bytes(&entry.name));
            let inode = self.inode(entry.inode)?;
            visit(&path, &inode)?;
            if inode.kind == Kind::Dir {
                if !seen.insert(inode.reference) {
                    let path = crate::short_path(&path);
                    return Err(corrupt(format!("the directory {path} appears twice (a loop?)")));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(corrupt(format!("directories nest more than {MAX_DEPTH} deep")));
                }
                let entries = self.entries(&inode, Default::default())?;
                stack.push((path, entries));
            }
        }
        Ok(())
    }
}
