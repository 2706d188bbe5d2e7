//! How the container's root is made, as a list of steps (bubblewrap's `SetupOp`s): a
//! pure function of the [`Plan`] and of where the image comes from ([`Root`]), run one
//! by one through [`Sys`]. A failing step stops the list and names itself.
//!
//! The order, narrated:
//! 1. `/` becomes a slave of the host's mounts: nothing we mount or unmount reaches the
//!    host, and what the host mounts later under a bound directory (an automounted home
//!    or project directory) still reaches us;
//! 2. a tmpfs goes over `/tmp` and becomes our root for a while, with the host's root
//!    moved to `/oldroot` inside it, so every host path stays reachable (including the
//!    host's `/tmp`, no longer hidden under our tmpfs) and the image can be mounted at
//!    `/newroot` without creating anything on the host;
//! 3. kernel mode mounts the image from its loop device at `/lower` (the plan's image
//!    questions are answered from there, see `container.rs`);
//! 4. the image goes to `/newroot`: served over FUSE, or a read-only bind of the
//!    extracted tree or of `/lower`, or — when the plan needs mount points the image
//!    lacks — an overlay on it whose upper layer is our tmpfs, the mount points made in
//!    it and the whole made read-only;
//! 5. each bind of the plan goes from `/oldroot/SRC` to `/newroot/DST`, made read-only
//!    with every mount below it when asked;
//! 6. `pivot_root` into `/newroot` and the old root is detached, so nothing of the host
//!    is left but what was bound.

use crate::fail::{Error, Result};
use crate::plan::{Kind, Plan};
use crate::sys::Sys;
use nix::mount::MsFlags;
use std::fmt;
use std::path::{Path, PathBuf};

pub const NEWROOT: &str = "/newroot";
pub const OLDROOT: &str = "/oldroot";
/// Where kernel mode mounts the image before it becomes the root.
pub const LOWER: &str = "/lower";
const SCRATCH: &str = "/tmp";
const UPPER: &str = "/upper";
const WORK: &str = "/work";

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// Served by our own FUSE server.
    Fuse,
    /// Extracted into this host directory.
    Tree(PathBuf),
    /// On this loop device (a host path), for the kernel's squashfs.
    Kernel(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `/` and everything below it stop propagating to the host but keep receiving.
    MakeSlave,
    Tmpfs {
        at: PathBuf,
    },
    Mkdir(PathBuf),
    /// An empty file to mount a file onto.
    CreateFile(PathBuf),
    Chdir(PathBuf),
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Squashfs {
        dev: PathBuf,
        at: PathBuf,
    },
    Fuse {
        at: PathBuf,
        mount_points: Vec<(PathBuf, Kind)>,
    },
    Overlay {
        lower: PathBuf,
        at: PathBuf,
    },
    /// A recursive bind (submounts come along).
    Bind {
        src: PathBuf,
        dst: PathBuf,
    },
    /// `at` and every mount below it read-only.
    ReadOnly {
        at: PathBuf,
    },
    Detach(PathBuf),
}

const TMPFS_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const IMAGE_FLAGS: MsFlags = MsFlags::MS_RDONLY.union(MsFlags::MS_NOSUID).union(MsFlags::MS_NODEV);

/// The steps up to the point where the image can be asked what it has: the scratch root
/// and, in kernel mode, the image mounted at [`LOWER`].
pub fn scratch(root: &Root) -> Vec<Step> {
    let s = Path::new(SCRATCH);
    let mut steps = vec![
        Step::MakeSlave,
        Step::Tmpfs { at: s.into() },
        Step::Mkdir(s.join("newroot")),
        Step::Mkdir(s.join("oldroot")),
    ];
    if let Root::Kernel(_) = root {
        steps.push(Step::Mkdir(s.join("lower")));
    }
    steps.push(Step::PivotRoot { new_root: s.into(), put_old: s.join("oldroot") });
    steps.push(Step::Chdir("/".into()));
    if let Root::Kernel(dev) = root {
        steps.push(Step::Squashfs { dev: on_host(dev), at: LOWER.into() });
    }
    steps
}

/// The rest: the image at [`NEWROOT`], the binds, the pivot into it.
pub fn container(plan: &Plan, root: &Root) -> Vec<Step> {
    let newroot = PathBuf::from(NEWROOT);
    let mut steps = Vec::new();
    let lower = match root {
        Root::Fuse => {
            steps.push(Step::Fuse { at: newroot.clone(), mount_points: plan.mount_points.clone() });
            None
        }
        Root::Tree(tree) => Some(on_host(tree)),
        Root::Kernel(_) => Some(PathBuf::from(LOWER)),
    };
    if let Some(lower) = lower {
        if plan.mount_points.is_empty() {
            steps.push(Step::Bind { src: lower, dst: newroot.clone() });
        } else {
            steps.extend([Step::Mkdir(UPPER.into()), Step::Mkdir(WORK.into())]);
            steps.push(Step::Overlay { lower, at: newroot.clone() });
            steps.extend(plan.mount_points.iter().map(|(p, kind)| match kind {
                Kind::Dir => Step::Mkdir(in_container(p)),
                Kind::File => Step::CreateFile(in_container(p)),
            }));
        }
        steps.push(Step::ReadOnly { at: newroot.clone() });
    }
    for b in &plan.binds {
        let dst = in_container(&b.dst);
        steps.push(Step::Bind { src: on_host(&b.src), dst: dst.clone() });
        if b.readonly {
            steps.push(Step::ReadOnly { at: dst });
        }
    }
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching the top
    // of "." then leaves exactly the new root. No directory is needed in the image.
    steps.extend([
        Step::Chdir(newroot),
        Step::PivotRoot { new_root: ".".into(), put_old: ".".into() },
        Step::Detach(".".into()),
        Step::Chdir("/".into()),
    ]);
    steps
}

/// Every step of a mode, in order: what [`scratch`] and then [`container`] run.
#[cfg(test)]
pub fn all(plan: &Plan, root: &Root) -> Vec<Step> {
    let mut steps = scratch(root);
    steps.extend(container(plan, root));
    steps
}

/// Runs `steps` in order; the first that fails stops the list, and its error says which
/// step it was.
pub fn run(steps: &[Step], sys: &mut dyn Sys) -> Result<()> {
    for step in steps {
        apply(step, sys).map_err(|e| Error(format!("cannot {step}: {e}")))?;
    }
    Ok(())
}

fn apply(step: &Step, sys: &mut dyn Sys) -> std::io::Result<()> {
    let none = None::<&Path>;
    match step {
        Step::MakeSlave => sys.mount(none, Path::new("/"), None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None),
        Step::Tmpfs { at } => sys.mount(Some(Path::new("tmpfs")), at, Some("tmpfs"), TMPFS_FLAGS, Some("mode=0755")),
        Step::Mkdir(p) => sys.mkdir(p),
        Step::CreateFile(p) => sys.create_file(p),
        Step::Chdir(p) => sys.chdir(p),
        Step::PivotRoot { new_root, put_old } => sys.pivot_root(new_root, put_old),
        Step::Squashfs { dev, at } => sys.mount(Some(dev), at, Some("squashfs"), IMAGE_FLAGS, None),
        Step::Fuse { at, mount_points } => sys.mount_fuse(at, mount_points),
        Step::Overlay { lower, at } => {
            sys.mount(Some(Path::new("overlay")), at, Some("overlay"), TMPFS_FLAGS, Some(&overlay_options(lower)))
        }
        Step::Bind { src, dst } => sys.mount(Some(src), dst, None, MsFlags::MS_BIND | MsFlags::MS_REC, None),
        Step::ReadOnly { at } => read_only(sys, at),
        Step::Detach(p) => sys.detach(p),
    }
}

fn overlay_options(lower: &Path) -> String {
    format!("lowerdir={},upperdir={UPPER},workdir={WORK}", lower.display())
}

/// One call where the kernel has mount_setattr (5.12+); else each mount at or below
/// `at`, from the mount table, remounted read-only on its own.
fn read_only(sys: &mut dyn Sys, at: &Path) -> std::io::Result<()> {
    match sys.set_readonly_recursive(at) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            for m in mounts_at_or_below(&sys.mountinfo()?, at) {
                // A remount must repeat the flags the kernel locked on the source (nosuid,
                // nodev, noexec) or a user namespace is not allowed to make it.
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | sys.locked_flags(&m);
                sys.mount(None, &m, None, flags, None)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", m.display())))?;
            }
            Ok(())
        }
        other => other,
    }
}

/// The mount points of `mountinfo` (field 5, octal escapes undone) that are `at` or lie
/// below it, parents first as the table lists them.
fn mounts_at_or_below(mountinfo: &str, at: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape).filter(|p| p.starts_with(at)).collect();
    found.dedup();
    found
}

/// `\040` and its kin, as the kernel writes space, tab, newline and backslash.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out).into()
}

/// The host path `p` as seen from the scratch root.
pub fn on_host(p: &Path) -> PathBuf {
    Path::new(OLDROOT).join(p.strip_prefix("/").unwrap_or(p))
}

/// The container path `p` as seen from the scratch root.
fn in_container(p: &Path) -> PathBuf {
    Path::new(NEWROOT).join(p.strip_prefix("/").unwrap_or(p))
}

/// Each step as the command that would do the same, bubblewrap's narration.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Step::MakeSlave => write!(f, "mount --make-rslave /"),
            Step::Tmpfs { at } => write!(f, "mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs {}", at.display()),
            Step::Mkdir(p) => write!(f, "mkdir {}", p.display()),
            Step::CreateFile(p) => write!(f, "touch {}", p.display()),
            Step::Chdir(p) => write!(f, "cd {}", p.display()),
            Step::PivotRoot { new_root, put_old } => {
                write!(f, "pivot_root {} {}", new_root.display(), put_old.display())
            }
            Step::Squashfs { dev, at } => {
                write!(f, "mount -t squashfs -o ro,nosuid,nodev {} {}", dev.display(), at.display())
            }
            Step::Fuse { at, mount_points } => {
                write!(f, "mount -t fuse.bundle -o ro,nosuid,nodev bundle {} (the image served", at.display())?;
                for (i, (p, _)) in mount_points.iter().enumerate() {
                    write!(f, "{} {}", if i == 0 { ", with empty" } else { "," }, p.display())?;
                }
                write!(f, ")")
            }
            Step::Overlay { lower, at } => {
                write!(f, "mount -t overlay -o nosuid,nodev,{} overlay {}", overlay_options(lower), at.display())
            }
            Step::Bind { src, dst } => write!(f, "mount --rbind {} {}", src.display(), dst.display()),
            Step::ReadOnly { at } => write!(f, "mount -o remount,bind,ro --recursive {}", at.display()),
            Step::Detach(p) => write!(f, "umount --lazy {}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests;
