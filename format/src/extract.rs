//! Unpacking an image into a directory: `bundle extract`, `--bundle-extract`, and the
//! runtime's extract mode.
//!
//! Every entry is created fresh (`O_EXCL`, never through an existing path), below a
//! directory this extraction created itself, from a name that is one plain component:
//! an image cannot make us write outside the target, whatever its names or symlinks say.
//! setuid and setgid bits are dropped; device nodes are skipped (we could not create
//! them, and the runtime binds the host's `/dev` anyway).

use crate::image::{Image, NodeId};
use backhand::InnerNode;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// An io::Error whose message names the path.
fn at<'a>(path: &'a Path, what: &str) -> impl FnOnce(io::Error) -> io::Error + 'a {
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Unpacks the whole image into `dest`, which must not exist or be an empty directory.
pub fn to_dir(image: &Image, dest: &Path) -> io::Result<()> {
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
    let mut dirs = Vec::new();
    extract_dir(image, 0, dest, &mut dirs)?;
    // Directory modes and times last: a read-only directory must first be filled.
    for (id, path) in dirs.iter().rev() {
        finish(image, *id, path)?;
    }
    finish(image, 0, dest)
}

fn extract_dir(image: &Image, dir: NodeId, under: &Path, dirs: &mut Vec<(NodeId, PathBuf)>) -> io::Result<()> {
    for &child in &image.children[dir] {
        let name = image.name(child);
        let path = under.join(plain_name(name)?);
        match &image.nodes[child].inner {
            InnerNode::Dir(_) => {
                fs::create_dir(&path).map_err(at(&path, "cannot create"))?;
                extract_dir(image, child, &path, dirs)?;
                dirs.push((child, path));
            }
            InnerNode::File(_) => {
                write_file(image, child, &path)?;
                finish(image, child, &path)?;
            }
            InnerNode::Symlink(l) => {
                symlink(&l.link, &path).map_err(at(&path, "cannot create symlink"))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A directory entry name must be one ordinary path component.
pub fn plain_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_encoded_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the image holds an invalid file name {name:?}: refusing to extract it"),
        ));
    }
    Ok(name)
}

fn write_file(image: &Image, id: NodeId, path: &Path) -> io::Result<()> {
    let mut out = OpenOptions::new()
        .write(true)
        // O_EXCL: never open through an existing entry, a symlink least of all.
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(at(path, "cannot create"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = image.read_at(id, pos, &mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(at(path, "cannot write"))?;
        pos += n as u64;
    }
    Ok(())
}

/// Mode (without setuid/setgid) and modification time from the image.
fn finish(image: &Image, id: NodeId, path: &Path) -> io::Result<()> {
    let h = &image.nodes[id].header;
    let t = UNIX_EPOCH + Duration::from_secs(h.mtime as u64);
    // Times first: the mode may take our own write permission away.
    File::open(path).and_then(|f| f.set_times(FileTimes::new().set_accessed(t).set_modified(t))).ok();
    let mode = (h.permissions as u32) & 0o1777;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(at(path, "cannot chmod"))
}
