//! What the stub learns from the host before it makes anything: the launcher's
//! rendezvous directories (variables, Slurm's `mpi.conf`), the user's binds
//! (`BUNDLE_BIND`, the flags, the bundle's own), the linger, and the mode.

use crate::cdi;
use crate::fail::{Context, Error, Result};
use crate::fuse;
use crate::hostlibs::{self, HostCache};
use crate::namespaces;
use crate::options::{self, HostOptions, Mode, Options};
use crate::plan::{Found, Host, Injected, UserBind, Writes};
use bundle_format::Bundle;
use nix::unistd::geteuid;
use std::fs;
use std::path::{Path, PathBuf};
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

/// The caller's situation as the plan needs it: working directory, home, the launcher's
/// rendezvous directories and the user's binds.
pub fn caller(bundle: &Bundle, opts: &Options) -> Result<Host> {
    let cwd = std::env::current_dir().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error(format!(
            "the working directory no longer exists (it was deleted or moved): cd to an existing directory \
             and run again ({e})"
        )),
        _ => Error(format!("cannot determine the working directory: {e}")),
    })?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    // Only what the standard binds do not already show: Slurm sets TMPDIR=/tmp for some
    // tasks of a step and not for others, and they must still share one container.
    let rendezvous =
        uncovered(rendezvous_dirs(), [Path::new("/tmp"), cwd.as_path()].into_iter().chain(home.as_deref()));
    let writes = writes(&opts.host, &cwd)?;
    let injected = injected(&opts.host, &cwd)?;
    Ok(Host { cwd, home, rendezvous, binds: user_binds(bundle, opts)?, injected, writes })
}

/// What devices and host libraries add: CDI devices (`BUNDLE_DEVICE`, then the flags),
/// the NVIDIA driver (`BUNDLE_NV`), the host's MPI (`BUNDLE_HOST_MPI`), then host
/// libraries (`BUNDLE_HOST_LIB`, then the flags).
fn injected(opts: &HostOptions, cwd: &Path) -> Result<Injected> {
    let mut all = Injected::default();
    let devices = env_list("BUNDLE_DEVICE", &opts.devices);
    if !devices.is_empty() {
        let dirs: Vec<&Path> = cdi::SPEC_DIRS.iter().map(Path::new).collect();
        all.extend(cdi::inject(&devices, &dirs)?);
    }
    let mut cache = HostCache::new(Path::new(hostlibs::LD_SO_CACHE));
    if opts.nv || env_flag("BUNDLE_NV") {
        let cache = cache.get().map_err(|e| Error(format!("--bundle-nv: {}", e.0)))?;
        all.extend(hostlibs::nvidia(cache, Path::new("/dev"))?);
    }
    if opts.mpi || env_flag("BUNDLE_HOST_MPI") {
        let cache = cache.get().map_err(|e| Error(format!("--bundle-host-mpi: {}", e.0)))?;
        all.extend(hostlibs::host_mpi(cache)?);
    }
    for lib in env_list("BUNDLE_HOST_LIB", &opts.libs) {
        let lib = if lib.contains('/') { cwd.join(lib).display().to_string() } else { lib };
        all.extend(hostlibs::host_lib(&lib, &mut cache)?);
    }
    Ok(all)
}

/// The first option asked for (by flag or variable) that only a container can give:
/// binds, an overlay.
pub fn needs_container(opts: &HostOptions) -> Option<&'static str> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    [
        (opts.writable_tmpfs || env_flag("BUNDLE_WRITABLE_TMPFS"), "--bundle-writable-tmpfs"),
        (opts.overlay.is_some() || set("BUNDLE_OVERLAY"), "--bundle-overlay"),
        (!env_list("BUNDLE_DEVICE", &opts.devices).is_empty(), "--bundle-device"),
        (opts.nv || env_flag("BUNDLE_NV"), "--bundle-nv"),
        (!env_list("BUNDLE_HOST_LIB", &opts.libs).is_empty(), "--bundle-host-lib"),
        (opts.mpi || env_flag("BUNDLE_HOST_MPI"), "--bundle-host-mpi"),
    ]
    .into_iter()
    .find_map(|(asked, option)| asked.then_some(option))
}

/// Whether a variable is set to a true value (`1`, `yes`, `true`, `on`).
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| ["1", "yes", "true", "on"].contains(&v.to_ascii_lowercase().as_str()))
}

/// A comma list from the environment, then the flags' values.
pub fn env_list(name: &str, flags: &[String]) -> Vec<String> {
    let from_env = std::env::var(name).unwrap_or_default();
    from_env
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .chain(flags.iter().cloned())
        .collect()
}

/// `--bundle-writable-tmpfs` / `BUNDLE_WRITABLE_TMPFS`, or `--bundle-overlay DIR` /
/// `BUNDLE_OVERLAY`: where writes to the image go. An overlay directory must be the
/// caller's own; its `upper` and `work` directories are made here, before any
/// namespace (its path, resolved, is part of the session key: ranks that share a
/// container share its overlay).
fn writes(opts: &HostOptions, cwd: &Path) -> Result<Writes> {
    let dir = opts
        .overlay
        .clone()
        .or_else(|| std::env::var_os("BUNDLE_OVERLAY").filter(|v| !v.is_empty()).map(PathBuf::from));
    let tmpfs = opts.writable_tmpfs || env_flag("BUNDLE_WRITABLE_TMPFS");
    match dir {
        Some(_) if tmpfs => {
            Err(Error("--bundle-writable-tmpfs and --bundle-overlay exclude each other; choose one".into()))
        }
        Some(dir) => overlay_dir(&cwd.join(dir)).map(Writes::Dir),
        None if tmpfs => Ok(Writes::Memory),
        None => Ok(Writes::ReadOnly),
    }
}

fn overlay_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let real = fs::canonicalize(dir).context(|| format!("cannot use {} as the overlay directory", dir.display()))?;
    let m = fs::metadata(&real).context(|| format!("cannot use {} as the overlay directory", dir.display()))?;
    if !m.is_dir() || m.uid() != geteuid().as_raw() {
        return Err(Error(format!(
            "cannot use {} as the overlay directory: it must be a directory you own",
            dir.display()
        )));
    }
    for sub in ["upper", "work"] {
        let p = real.join(sub);
        match fs::create_dir(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error(format!("cannot create {}: {e}", p.display())))
            }
            _ => {}
        }
    }
    Ok(real)
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

/// `--bundle-mode`, else `BUNDLE_MODE`, else kernel as root, else host where the host's
/// settings forbid user namespaces, else fuse where `/dev/fuse` can be opened, else
/// extract. The second value says whether the mode was forced.
pub fn choose_mode(flag: Option<Mode>) -> Result<(Mode, bool)> {
    let root = geteuid().is_root();
    let forced = match (flag, std::env::var("BUNDLE_MODE")) {
        (Some(m), _) => Some(m),
        (None, Ok(v)) if !v.is_empty() => Some(Mode::parse(&v).map_err(|e| Error(format!("BUNDLE_MODE: {}", e.0)))?),
        _ => None,
    };
    // What keeps an ordinary user from a namespace, read only where it matters.
    let limit = || if root { None } else { namespaces::known_limit() };
    let chosen = match forced {
        Some(Mode::Fuse | Mode::Extract) if let Some(why) = limit() => {
            Err(Error(format!("{}: {why}", namespaces::UNAVAILABLE)))
        }
        Some(Mode::Kernel) if !root => {
            Err(Error("kernel mode needs root (CAP_SYS_ADMIN); use --bundle-mode=fuse or extract".into()))
        }
        Some(Mode::Kernel) => Ok(Mode::Kernel),
        Some(Mode::Fuse) => match fuse::open_device_in(Path::new("/")) {
            Ok(_) => Ok(Mode::Fuse),
            Err(e) => Err(Error(format!("fuse mode: {}; use --bundle-mode=extract", e.0))),
        },
        Some(Mode::Extract) => Ok(Mode::Extract),
        Some(Mode::Host) => Ok(Mode::Host),
        None if root && Path::new("/dev/loop-control").exists() => Ok(Mode::Kernel),
        None if limit().is_some() => Ok(Mode::Host),
        None if fuse::open_device_in(Path::new("/")).is_ok() => Ok(Mode::Fuse),
        None => Ok(Mode::Extract),
    };
    chosen.map(|m| (m, forced.is_some()))
}

/// `--bundle-linger`, else `BUNDLE_LINGER`, in seconds (fractions allowed).
pub fn linger(flag: Option<Duration>) -> Result<Duration> {
    match (flag, std::env::var("BUNDLE_LINGER")) {
        (Some(d), _) => Ok(d),
        (None, Ok(v)) if !v.is_empty() => {
            options::seconds(&v).ok_or_else(|| Error(format!("BUNDLE_LINGER={v} is not a number of seconds")))
        }
        _ => Ok(DEFAULT_LINGER),
    }
}

/// What a host path is, and where its symlinks lead (as a bind follows them).
pub fn host_found(p: &Path) -> Option<(Found, PathBuf)> {
    let real = fs::canonicalize(p).ok()?;
    let m = fs::metadata(&real).ok()?;
    Some((if m.is_dir() { Found::Dir } else { Found::File }, real))
}
