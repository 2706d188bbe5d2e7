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
//!    extracted tree or of `/lower`, or — when the image must change — an overlay on
//!    it. The changes the runtime makes (mount points the image lacks, the symbolic
//!    links of devices) go into a layer of their own in our tmpfs, `/layer`, so that
//!    they never reach a persistent upper directory; the application's writes go to
//!    the upper directory when it has one (`--bundle-writable-tmpfs`: `/upper` in our
//!    tmpfs; `--bundle-overlay DIR`: `DIR/upper`), and the overlay is read-only when
//!    it has none. In fuse mode the image is then served at `/lower` first;
//! 5. each bind of the plan goes from `/oldroot/SRC` to `/newroot/DST`, made read-only
//!    with every mount below it when asked;
//! 6. `pivot_root` into `/newroot` and the old root is detached, so nothing of the host
//!    is left but what was bound.

use crate::fail::{Error, Result};
use crate::plan::{Kind, Plan, Writes};
use crate::sys::Sys;
use nix::mount::MsFlags;
use std::fmt;
use std::path::{Path, PathBuf};

pub const NEWROOT: &str = "/newroot";
pub const OLDROOT: &str = "/oldroot";
/// Where kernel mode mounts the image before it becomes the root.
pub const LOWER: &str = "/lower";
const SCRATCH: &str = "/tmp";
/// The runtime's own changes to the image: an overlay layer above it.
const LAYER: &str = "/layer";
/// `--bundle-writable-tmpfs`: the application's writes, in our tmpfs.
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
        /// Every entry shown as the caller's, for an overlay's upper layer.
        as_callers: bool,
    },
    /// `lowers` top first; without `upper` (and its work directory) it is read-only.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: Option<(PathBuf, PathBuf)>,
        at: PathBuf,
    },
    Symlink {
        target: PathBuf,
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
    let mut steps = image_root(plan, root);
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
        Step::Chdir(NEWROOT.into()),
        Step::PivotRoot { new_root: ".".into(), put_old: ".".into() },
        Step::Detach(".".into()),
        Step::Chdir("/".into()),
    ]);
    steps
}

/// The image at [`NEWROOT`]: as it is when nothing changes it, else under an overlay.
fn image_root(plan: &Plan, root: &Root) -> Vec<Step> {
    let newroot = PathBuf::from(NEWROOT);
    // The FUSE server shows the mount points itself; other modes make them in the layer.
    let served = *root == Root::Fuse;
    let layer = layer_entries(if served { &[] } else { &plan.mount_points }, &plan.links);
    if plan.writes == Writes::ReadOnly && layer.is_empty() {
        return match root {
            Root::Fuse => vec![Step::Fuse { at: newroot, mount_points: plan.mount_points.clone(), as_callers: false }],
            Root::Tree(tree) => {
                vec![Step::Bind { src: on_host(tree), dst: newroot.clone() }, Step::ReadOnly { at: newroot }]
            }
            Root::Kernel(_) => {
                vec![Step::Bind { src: LOWER.into(), dst: newroot.clone() }, Step::ReadOnly { at: newroot }]
            }
        };
    }
    let mut steps = Vec::new();
    let lower = match root {
        Root::Fuse => {
            steps.push(Step::Mkdir(LOWER.into()));
            let as_callers = plan.writes != Writes::ReadOnly;
            steps.push(Step::Fuse { at: LOWER.into(), mount_points: plan.mount_points.clone(), as_callers });
            PathBuf::from(LOWER)
        }
        Root::Tree(tree) => on_host(tree),
        Root::Kernel(_) => PathBuf::from(LOWER),
    };
    let mut lowers = Vec::new();
    if !layer.is_empty() {
        steps.push(Step::Mkdir(LAYER.into()));
        steps.extend(layer);
        lowers.push(PathBuf::from(LAYER));
    }
    lowers.push(lower);
    let upper = match &plan.writes {
        Writes::ReadOnly => None,
        Writes::Memory => {
            steps.extend([Step::Mkdir(UPPER.into()), Step::Mkdir(WORK.into())]);
            Some((PathBuf::from(UPPER), PathBuf::from(WORK)))
        }
        Writes::Dir(dir) => Some((on_host(&dir.join("upper")), on_host(&dir.join("work")))),
    };
    let read_only = upper.is_none();
    steps.push(Step::Overlay { lowers, upper, at: newroot.clone() });
    if read_only {
        steps.push(Step::ReadOnly { at: newroot });
    }
    steps
}

/// The steps that fill [`LAYER`]: each entry with the directories above it (the layer
/// merges with the image, so a directory the image has is made again here, empty).
fn layer_entries(mount_points: &[(PathBuf, Kind)], links: &[(PathBuf, PathBuf)]) -> Vec<Step> {
    let mut made: Vec<PathBuf> = Vec::new();
    let mut steps = Vec::new();
    for (p, kind) in mount_points {
        make_parents(p, &mut made, &mut steps);
        if made.contains(p) {
            continue;
        }
        match kind {
            Kind::Dir => {
                made.push(p.clone());
                steps.push(Step::Mkdir(in_layer(p)));
            }
            Kind::File => steps.push(Step::CreateFile(in_layer(p))),
        }
    }
    for (link, target) in links {
        make_parents(link, &mut made, &mut steps);
        steps.push(Step::Symlink { target: target.clone(), at: in_layer(link) });
    }
    steps
}

/// `mkdir` in [`LAYER`] for each directory above `p` not `made` yet, top first.
fn make_parents(p: &Path, made: &mut Vec<PathBuf>, steps: &mut Vec<Step>) {
    let mut dirs: Vec<&Path> = p.ancestors().skip(1).filter(|a| *a != Path::new("/")).collect();
    dirs.reverse();
    for d in dirs {
        if !made.iter().any(|m| m == d) {
            made.push(d.to_path_buf());
            steps.push(Step::Mkdir(in_layer(d)));
        }
    }
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
        Step::Fuse { at, mount_points, as_callers } => sys.mount_fuse(at, mount_points, *as_callers),
        Step::Overlay { lowers, upper, at } => sys.mount(
            Some(Path::new("overlay")),
            at,
            Some("overlay"),
            TMPFS_FLAGS,
            Some(&overlay_options(lowers, upper.as_ref())),
        ),
        Step::Symlink { target, at } => sys.symlink(target, at),
        Step::Bind { src, dst } => sys.mount(Some(src), dst, None, MsFlags::MS_BIND | MsFlags::MS_REC, None),
        Step::ReadOnly { at } => read_only(sys, at),
        Step::Detach(p) => sys.detach(p),
    }
}

/// The layers, top first. With an upper directory, overlayfs keeps its bookkeeping
/// (whiteouts' opaque marks) in `user.overlay.*` attributes, which a user namespace may
/// write (`userxattr`), so one persistent directory serves every mode.
fn overlay_options(lowers: &[PathBuf], upper: Option<&(PathBuf, PathBuf)>) -> String {
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let mut o = format!("lowerdir={}", lowers.join(":"));
    if let Some((upper, work)) = upper {
        o += &format!(",upperdir={},workdir={},userxattr", upper.display(), work.display());
    }
    o
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

/// The container path `p` in the runtime's layer.
fn in_layer(p: &Path) -> PathBuf {
    Path::new(LAYER).join(p.strip_prefix("/").unwrap_or(p))
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
            Step::Fuse { at, mount_points, as_callers } => {
                write!(f, "mount -t fuse.bundle -o ro,nosuid,nodev bundle {} (the image served", at.display())?;
                if *as_callers {
                    write!(f, " as the caller's")?;
                }
                for (i, (p, _)) in mount_points.iter().enumerate() {
                    write!(f, "{} {}", if i == 0 { ", with empty" } else { "," }, p.display())?;
                }
                write!(f, ")")
            }
            Step::Overlay { lowers, upper, at } => write!(
                f,
                "mount -t overlay -o nosuid,nodev,{} overlay {}",
                overlay_options(lowers, upper.as_ref()),
                at.display()
            ),
            Step::Symlink { target, at } => write!(f, "ln -s {} {}", target.display(), at.display()),
            Step::Bind { src, dst } => write!(f, "mount --rbind {} {}", src.display(), dst.display()),
            Step::ReadOnly { at } => write!(f, "mount -o remount,bind,ro --recursive {}", at.display()),
            Step::Detach(p) => write!(f, "umount --lazy {}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests;
