//! A squashfs image as an input (a plain `.sqfs`, or a SIF file's partition): its tree,
//! in any compression squashfs-tools writes, read with backhand and re-encoded by our
//! writer. File contents are staged in a private directory, as for RPMs and layers.

use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use anyhow::{Context, Result};
use backhand::{FilesystemReader, InnerNode};
use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

/// Adds the image at `offset` in `file` to `tree`; returns how many device nodes, FIFOs
/// and sockets were skipped (the runtime binds the host's `/dev`).
pub fn add(tree: &mut Tree, file: &Path, offset: u64, staging: &Path) -> Result<usize> {
    let f = File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let fs = FilesystemReader::from_reader_with_offset(BufReader::new(f), offset)
        .map_err(|e| anyhow::anyhow!("not a readable squashfs image: {e}"))?;
    let (mut skipped, mut staged) = (0, 0usize);
    for node in fs.files() {
        let path = ImagePath::new(&node.fullpath).map_err(anyhow::Error::msg)?;
        let kind = match &node.inner {
            InnerNode::Dir(_) => Kind::Dir,
            InnerNode::Symlink(s) => Kind::Symlink(s.link.clone()),
            InnerNode::File(r) => {
                let dest = staging.join(staged.to_string());
                staged += 1;
                let mut out = File::create(&dest).with_context(|| format!("cannot write {}", dest.display()))?;
                io::copy(&mut fs.file(r).reader(), &mut out)
                    .with_context(|| format!("cannot read {} from the image", path.absolute()))?;
                Kind::File(Source::Host(dest))
            }
            _ => {
                skipped += 1;
                continue;
            }
        };
        let h = &node.header;
        let entry = Entry { kind, mode: u32::from(h.permissions) & 0o7777, uid: h.uid, gid: h.gid, mtime: h.mtime };
        if path.is_root() && entry.kind != Kind::Dir {
            continue;
        }
        tree.insert(path, entry).map_err(anyhow::Error::msg)?;
    }
    Ok(skipped)
}
