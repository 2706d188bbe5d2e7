//! The narrow system interface the start-up steps run through (`steps.rs`).
//!
//! Every privileged call the container's start-up makes is one method here, so that the
//! steps can be run against [`Linux`], which makes the calls, or against a recording
//! double in the unit tests, which runs every mode's list as an ordinary user and can
//! make any call fail. Nothing chooses between them behind the caller's back: the
//! keeper passes [`Linux`] in, the tests pass their double.

use crate::fuse;
use crate::plan::Kind;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, mkdir, pivot_root};
use std::ffi::CString;
use std::fs;
use std::io::{Error, Result};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub trait Sys {
    /// mount(2).
    fn mount(
        &mut self,
        src: Option<&Path>,
        at: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()>;
    /// umount2(2) with `MNT_DETACH`.
    fn detach(&mut self, at: &Path) -> Result<()>;
    /// mount_setattr(2) with `AT_RECURSIVE` and `MOUNT_ATTR_RDONLY`: `at` and every mount
    /// below it read-only. ENOSYS before Linux 5.12.
    fn set_readonly_recursive(&mut self, at: &Path) -> Result<()>;
    /// The flags the kernel locked on the mount at `at` (nosuid, nodev, noexec), which a
    /// remount in a user namespace must repeat.
    fn locked_flags(&mut self, at: &Path) -> MsFlags;
    /// `/proc/self/mountinfo`.
    fn mountinfo(&mut self) -> Result<String>;
    fn mkdir(&mut self, path: &Path) -> Result<()>;
    /// An empty file, to mount a file onto.
    fn create_file(&mut self, path: &Path) -> Result<()>;
    fn chdir(&mut self, path: &Path) -> Result<()>;
    /// A symbolic link at `at` to `target`.
    fn symlink(&mut self, target: &Path, at: &Path) -> Result<()>;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<()>;
    /// Mounts the image over FUSE at `at` and starts its server, showing `mount_points`
    /// as empty entries, and every entry as the caller's with `as_callers`.
    fn mount_fuse(&mut self, at: &Path, mount_points: &[(PathBuf, Kind)], as_callers: bool) -> Result<()>;
}

/// The real system. For fuse mode it carries what the FUSE server serves.
pub struct Linux {
    fuse: Option<FuseSource>,
}

struct FuseSource {
    what: fuse::Served,
    /// Where the host's `/dev/fuse` is once the scratch root is ours.
    host_root: PathBuf,
}

impl Linux {
    pub fn new() -> Linux {
        Linux { fuse: None }
    }

    /// The real system, able to serve `what` over FUSE (once), opening the device
    /// under `host_root`.
    pub fn serving(what: fuse::Served, host_root: &Path) -> Linux {
        Linux { fuse: Some(FuseSource { what, host_root: host_root.to_path_buf() }) }
    }
}

/// `<linux/mount.h>`: the musl libc crate has no mount_setattr, so it is called by number.
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

impl Sys for Linux {
    fn mount(
        &mut self,
        src: Option<&Path>,
        at: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<()> {
        Ok(mount(src, at, fstype, flags, data)?)
    }

    fn detach(&mut self, at: &Path) -> Result<()> {
        Ok(umount2(at, MntFlags::MNT_DETACH)?)
    }

    fn set_readonly_recursive(&mut self, at: &Path) -> Result<()> {
        let path = CString::new(at.as_os_str().as_bytes()).map_err(Error::other)?;
        let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
        // SAFETY: mount_setattr reads a NUL-terminated path and a `struct mount_attr` of
        // the size given, both ours for the call's duration.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::last_os_error())
        }
    }

    fn locked_flags(&mut self, at: &Path) -> MsFlags {
        let flags = statvfs(at).map(|s| s.flags()).unwrap_or(FsFlags::empty());
        [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ]
        .into_iter()
        .filter(|(f, _)| flags.contains(*f))
        .fold(MsFlags::empty(), |acc, (_, m)| acc | m)
    }

    fn mountinfo(&mut self) -> Result<String> {
        fs::read_to_string("/proc/self/mountinfo")
    }

    fn mkdir(&mut self, path: &Path) -> Result<()> {
        Ok(mkdir(path, nix::sys::stat::Mode::from_bits_truncate(0o755))?)
    }

    fn create_file(&mut self, path: &Path) -> Result<()> {
        fs::OpenOptions::new().write(true).create_new(true).open(path).map(drop)
    }

    fn chdir(&mut self, path: &Path) -> Result<()> {
        Ok(chdir(path)?)
    }

    fn symlink(&mut self, target: &Path, at: &Path) -> Result<()> {
        std::os::unix::fs::symlink(target, at)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> Result<()> {
        Ok(pivot_root(new_root, put_old)?)
    }

    fn mount_fuse(&mut self, at: &Path, mount_points: &[(PathBuf, Kind)], as_callers: bool) -> Result<()> {
        let served = self.fuse.take().ok_or_else(|| Error::other("no image to serve over FUSE"))?;
        let dev = fuse::open_device_in(&served.host_root).map_err(|e| Error::other(e.0))?;
        fuse::mount_image(dev, served.what, mount_points, as_callers, at).map_err(|e| Error::other(e.0))
    }
}
