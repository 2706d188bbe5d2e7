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
use bundle_squashfs::{DirCookie, Image, Inode, InodeRef, Kind as NodeKind};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, Request, Session, SessionACL,
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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
/// lacks but the plan binds onto: the server shows them as empty entries. With
/// `as_callers`, every entry shows as owned by `uid`:`gid` (as an extracted tree is):
/// an overlay above can then copy entries up, which it cannot for owners the user
/// namespace does not map.
pub fn mount_image(
    dev: OwnedFd,
    served: Served,
    mount_points: &[(PathBuf, Kind)],
    as_callers: bool,
    at: &Path,
) -> Result<()> {
    let (uid, gid) = (served.uid, served.gid);
    let mut fs = ImageFs::new(served.image, mount_points, uid, gid)?;
    fs.as_callers = as_callers;
    fs.program = served.program;
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

/// What the FUSE server serves, and as whom.
pub struct Served {
    pub image: Arc<Image>,
    pub uid: Uid,
    pub gid: Gid,
    /// The program the container runs first, when the image has it: its first blocks
    /// are decompressed, and their chunks checked, while the keeper is still binding
    /// mounts, instead of when the program's `execve` asks for them.
    pub program: Option<Inode>,
}

/// How much of the first program is read ahead: a quarter of the data cache, so that
/// it is still there when the program asks (the bench's static `true` is 760 KB).
const PROGRAM_AHEAD: u64 = 2 << 20;

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
    daemon::name("bundle-fuse");
    let _ = setsid();
    // The host root, where /dev/fuse is, stays our root whatever the parent pivots to;
    // extra channels (one per thread) are opened by path.
    chroot(OLDROOT).context(|| format!("cannot chroot to {OLDROOT}"))?;
    chdir("/").context(|| format!("cannot enter {OLDROOT}"))?;
    crate::integrity::keep_stderr();
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

/// FUSE inode numbers. The root is FUSE's 1; every other image inode is its inode
/// reference plus 2, so hard links are one inode and a lookup needs no table; the mount
/// points the image lacks are numbered from [`EXTRA_INO`].
const EXTRA_INO: u64 = 1 << 56;

/// Readdir offsets: 1 and 2 follow `.` and `..`; an image entry's is its listing cookie
/// plus 3; a mount point's is its index from [`EXTRA_OFFSET`].
const EXTRA_OFFSET: u64 = 1 << 62;

/// A mount point the image lacks: an empty directory or file in a directory.
struct Extra {
    parent: u64,
    name: OsString,
    kind: Kind,
}

struct ImageFs {
    image: Arc<Image>,
    root: InodeRef,
    uid: u32,
    gid: u32,
    /// Show every entry as `uid`'s and `gid`'s.
    as_callers: bool,
    extra: Vec<Extra>,
    /// Synthetic children of each directory inode.
    extra_children: HashMap<u64, Vec<u64>>,
    /// The parent of each directory the kernel looked up, for `..` in listings (the
    /// image names a directory's parent by number, which only an export table maps).
    parents: Mutex<HashMap<u64, u64>>,
    /// The kernel can do without `open`/`opendir` (Linux 4.19/5.1): answering ENOSYS
    /// once saves a round trip per opened file, and the kernel then keeps the page cache
    /// and directory cache as `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR` would.
    no_open: bool,
    no_opendir: bool,
    /// See [`Served::program`].
    program: Option<Inode>,
    /// The bundle's path, and the damaged chunks already reported (each once).
    bundle: String,
    reported: Mutex<Vec<String>>,
}

/// Damaged chunks reported, at most.
const REPORTS: usize = 32;

enum Node {
    Image(Inode),
    Extra(usize),
}

impl ImageFs {
    fn new(image: Arc<Image>, mount_points: &[(PathBuf, Kind)], uid: Uid, gid: Gid) -> Result<ImageFs> {
        let mut fs = ImageFs {
            root: image.root(),
            image,
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            as_callers: false,
            extra: Vec::new(),
            extra_children: HashMap::new(),
            parents: Mutex::new(HashMap::new()),
            no_open: false,
            no_opendir: false,
            program: None,
            bundle: crate::integrity::name(),
            reported: Mutex::new(Vec::new()),
        };
        let mut by_path: HashMap<PathBuf, u64> = HashMap::new();
        for (path, kind) in mount_points {
            if by_path.contains_key(path) {
                continue;
            }
            let parent = path.parent().ok_or_else(|| Error("a mount point cannot be /".into()))?;
            let parent_ino = match by_path.get(parent) {
                Some(&ino) => ino,
                None => match fs.image.lookup_path(parent) {
                    Ok(Some(dir)) if dir.kind == NodeKind::Dir => fs.ino(dir.reference),
                    Ok(_) => return Err(Error(format!("mount point {} has no parent in the image", path.display()))),
                    Err(e) => return Err(Error(format!("cannot look up {} in the image: {e}", parent.display()))),
                },
            };
            let ino = EXTRA_INO + fs.extra.len() as u64;
            let name = path.file_name().unwrap_or_default().to_owned();
            fs.extra.push(Extra { parent: parent_ino, name, kind: *kind });
            fs.extra_children.entry(parent_ino).or_default().push(ino);
            by_path.insert(path.clone(), ino);
        }
        Ok(fs)
    }

    /// `EIO` for a failed read; a damaged chunk (the reader's `InvalidData`) is also
    /// told to the process that asked, once a chunk.
    fn eio(&self, req: &Request, e: &std::io::Error) -> Errno {
        if e.kind() == std::io::ErrorKind::InvalidData {
            let what = e.to_string();
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if reported.len() < REPORTS && !reported.contains(&what) {
                crate::integrity::tell(req.pid(), &self.bundle, &what);
                reported.push(what);
            }
        }
        Errno::EIO
    }

    fn ino(&self, r: InodeRef) -> u64 {
        if r == self.root {
            1
        } else {
            r.0 + 2
        }
    }

    fn node(&self, ino: INodeNo) -> std::result::Result<Node, Errno> {
        let r = match ino.0 {
            1 => self.root,
            n if n >= EXTRA_INO => {
                let i = (n - EXTRA_INO) as usize;
                return if i < self.extra.len() { Ok(Node::Extra(i)) } else { Err(Errno::ENOENT) };
            }
            n => InodeRef(n.checked_sub(2).ok_or(Errno::ENOENT)?),
        };
        self.image.inode(r).map(Node::Image).map_err(|_| Errno::EIO)
    }

    fn inode(&self, ino: INodeNo) -> std::result::Result<Inode, Errno> {
        match self.node(ino)? {
            Node::Image(i) => Ok(i),
            Node::Extra(_) => Err(Errno::ENOENT),
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size, nlink, uid, gid, mtime, rdev) = match node {
            Node::Image(n) => {
                let kind = file_type(n.kind);
                let size = if kind == FileType::Directory { 4096 } else { n.size };
                let (uid, gid) = if self.as_callers { (self.uid, self.gid) } else { (n.uid, n.gid) };
                (kind, n.mode, size, n.nlink.max(1), uid, gid, n.mtime, n.rdev)
            }
            Node::Extra(i) => match self.extra[*i].kind {
                Kind::Dir => (FileType::Directory, 0o755, 4096, 2, self.uid, self.gid, self.image.mkfs_time(), 0),
                Kind::File => (FileType::RegularFile, 0o644, 0, 1, self.uid, self.gid, self.image.mkfs_time(), 0),
            },
        };
        let mtime = UNIX_EPOCH + Duration::from_secs(u64::from(mtime));
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev,
            blksize: self.image.block_size(),
            flags: 0,
        }
    }

    fn parent_of(&self, ino: u64) -> u64 {
        if ino >= EXTRA_INO {
            return self.extra.get((ino - EXTRA_INO) as usize).map_or(1, |e| e.parent);
        }
        self.parents.lock().unwrap_or_else(|e| e.into_inner()).get(&ino).copied().unwrap_or(1)
    }

    /// The entries of a directory from a readdir offset on, each with its inode, type,
    /// name and the offset that resumes after it; `attrs` also decodes each entry's inode.
    fn listing(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> std::result::Result<(), Errno> {
        let dir = match self.node(ino)? {
            Node::Image(d) if d.kind == NodeKind::Dir => Some(d),
            Node::Image(_) => return Err(Errno::ENOTDIR),
            Node::Extra(i) if self.extra[i].kind == Kind::Dir => None,
            Node::Extra(_) => return Err(Errno::ENOTDIR),
        };
        if offset == 0 && add(ino.0, 1, FileType::Directory, OsStr::new(".")) {
            return Ok(());
        }
        if offset <= 1 && add(self.parent_of(ino.0), 2, FileType::Directory, OsStr::new("..")) {
            return Ok(());
        }
        let mut extra_from = 0;
        if offset >= EXTRA_OFFSET {
            extra_from = (offset - EXTRA_OFFSET) as usize;
        } else if let Some(dir) = dir {
            let cookie = DirCookie(offset.saturating_sub(3));
            let entries = self.image.entries(&dir, cookie).map_err(|_| Errno::EIO)?;
            for item in entries {
                let (e, next) = item.map_err(|_| Errno::EIO)?;
                if add(self.ino(e.inode), next.0 + 3, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                    return Ok(());
                }
            }
        }
        for (k, &child) in self.extra_children.get(&ino.0).into_iter().flatten().enumerate().skip(extra_from) {
            let e = &self.extra[(child - EXTRA_INO) as usize];
            let kind = if e.kind == Kind::Dir { FileType::Directory } else { FileType::RegularFile };
            if add(child, EXTRA_OFFSET + k as u64 + 1, kind, &e.name) {
                return Ok(());
            }
        }
        Ok(())
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
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
        // The server's own process: threads made before the fork would not be here.
        self.image.start_readahead();
        if let Some(program) = &self.program {
            self.image.prefetch(program, PROGRAM_AHEAD);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = match self.node(parent) {
            Ok(Node::Image(dir)) if dir.kind == NodeKind::Dir => match self.image.lookup(&dir, name.as_bytes()) {
                Ok(Some(e)) => match self.image.inode(e.inode) {
                    Ok(child) => Some((self.ino(e.inode), Node::Image(child))),
                    Err(_) => return reply.error(Errno::EIO),
                },
                Ok(None) => None,
                Err(_) => return reply.error(Errno::EIO),
            },
            Ok(_) => None,
            Err(e) => return reply.error(e),
        };
        let found = found.or_else(|| {
            let kids = self.extra_children.get(&parent.0)?;
            let ino = kids.iter().copied().find(|&c| self.extra[(c - EXTRA_INO) as usize].name == name)?;
            Some((ino, Node::Extra((ino - EXTRA_INO) as usize)))
        });
        match found {
            Some((ino, node)) => {
                if matches!(&node, Node::Image(n) if n.kind == NodeKind::Dir) {
                    self.parents.lock().unwrap_or_else(|e| e.into_inner()).insert(ino, parent.0);
                }
                reply.entry(&TTL, &self.attr(ino, &node), Generation(0))
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inode(ino) {
            Ok(n) => match n.link_target() {
                Some(t) => reply.data(t),
                None => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(e),
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
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.node(ino) {
            Ok(Node::Image(n)) if n.kind == NodeKind::File => n,
            Ok(Node::Extra(_)) => return reply.data(&[]),
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        // The kernel asks block-aligned chunks of at most a block: most requests are one
        // piece of one cached block, and are answered from it without a copy.
        let size = size as usize;
        let answer = match self.image.piece_at(&file, offset) {
            Ok(Some(piece)) if piece.len() >= size => return reply.data(&piece[..size]),
            Ok(None) => return reply.data(&[]),
            Ok(Some(_)) => {
                let mut buf = vec![0u8; size];
                self.image.read_at(&file, offset, &mut buf).map(|n| buf.truncate(n)).map(|()| buf)
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(self.eio(req, &e)),
        }
    }

    /// `SEEK_DATA` and `SEEK_HOLE`, so that `cp --sparse`, `tar -S` and the like keep
    /// the image's holes as holes; the kernel answers the other kinds of seek itself.
    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let Ok(pos) = u64::try_from(offset) else { return reply.error(Errno::EINVAL) };
        let file = match self.node(ino) {
            Ok(Node::Image(n)) if n.kind == NodeKind::File => n,
            Ok(_) => return reply.error(Errno::ENXIO),
            Err(e) => return reply.error(e),
        };
        let found = match whence {
            libc::SEEK_DATA => self.image.next_data(&file, pos),
            libc::SEEK_HOLE if pos < file.size => self.image.next_hole(&file, pos).map(Some),
            libc::SEEK_HOLE => Ok(None),
            _ => return reply.error(Errno::EINVAL),
        };
        match found {
            Ok(Some(p)) => reply.offset(p as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR)
    }

    /// The kernel resumes a large directory at the offset of the last entry it got, so
    /// each call costs only what it returns.
    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut any = false;
        let r = self.listing(ino, offset, |child, next, kind, name| {
            let full = reply.add(INodeNo(child), next, kind, name);
            any |= !full;
            full
        });
        match r {
            Err(e) if !any => reply.error(e),
            _ => reply.ok(),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let mut any = false;
        let r = self.listing(ino, offset, |child, next, _kind, name| {
            let Ok(node) = self.node(INodeNo(child)) else { return false };
            let full = reply.add(INodeNo(child), next, name, &TTL, &self.attr(child, &node), Generation(0));
            any |= !full;
            full
        });
        match r {
            Err(e) if !any => reply.error(e),
            _ => reply.ok(),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = u64::from(self.image.inode_count()) + self.extra.len() as u64;
        let bs = self.image.block_size();
        reply.statfs(0, 0, 0, files, 0, bs, 255, bs)
    }
}
