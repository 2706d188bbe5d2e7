//! fuse mode: the stub serves its own image over FUSE, mounted inside the namespace
//! without `fusermount` (the namespace gives us CAP_SYS_ADMIN over its mounts).
//!
//! The server is a child process that lives exactly as long as the application: the
//! application is the process that Slurm or `mpirun` started (the stub execs it), and
//! the kernel kills the server when its parent dies (`PR_SET_PDEATHSIG`). The image
//! never changes, so the kernel may cache everything forever: long entry and attribute
//! timeouts, `FOPEN_KEEP_CACHE`, cached directories.

use crate::daemon;
use crate::fail::{Context, Error, Result};
use crate::plan::Kind;
use crate::steps::OLDROOT;
use backhand::InnerNode;
use bundle_format::{Image, NodeId};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyStatfs, Request, Session, SessionACL,
};
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::{chdir, chroot, getppid, setsid, Gid, Pid, Uid};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// The image is immutable: what the kernel learnt once stays true.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Opens the FUSE device, or tells why not (`/dev/fuse` is 0600 on some hosts). The
/// kernel accepts the device for a mount only if it was opened in the mount's user
/// namespace, so this is called once to choose the mode and again inside.
pub fn open_device_in(host_root: &Path) -> Result<OwnedFd> {
    open(&host_root.join("dev/fuse"), OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .context(|| "cannot open /dev/fuse".to_string())
}

/// Mounts the image at `at` and starts the server. `mount_points` are paths the image
/// lacks but the plan binds onto: the server shows them as empty entries.
pub fn mount_image(
    dev: OwnedFd,
    image: Arc<Image>,
    mount_points: &[(PathBuf, Kind)],
    at: &Path,
    uid: Uid,
    gid: Gid,
) -> Result<()> {
    let fs = ImageFs::new(image, mount_points, uid, gid)?;
    let opts = format!("fd={},rootmode=40000,user_id={uid},group_id={gid}", dev.as_raw_fd());
    mount(
        Some("bundle"),
        at,
        Some("fuse.bundle"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .context(|| format!("cannot mount the FUSE file system at {}", at.display()))?;
    spawn_server(fs, dev)
}

/// Forks the server and waits until it no longer depends on our mount layout.
fn spawn_server(fs: ImageFs, dev: OwnedFd) -> Result<()> {
    let parent = nix::unistd::getpid();
    let (_, mut ready) = daemon::fork_reporting("the FUSE server", |ready| match serve(fs, dev, parent, ready) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bundle: FUSE server: {}", e.0);
            1
        }
    })?;
    let mut b = [0u8; 1];
    match ready.read(&mut b) {
        Ok(1) => Ok(()),
        _ => Err(Error("the FUSE server failed to start".into())),
    }
}

fn serve(fs: ImageFs, dev: OwnedFd, parent: Pid, mut ready: File) -> Result<()> {
    // Die with the application, whatever kills it (SIGKILL included).
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context(|| "cannot set the parent-death signal".to_string())?;
    if getppid() != parent {
        return Ok(());
    }
    daemon::ignore_job_signals();
    let _ = setsid();
    // The host root, where /dev/fuse is, stays our root whatever the parent pivots to;
    // extra channels (one per thread) are opened by path.
    chroot(OLDROOT).context(|| format!("cannot chroot to {OLDROOT}"))?;
    chdir("/").context(|| format!("cannot enter {OLDROOT}"))?;
    daemon::silence_stdio();
    ready.write_all(b"r").context(|| "cannot report that the FUSE server is ready".to_string())?;
    drop(ready);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let mut config = Config::default();
    config.n_threads = Some(threads);
    config.clone_fd = true;
    let session =
        Session::from_fd(fs, dev, SessionACL::Owner, config).context(|| "cannot start the FUSE session".to_string())?;
    session.run().context(|| "the FUSE session failed".to_string())?;
    Ok(())
}

/// Inode numbers: image node `id` is `id + 1` (so the root is FUSE's 1); the synthetic
/// mount points follow.
struct ImageFs {
    image: Arc<Image>,
    uid: u32,
    gid: u32,
    extra: Vec<(u64, OsString, Kind)>,
    /// Synthetic children of each directory inode, by name.
    extra_children: HashMap<u64, Vec<u64>>,
    /// The kernel can do without `open`/`opendir` (Linux 4.19/5.1): answering ENOSYS
    /// once saves a round trip per opened file, and the kernel then keeps the page cache
    /// and directory cache as `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR` would.
    no_open: bool,
    no_opendir: bool,
}

impl ImageFs {
    fn new(image: Arc<Image>, mount_points: &[(PathBuf, Kind)], uid: Uid, gid: Gid) -> Result<ImageFs> {
        let mut fs = ImageFs {
            image,
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            extra: Vec::new(),
            extra_children: HashMap::new(),
            no_open: false,
            no_opendir: false,
        };
        let mut by_path: HashMap<PathBuf, u64> = HashMap::new();
        for (path, kind) in mount_points {
            if by_path.contains_key(path) {
                continue;
            }
            let parent = path.parent().ok_or_else(|| Error("a mount point cannot be /".into()))?;
            let parent_ino = match by_path.get(parent) {
                Some(&ino) => ino,
                None => fs
                    .image
                    .lookup(parent)
                    .map(|id| id as u64 + 1)
                    .ok_or_else(|| Error(format!("mount point {} has no parent in the image", path.display())))?,
            };
            let ino = fs.image.nodes.len() as u64 + 1 + fs.extra.len() as u64;
            let name = path.file_name().unwrap_or_default().to_owned();
            fs.extra.push((parent_ino, name, *kind));
            fs.extra_children.entry(parent_ino).or_default().push(ino);
            by_path.insert(path.clone(), ino);
        }
        Ok(fs)
    }

    fn node(&self, ino: INodeNo) -> Option<NodeId> {
        let id = ino.0.checked_sub(1)? as usize;
        (id < self.image.nodes.len()).then_some(id)
    }

    fn extra(&self, ino: INodeNo) -> Option<&(u64, OsString, Kind)> {
        let i = ino.0.checked_sub(1 + self.image.nodes.len() as u64)?;
        self.extra.get(i as usize)
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let root_time = UNIX_EPOCH + Duration::from_secs(self.image.nodes[0].header.mtime as u64);
        let (kind, perm, size, uid, gid, mtime) = if let Some(id) = self.node(ino) {
            let n = &self.image.nodes[id];
            let (kind, size) = match &n.inner {
                InnerNode::Dir(_) => (FileType::Directory, 4096),
                InnerNode::File(f) => (FileType::RegularFile, f.file_len() as u64),
                InnerNode::Symlink(l) => (FileType::Symlink, l.link.as_os_str().len() as u64),
                InnerNode::CharacterDevice(_) => (FileType::CharDevice, 0),
                InnerNode::BlockDevice(_) => (FileType::BlockDevice, 0),
                InnerNode::NamedPipe => (FileType::NamedPipe, 0),
                InnerNode::Socket => (FileType::Socket, 0),
            };
            let h = &n.header;
            (kind, h.permissions & 0o7777, size, h.uid, h.gid, UNIX_EPOCH + Duration::from_secs(h.mtime as u64))
        } else {
            let (_, _, k) = self.extra(ino)?;
            match k {
                Kind::Dir => (FileType::Directory, 0o755, 4096, self.uid, self.gid, root_time),
                Kind::File => (FileType::RegularFile, 0o644, 0, self.uid, self.gid, root_time),
            }
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            blksize: self.image.block_size,
            flags: 0,
        })
    }

    /// Inode numbers of a directory's entries, image entries first, then mount points.
    fn children(&self, ino: INodeNo) -> impl Iterator<Item = u64> + '_ {
        let image = self.node(ino).map(|id| &self.image.children[id][..]).unwrap_or(&[]);
        image.iter().map(|&c| c as u64 + 1).chain(self.extra_children.get(&ino.0).into_iter().flatten().copied())
    }

    fn name(&self, ino: u64) -> &OsStr {
        match self.node(INodeNo(ino)) {
            Some(id) => self.image.name(id),
            None => self.extra(INodeNo(ino)).map_or(OsStr::new(""), |e| e.1.as_os_str()),
        }
    }

    fn parent_of(&self, ino: INodeNo) -> u64 {
        if let Some(id) = self.node(ino) {
            let path = &self.image.nodes[id].fullpath;
            return path.parent().and_then(|p| self.image.lookup(p)).map_or(1, |p| p as u64 + 1);
        }
        self.extra(ino).map_or(1, |e| e.0)
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        // Listings carry every entry's attributes, so a walk (`find`, `tar`, a Python
        // import scanning sys.path) needs no lookup round trip per file afterwards.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        self.no_open = config.capabilities().contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = config.capabilities().contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found =
            self.node(parent).and_then(|dir| self.image.child(dir, name)).map(|id| id as u64 + 1).or_else(|| {
                let kids = self.extra_children.get(&parent.0)?;
                kids.iter().copied().find(|&c| self.extra(INodeNo(c)).is_some_and(|e| e.1 == name))
            });
        match found.and_then(|ino| self.attr(INodeNo(ino))) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|id| &self.image.nodes[id].inner) {
            Some(InnerNode::Symlink(l)) => reply.data(l.link.as_os_str().as_encoded_bytes()),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(id) = self.node(ino) else {
            return reply.data(&[]);
        };
        // The kernel asks block-aligned chunks of at most a block: most requests are one
        // piece of one cached block, and are answered from it without a copy.
        let size = size as usize;
        let answer = match self.image.piece_at(id, offset) {
            Ok(Some(piece)) if piece.len() >= size => return reply.data(&piece[..size]),
            Ok(None) => return reply.data(&[]),
            Ok(Some(_)) => {
                let mut buf = vec![0u8; size];
                self.image.read_at(id, offset, &mut buf).map(|n| buf.truncate(n)).map(|()| buf)
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(buf) => reply.data(&buf),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR)
    }

    /// `offset` is the index of the next entry: the kernel resumes a large directory
    /// where the last reply ended, so each call costs only what it returns.
    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let dots = [(ino.0, OsStr::new(".")), (self.parent_of(ino), OsStr::new(".."))];
        let entries = dots.into_iter().chain(self.children(ino).map(|c| (c, self.name(c))));
        for (i, (child, name)) in entries.enumerate().skip(offset as usize) {
            let kind = self.attr(INodeNo(child)).map_or(FileType::RegularFile, |a| a.kind);
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let dots = [(ino.0, OsStr::new(".")), (self.parent_of(ino), OsStr::new(".."))];
        let entries = dots.into_iter().chain(self.children(ino).map(|c| (c, self.name(c))));
        for (i, (child, name)) in entries.enumerate().skip(offset as usize) {
            let Some(attr) = self.attr(INodeNo(child)) else { continue };
            if reply.add(INodeNo(child), i as u64 + 1, name, &TTL, &attr, Generation(0)) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = (self.image.nodes.len() + self.extra.len()) as u64;
        reply.statfs(0, 0, 0, files, 0, self.image.block_size, 255, self.image.block_size)
    }
}
