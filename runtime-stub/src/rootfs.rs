//! Building the container's root from a mounted image and a [`Plan`].
//!
//! bubblewrap's order of steps, narrated:
//! 1. a private tmpfs goes over `/tmp` and becomes our root for a while, with the host's
//!    root moved to `/oldroot` inside it, so every host path stays reachable (including
//!    the host's `/tmp`, no longer hidden under our tmpfs) and the image can be mounted at
//!    `/newroot` without creating anything on the host;
//! 2. the image is mounted at `/newroot` (by the caller: FUSE, a bind of an extracted
//!    tree, or an overlay on one);
//! 3. each bind of the plan goes from `/oldroot/SRC` to `/newroot/DST`;
//! 4. `pivot_root` into `/newroot` and the old root is detached, so nothing of the host
//!    is left but what was bound.

use crate::fail::{Context, Error, Result};
use crate::plan::{Bind, Kind, Plan};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};
use std::fs;
use std::path::{Path, PathBuf};

pub const NEWROOT: &str = "/newroot";
pub const OLDROOT: &str = "/oldroot";
const SCRATCH: &str = "/tmp";

/// Step 1: a tmpfs root of our own with the host at [`OLDROOT`].
pub fn enter_scratch_root() -> Result<()> {
    mount(Some("tmpfs"), SCRATCH, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))
        .context(|| format!("cannot mount a tmpfs on {SCRATCH}"))?;
    chdir(SCRATCH).context(|| format!("cannot enter {SCRATCH}"))?;
    for d in ["newroot", "oldroot", "lower", "upper", "work"] {
        fs::create_dir(d).context(|| format!("cannot create {d} in the scratch tmpfs"))?;
    }
    pivot_root(".", "oldroot").context(|| "cannot pivot_root into the scratch tmpfs".to_string())?;
    chdir("/").context(|| "cannot enter the scratch root".to_string())?;
    Ok(())
}

/// The host path `p` as seen from the scratch root.
pub fn on_host(p: &Path) -> PathBuf {
    Path::new(OLDROOT).join(p.strip_prefix("/").unwrap_or(p))
}

/// The container path `p` as seen from the scratch root.
pub fn in_container(p: &Path) -> PathBuf {
    Path::new(NEWROOT).join(p.strip_prefix("/").unwrap_or(p))
}

/// Where kernel mode mounts the image before it becomes the root.
pub const LOWER: &str = "/lower";

/// Step 2 for an extracted tree (a host path) or a kernel mount (at [`LOWER`]): a
/// read-only bind of it, or, when the plan needs mount points the image lacks, an
/// overlay whose upper layer is our tmpfs.
pub fn mount_root_from(lower: &Path, plan: &Plan) -> Result<()> {
    if plan.mount_points.is_empty() {
        bind(lower, Path::new(NEWROOT), true)?;
        return Ok(());
    }
    let opts = format!("lowerdir={},upperdir=/upper,workdir=/work", lower.display());
    mount(Some("overlay"), NEWROOT, Some("overlay"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(opts.as_str()))
        .context(|| "cannot mount an overlay over the extracted image".to_string())?;
    for (p, kind) in &plan.mount_points {
        let at = in_container(p);
        match kind {
            Kind::Dir => fs::create_dir(&at).map(|_| ()),
            Kind::File => fs::File::create(&at).map(|_| ()),
        }
        .context(|| format!("cannot create mount point {}", p.display()))?;
    }
    Ok(())
}

/// Step 3.
pub fn apply_binds(binds: &[Bind]) -> Result<()> {
    for b in binds {
        bind(&on_host(&b.src), &in_container(&b.dst), b.readonly)
            .map_err(|e| Error(format!("cannot bind {} into the container: {}", b.src.display(), e.0)))?;
    }
    Ok(())
}

fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .context(|| format!("mount --rbind {} {}", src.display(), dst.display()))?;
    if readonly {
        // A remount must repeat the flags the kernel locked on the source (nosuid,
        // nodev, noexec) or a user namespace is not allowed to make it.
        let locked = statvfs(dst).map(|s| s.flags()).unwrap_or(FsFlags::empty());
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (fs_flag, ms_flag) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if locked.contains(fs_flag) {
                flags |= ms_flag;
            }
        }
        mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
            .context(|| format!("cannot make {} read-only", dst.display()))?;
    }
    Ok(())
}

/// Step 4: the image becomes `/`; the scratch root and the host behind it are detached.
pub fn pivot_into_container() -> Result<()> {
    chdir(NEWROOT).context(|| "cannot enter the new root".to_string())?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching the top
    // of "." then leaves exactly the new root. No directory is needed in the image.
    pivot_root(".", ".").context(|| "cannot pivot_root into the image".to_string())?;
    umount2(".", MntFlags::MNT_DETACH).context(|| "cannot detach the old root".to_string())?;
    chdir("/").context(|| "cannot enter /".to_string())?;
    Ok(())
}
