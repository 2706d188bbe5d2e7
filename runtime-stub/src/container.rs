//! Running the application in its container: the start-up, as one story.
//!
//! ```text
//! trailer ─► mode ─► binds ─► session key ─► join the session's container ─► cwd ─► env ─► exec
//!                                           └─ none yet: start a keeper, which builds it:
//!                                              plan ─► namespaces ─► scratch root ─► image
//!                                              at /newroot ─► binds ─► pivot_root
//! ```
//! Everything that can fail because of the input (no entrypoint, an unusable mode, a
//! bind that cannot be made) fails before a namespace is made.

use crate::cache;
use crate::exec::{drop_privileges, environment, exec};
use crate::fail::{Context, Error, Result};
use crate::fuse;
use crate::keeper;
use crate::loopdev;
use crate::namespaces;
use crate::options::{Action, Mode, Options};
use crate::plan::{self, Found, Host, Plan, UserBind};
use crate::rootfs;
use crate::session;
use bundle_format::Bundle;
use bundle_squashfs::{Image, Kind as NodeKind};
use nix::mount::{mount, MsFlags};
use nix::unistd::{geteuid, getgid, getuid};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a container outlives its last user unless told otherwise.
const DEFAULT_LINGER: Duration = Duration::from_secs(3);

/// Launchers' variables that name a directory their ranks must reach: Open MPI's and
/// PMIx's rendezvous and session directories, and the job's scratch directory.
const RENDEZVOUS_VARS: [&str; 6] = [
    "PMIX_SERVER_TMPDIR",
    "PMIX_SYSTEM_TMPDIR",
    "OMPI_MCA_orte_tmpdir_base",
    "PRTE_MCA_prte_tmpdir_base",
    "SLURM_PMIX_TMPDIR",
    "TMPDIR",
];

pub fn run(bundle: &Bundle, opts: &Options) -> Result<std::convert::Infallible> {
    let argv = command_line(bundle, opts)?;
    let mode = choose_mode(opts.mode)?;
    let cwd = std::env::current_dir().context(|| "cannot determine the working directory".to_string())?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    // Only what the standard binds do not already show: Slurm sets TMPDIR=/tmp for some
    // tasks of a step and not for others, and they must still share one container.
    let rendezvous =
        uncovered(rendezvous_dirs(), [Path::new("/tmp"), cwd.as_path()].into_iter().chain(home.as_deref()));
    let who = Host { cwd: cwd.clone(), home, rendezvous, binds: user_binds(bundle, opts)? };
    let key =
        session::key(&[&bundle.image_digest(), mode.name(), &format!("{who:?}"), &session::job(opts.share.as_deref())]);
    let linger = linger(opts.linger)?;
    session::attach(&key, |listener| keeper::start(listener, linger, || build(bundle, mode, &who)))?;
    std::env::set_current_dir(&cwd).context(|| format!("cannot enter {} in the container", cwd.display()))?;
    let env = environment(std::env::vars_os(), &bundle.metadata.env, opts.cleanenv);
    if geteuid().is_root() && !opts.keep_caps {
        drop_privileges()?;
    }
    Err(exec(&argv, &env))
}

/// Runs in the keeper: makes the namespaces and the root, and stays inside them.
/// Returns whether a user namespace was made (ranks must join it too).
fn build(bundle: &Bundle, mode: Mode, who: &Host) -> Result<bool> {
    let (uid, gid) = (getuid(), getgid());
    let image = Arc::new(Image::open(&bundle.file, bundle.trailer.image_offset)?);
    let (plan, tree): (Plan, Option<PathBuf>) = match mode {
        Mode::Fuse | Mode::Kernel => (plan::build(who, &host_found, &|p| image_found(&image, p))?, None),
        Mode::Extract => {
            let tree = cache::cached_tree(bundle, &image)?;
            (plan::build(who, &host_found, &|p| dir_found(&tree, p))?, Some(tree))
        }
    };
    let mut loop_dev = None;
    if mode == Mode::Kernel {
        namespaces::enter_mount_only()?;
        let t = &bundle.trailer;
        loop_dev = Some(loopdev::attach(&bundle.file, t.image_offset, t.image_size)?);
    } else {
        namespaces::enter(uid, gid)?;
    }
    rootfs::enter_scratch_root()?;
    match (mode, &tree) {
        (Mode::Kernel, _) => {
            let (dev, _configured) = loop_dev.as_ref().expect("kernel mode attached a loop device");
            let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            mount(Some(&rootfs::on_host(dev)), rootfs::LOWER, Some("squashfs"), flags, None::<&str>)
                .context(|| format!("cannot mount the image from {} with the kernel's squashfs", dev.display()))?;
            rootfs::mount_root_from(Path::new(rootfs::LOWER), &plan)?
        }
        (_, Some(tree)) => rootfs::mount_root_from(&rootfs::on_host(tree), &plan)?,
        (_, None) => {
            let dev = fuse::open_device_in(Path::new(rootfs::OLDROOT))?;
            fuse::mount_image(dev, image, &plan.mount_points, Path::new(rootfs::NEWROOT), uid, gid)?
        }
    }
    rootfs::apply_binds(&plan.binds)?;
    rootfs::pivot_into_container()?;
    Ok(mode != Mode::Kernel)
}

/// Where multi-call looks for the program named by the symlink we were started through.
const BIN_DIRS: [&str; 6] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"];

/// What to run: the entrypoint with the caller's arguments, or what `--bundle-exec` /
/// `--bundle-shell` asked for, or the program a multi-call symlink names.
fn command_line(bundle: &Bundle, opts: &Options) -> Result<Vec<OsString>> {
    let prefix: Vec<OsString> = match opts.action {
        Action::Exec => Vec::new(),
        Action::Shell => vec!["/bin/sh".into()],
        Action::Run if let Some(program) = multicall(bundle)? => vec![program.into()],
        _ if bundle.metadata.entrypoint.is_empty() => {
            return Err(Error("this bundle has no entrypoint; run a program of it with --bundle-exec CMD".into()))
        }
        _ => bundle.metadata.entrypoint.iter().map(OsString::from).collect(),
    };
    Ok(prefix.into_iter().chain(opts.args.iter().cloned()).collect())
}

/// Singularity 1.x's multi-call: started as `app-helper`, a symlink to the bundle, we run
/// the image's `app-helper` from a `bin` directory. Only then are the image tables read.
fn multicall(bundle: &Bundle) -> Result<Option<PathBuf>> {
    let Some(name) = std::env::args_os().next().map(PathBuf::from).and_then(|a| a.file_name().map(OsString::from))
    else {
        return Ok(None);
    };
    let own = fs::read_link("/proc/self/exe").ok();
    if own.as_deref().and_then(Path::file_name) == Some(name.as_os_str()) || name.is_empty() {
        return Ok(None);
    }
    let image = Image::open(&bundle.file, bundle.trailer.image_offset)?;
    Ok(BIN_DIRS
        .iter()
        .map(|d| Path::new(d).join(&name))
        .find(|p| matches!(image_found(&image, p), Some(Found::File | Found::Symlink))))
}

/// The directories the launcher's PMIx server expects its ranks to reach.
fn rendezvous_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = RENDEZVOUS_VARS.iter().filter_map(std::env::var_os).map(PathBuf::from).collect();
    dirs.extend(slurm_pmix_client_dir());
    dirs.retain(|p| p.is_absolute());
    dirs
}

/// Under `srun --mpi=pmix`, Open MPI makes its session directory in Slurm's
/// `PMIxCliTmpDirBase` (from `mpi.conf`), which no variable names: read it where Slurm
/// keeps its configuration.
fn slurm_pmix_client_dir() -> Option<PathBuf> {
    let pmix = std::env::var("PMIX_NAMESPACE").is_ok_and(|ns| ns.starts_with("slurm.pmix."))
        || std::env::var("SLURM_MPI_TYPE").is_ok_and(|t| t.starts_with("pmix"));
    if !pmix {
        return None;
    }
    let conf = std::env::var_os("SLURM_CONF").map(PathBuf::from).unwrap_or_else(|| "/etc/slurm/slurm.conf".into());
    let text = fs::read_to_string(conf.parent()?.join("mpi.conf")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("PMIxCliTmpDirBase")).then(|| PathBuf::from(v.trim()))
    })
}

/// Leaves out the paths that `shown` (other binds) already make visible.
fn uncovered<'a>(paths: Vec<PathBuf>, shown: impl Iterator<Item = &'a Path>) -> Vec<PathBuf> {
    let shown: Vec<&Path> = shown.filter(|s| *s != Path::new("/")).collect();
    paths.into_iter().filter(|p| !shown.iter().any(|s| p.starts_with(s))).collect()
}

/// The bundle's default binds, then `BUNDLE_BIND` (comma-separated), then the flags.
fn user_binds(bundle: &Bundle, opts: &Options) -> Result<Vec<UserBind>> {
    let from_env = std::env::var("BUNDLE_BIND").unwrap_or_default();
    bundle
        .metadata
        .binds
        .iter()
        .map(String::as_str)
        .chain(from_env.split(',').map(str::trim).filter(|s| !s.is_empty()))
        .chain(opts.binds.iter().map(String::as_str))
        .map(|spec| UserBind::parse(spec).map_err(Error))
        .collect()
}

/// `--bundle-mode`, else `BUNDLE_MODE`, else kernel as root, else fuse where
/// `/dev/fuse` can be opened, else extract.
fn choose_mode(flag: Option<Mode>) -> Result<Mode> {
    let root = geteuid().is_root();
    let forced = match (flag, std::env::var("BUNDLE_MODE")) {
        (Some(m), _) => Some(m),
        (None, Ok(v)) if !v.is_empty() => Some(Mode::parse(&v).map_err(|e| Error(format!("BUNDLE_MODE: {}", e.0)))?),
        _ => None,
    };
    match forced {
        Some(Mode::Kernel) if !root => {
            Err(Error("kernel mode needs root (CAP_SYS_ADMIN); use --bundle-mode=fuse or extract".into()))
        }
        Some(Mode::Kernel) => Ok(Mode::Kernel),
        Some(Mode::Fuse) => match fuse::open_device_in(Path::new("/")) {
            Ok(_) => Ok(Mode::Fuse),
            Err(e) => Err(Error(format!("fuse mode: {}; use --bundle-mode=extract", e.0))),
        },
        Some(Mode::Extract) => Ok(Mode::Extract),
        None if root && Path::new("/dev/loop-control").exists() => Ok(Mode::Kernel),
        None if fuse::open_device_in(Path::new("/")).is_ok() => Ok(Mode::Fuse),
        None => Ok(Mode::Extract),
    }
}

/// `--bundle-linger`, else `BUNDLE_LINGER`, in seconds (fractions allowed).
fn linger(flag: Option<f64>) -> Result<Duration> {
    let secs = match (flag, std::env::var("BUNDLE_LINGER")) {
        (Some(s), _) => s,
        (None, Ok(v)) if !v.is_empty() => {
            v.parse::<f64>().map_err(|_| Error(format!("BUNDLE_LINGER={v} is not a number of seconds")))?
        }
        _ => return Ok(DEFAULT_LINGER),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| Error(format!("linger {secs} is not a number of seconds")))
}

fn host_found(p: &Path) -> Option<(Found, PathBuf)> {
    let real = fs::canonicalize(p).ok()?;
    let m = fs::metadata(&real).ok()?;
    Some((if m.is_dir() { Found::Dir } else { Found::File }, real))
}

/// What `p` is in the image, read lazily: a few metadata blocks per path. A path the
/// image cannot answer for (it is damaged there) counts as missing; the mount that
/// follows will then report the damage.
fn image_found(image: &Image, p: &Path) -> Option<Found> {
    image.lookup_path(p).ok().flatten().map(|n| match n.kind {
        NodeKind::Dir => Found::Dir,
        NodeKind::File => Found::File,
        NodeKind::Symlink => Found::Symlink,
        _ => Found::Other,
    })
}

fn dir_found(tree: &Path, p: &Path) -> Option<Found> {
    let m = fs::symlink_metadata(tree.join(p.strip_prefix("/").unwrap_or(p))).ok()?;
    let t = m.file_type();
    Some(if t.is_symlink() {
        Found::Symlink
    } else if t.is_dir() {
        Found::Dir
    } else if t.is_file() {
        Found::File
    } else {
        Found::Other
    })
}
