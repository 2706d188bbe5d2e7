//! Unpacking an image into a directory: `bundle extract`, `--bundle-extract`, and the
//! runtime's extract mode.
//!
//! Every entry is created fresh (`O_EXCL`, never through an existing path), below a
//! directory this extraction created itself, from a name that is one plain component
//! (the reader refuses any other): an image cannot make us write outside the target,
//! whatever its names or symlinks say. setuid and setgid bits are dropped; device
//! nodes, fifos and sockets are skipped (we could not create devices, and the runtime
//! binds the host's `/dev` anyway). Hard links stay hard links, holes stay holes.

use crate::{Image, Inode, InodeRef, Kind};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// What an extraction made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Entries created: directories, files, symlinks and hard links.
    pub entries: u64,
    /// Device nodes, fifos and sockets left out.
    pub skipped: u64,
}

/// An io::Error whose message names the path.
fn at<'a>(path: &'a Path, what: &'a str) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Unpacks the whole image into `dest`, which must not exist or be an empty directory.
pub fn to_dir(image: &Image, dest: &Path) -> io::Result<Extracted> {
    match fs::read_dir(dest).map(|d| d.count()) {
        Ok(0) => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is not empty; give a new or empty directory", dest.display()),
            ))
        }
        Err(_) => fs::create_dir(dest).map_err(at(dest, "cannot create"))?,
    }
    let mut done = Extracted::default();
    let mut dirs: Vec<(PathBuf, Inode)> = Vec::new();
    let mut linked: HashMap<InodeRef, PathBuf> = HashMap::new();
    image.walk(|path, inode| {
        let out = dest.join(path.strip_prefix("/").unwrap_or(path));
        match inode.kind {
            Kind::Dir => {
                fs::create_dir(&out).map_err(at(&out, "cannot create"))?;
                dirs.push((out, inode.clone()));
            }
            Kind::File if inode.nlink > 1 && linked.contains_key(&inode.reference) => {
                fs::hard_link(&linked[&inode.reference], &out).map_err(at(&out, "cannot create the hard link"))?;
            }
            Kind::File => {
                write_file(image, inode, &out)?;
                finish(inode, &out)?;
                if inode.nlink > 1 {
                    linked.insert(inode.reference, out);
                }
            }
            Kind::Symlink => {
                let target = OsStr::from_bytes(inode.link_target().unwrap_or_default());
                symlink(target, &out).map_err(at(&out, "cannot create the symlink"))?;
            }
            _ => {
                done.skipped += 1;
                return Ok(());
            }
        }
        done.entries += 1;
        Ok(())
    })?;
    // Directory modes and times last: a read-only directory must first be filled.
    for (path, inode) in dirs.iter().rev() {
        finish(inode, path)?;
    }
    finish(&image.root_inode()?, dest)?;
    Ok(done)
}

/// Writes the file's stored blocks where they belong and leaves its holes as holes.
fn write_file(image: &Image, inode: &Inode, path: &Path) -> io::Result<()> {
    let out = OpenOptions::new()
        .write(true)
        // O_EXCL: never open through an existing entry, a symlink least of all.
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(at(path, "cannot create"))?;
    let mut pos = 0u64;
    while let Some(piece) = image.piece_at(inode, pos).map_err(at(path, "cannot read the image for"))? {
        if piece.is_hole() {
            // Jump over the whole hole, not one block at a time.
            let next = image.next_data(inode, pos).map_err(at(path, "cannot read the image for"))?;
            pos = next.unwrap_or(inode.size).max(pos + piece.len() as u64);
            continue;
        }
        out.write_all_at(&piece, pos).map_err(at(path, "cannot write"))?;
        pos += piece.len() as u64;
    }
    // A trailing hole is written by the length alone.
    out.set_len(inode.size).map_err(at(path, "cannot write"))
}

/// Mode (without setuid/setgid) and modification time from the image.
fn finish(inode: &Inode, path: &Path) -> io::Result<()> {
    let t = UNIX_EPOCH + Duration::from_secs(u64::from(inode.mtime));
    // Times first: the mode may take our own write permission away.
    File::open(path).and_then(|f| f.set_times(FileTimes::new().set_accessed(t).set_modified(t))).ok();
    let mode = u32::from(inode.mode) & 0o1777;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(at(path, "cannot chmod"))
}
