//! Unpacking an image into a directory: `bundle extract`, `--bundle-extract`, and the
//! runtime's extract mode.
//!
//! Every entry is created fresh (`O_EXCL`, never through an existing path), from a name
//! that is one plain component (the reader refuses any other), relative to a descriptor
//! of the directory that this extraction created and opened itself: nothing is ever
//! created, written, chmodded or timed by path. So neither the image (whatever its
//! names or symlinks say) nor another process that can write into the target while we
//! unpack (swapping one of our directories for a symlink, say) can make us touch
//! anything outside the target. A directory gets its mode and times when the walk
//! leaves it, through the descriptor it was made with; the one path resolved again, the
//! first name of a hard link, is resolved below the target's descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or one `O_NOFOLLOW` component at a
//! time on kernels before 5.6. Paths are never handed to the kernel whole, so a tree
//! nested deeper than PATH_MAX unpacks too.
//!
//! setuid and setgid bits are dropped; device nodes, fifos and sockets are skipped (we
//! could not create devices, and the runtime binds the host's `/dev` anyway). Hard
//! links stay hard links, holes stay holes.

use crate::{Image, Inode, InodeRef, Kind};
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File, FileTimes};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// What an extraction made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Entries created: directories, files, symlinks and hard links.
    pub entries: u64,
    /// Device nodes, fifos and sockets left out.
    pub skipped: u64,
}

/// An io::Error whose message names the path (its middle left out if it is long).
fn at<'a>(path: &'a Path, what: &'a str) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", crate::short_path(path)))
}

/// Unpacks the whole image into `dest`, which must not exist or be an empty directory.
pub fn to_dir(image: &Image, dest: &Path) -> io::Result<Extracted> {
    let root = open_target(dest)?;
    let mut done = Extracted::default();
    // The directories from the root down to the one the walk is in, each with what its
    // mode and times will be: the walk gives each directory before what it holds, so
    // the parent of an entry of depth `n` is `open[n - 1]`, and a directory whose
    // entries are all made is the one left behind when the walk goes up.
    let mut open: Vec<(OwnedFd, Option<(PathBuf, Inode)>)> = vec![(root.try_clone()?, None)];
    let mut linked: HashMap<InodeRef, PathBuf> = HashMap::new();
    image.walk(|path, inode| {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let out = dest.join(rel);
        let depth = rel.components().count();
        while open.len() > depth {
            close_dir(open.pop().expect("deeper than the root"), dest)?;
        }
        let parent = &open.last().ok_or_else(|| io::Error::other("the walk left the root"))?.0;
        let name = cstring(rel.file_name().unwrap_or_default().as_bytes(), &out)?;
        match inode.kind {
            Kind::Dir => {
                // SAFETY: a NUL-terminated name relative to a directory fd we own.
                check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) })
                    .map_err(at(&out, "cannot create"))?;
                let fd = openat(parent, &name, libc::O_RDONLY | libc::O_DIRECTORY).map_err(at(&out, "cannot open"))?;
                open.push((fd, Some((rel.to_path_buf(), inode.clone()))));
            }
            Kind::File if inode.nlink > 1 && linked.contains_key(&inode.reference) => {
                let first = &linked[&inode.reference];
                let first_dir = open_beneath(&root, first.parent().unwrap_or(Path::new("")))
                    .map_err(at(&dest.join(first), "cannot open the first link of"))?;
                let first_name = cstring(first.file_name().unwrap_or_default().as_bytes(), &out)?;
                // SAFETY: NUL-terminated names relative to directory fds we own; flags 0:
                // a symlink put in the first link's place is linked as itself, not followed.
                check(unsafe {
                    libc::linkat(first_dir.as_raw_fd(), first_name.as_ptr(), parent.as_raw_fd(), name.as_ptr(), 0)
                })
                .map_err(at(&out, "cannot create the hard link"))?;
            }
            Kind::File => {
                let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
                let file = File::from(openat(parent, &name, flags).map_err(at(&out, "cannot create"))?);
                write_file(image, inode, &file, &out)?;
                finish(inode, &file, &out)?;
                if inode.nlink > 1 {
                    linked.insert(inode.reference, rel.to_path_buf());
                }
            }
            Kind::Symlink => {
                let target = cstring(inode.link_target().unwrap_or_default(), &out)?;
                // SAFETY: NUL-terminated strings, a directory fd we own.
                check(unsafe { libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), name.as_ptr()) })
                    .map_err(at(&out, "cannot create the symlink"))?;
            }
            _ => {
                done.skipped += 1;
                return Ok(());
            }
        }
        done.entries += 1;
        Ok(())
    })?;
    while let Some(dir) = open.pop() {
        close_dir(dir, dest)?;
    }
    finish(&image.root_inode()?, &File::from(root), dest)?;
    Ok(done)
}

/// A directory whose entries are all made gets its mode and times, through the
/// descriptor we made it with: after its contents (a read-only directory must first be
/// filled), and never by a path that could have been swapped since.
fn close_dir((fd, made): (OwnedFd, Option<(PathBuf, Inode)>), dest: &Path) -> io::Result<()> {
    match made {
        Some((rel, inode)) => finish(&inode, &File::from(fd), &dest.join(rel)),
        None => Ok(()), // the root, finished last
    }
}

/// Creates `dest`, or takes it if it is an empty directory, and opens it. The one path
/// this extraction resolves by name: the caller's.
fn open_target(dest: &Path) -> io::Result<OwnedFd> {
    let created = match fs::create_dir(dest) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(at(dest, "cannot create")(e)),
    };
    let c = cstring(dest.as_os_str().as_bytes(), dest)?;
    // O_NOFOLLOW for a directory we just made: it must still be ours, not a symlink.
    let nofollow = if created { libc::O_NOFOLLOW } else { 0 };
    // SAFETY: a NUL-terminated path; the fd returned is new and owned from here on.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | nofollow) };
    let root = fd_or_error(fd).map_err(at(dest, "cannot open"))?;
    if !created {
        // Emptiness is checked on the directory we hold, not on whatever the path
        // names by now.
        let listing = fs::read_dir(format!("/proc/self/fd/{}", root.as_raw_fd())).map_err(at(dest, "cannot list"))?;
        if listing.count() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is not empty; give a new or empty directory", dest.display()),
            ));
        }
    }
    Ok(root)
}

/// Writes the file's stored blocks where they belong and leaves its holes as holes.
fn write_file(image: &Image, inode: &Inode, out: &File, path: &Path) -> io::Result<()> {
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

/// Mode (without setuid/setgid) and modification time from the image, through the
/// descriptor (`futimens`, `fchmod`): never through a path.
fn finish(inode: &Inode, f: &File, path: &Path) -> io::Result<()> {
    let t = UNIX_EPOCH + Duration::from_secs(u64::from(inode.mtime));
    // Times first: the mode may take our own write permission away.
    f.set_times(FileTimes::new().set_accessed(t).set_modified(t)).ok();
    let mode = u32::from(inode.mode) & 0o1777;
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(at(path, "cannot chmod"))
}

/// Opens the directory `rel` below `root` without following any symlink and without
/// leaving `root`: `openat2` where the kernel has it, else one `O_NOFOLLOW` component
/// at a time.
fn open_beneath(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let c = cstring(rel.as_os_str().as_bytes(), rel)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: open_how is plain integers, for which zero is a valid value (and the
    // value the kernel wants in fields it does not know).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    let path = if rel.as_os_str().is_empty() { c"." } else { c.as_c_str() };
    // SAFETY: openat2 with a valid open_how of the size we pass and a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, root.as_raw_fd(), path.as_ptr(), &how, std::mem::size_of::<libc::open_how>())
    };
    match fd_or_error(fd as i32) {
        // ENOSYS: before Linux 5.6; EPERM: a seccomp filter that does not know it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => walk_beneath(root, rel),
        other => other,
    }
}

/// `open_beneath` without `openat2`: each component must be a plain name and a real
/// directory (`O_NOFOLLOW | O_DIRECTORY`), opened from the one before it.
fn walk_beneath(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let mut cur = root.try_clone()?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a plain path below the target"));
        };
        cur = openat(&cur, &cstring(name.as_bytes(), rel)?, libc::O_RDONLY | libc::O_DIRECTORY)?;
    }
    Ok(cur)
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600)`: one component, never
/// through a symlink.
fn openat(dir: &OwnedFd, name: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name relative to a directory fd we own.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600) };
    fd_or_error(fd)
}

fn fd_or_error(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(ret: i32) -> io::Result<()> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A name or path for a system call; `path` names it in the error.
fn cstring(bytes: &[u8], path: &Path) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        let e = io::Error::new(io::ErrorKind::InvalidData, format!("{:?} holds a NUL byte", OsStr::from_bytes(bytes)));
        at(path, "cannot create")(e)
    })
}
