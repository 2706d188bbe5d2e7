//! The last step: become the application.
//!
//! The stub execs rather than forking, so the process that Slurm or `mpirun` started is
//! the application: its pid, its signals, its exit status (128+N when killed by signal
//! N, as the shell reports it) are the launcher's to see, with nothing in between.

use crate::fail::{Error, Result};
use crate::plan::Injected;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Variables kept by `--bundle-cleanenv`: who and where the user is, and everything a
/// launcher tells its ranks (without them an MPI rank cannot find its job).
const CLEAN_KEEP: [&str; 5] = ["HOME", "USER", "LOGNAME", "TERM", "LANG"];
const CLEAN_KEEP_PREFIXES: [&str; 5] = ["PMIX_", "PMI_", "OMPI_", "PRTE_", "SLURM_"];
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `BUNDLEENV_NAME=value` on the host sets `NAME=value` inside.
const PREFIX: &str = "BUNDLEENV_";

/// The application's environment: the caller's (or a minimal one with `cleanenv`),
/// then the bundle's own variables, then what devices and host libraries set (their
/// library directories first in `LD_LIBRARY_PATH`), then the caller's `BUNDLEENV_`
/// overrides.
pub fn environment(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    bundle: &BTreeMap<String, String>,
    injected: &Injected,
    cleanenv: bool,
) -> BTreeMap<OsString, OsString> {
    let mut env = BTreeMap::new();
    let mut overrides = Vec::new();
    for (k, v) in host {
        match k.to_str().and_then(|s| s.strip_prefix(PREFIX)) {
            Some(name) if !name.is_empty() => overrides.push((OsString::from(name), v)),
            Some(_) => {}
            None if !cleanenv || kept_clean(&k) => {
                env.insert(k, v);
            }
            None => {}
        }
    }
    if cleanenv {
        env.insert("PATH".into(), DEFAULT_PATH.into());
    }
    env.extend(bundle.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    env.extend(injected.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    if !injected.lib_path.is_empty() {
        let mut path = std::env::join_paths(&injected.lib_path).unwrap_or_default();
        if let Some(old) = env.get(std::ffi::OsStr::new(LIBRARY_PATH)).filter(|p| !p.is_empty()) {
            path.push(":");
            path.push(old);
        }
        env.insert(LIBRARY_PATH.into(), path);
    }
    env.extend(overrides);
    env
}

const LIBRARY_PATH: &str = "LD_LIBRARY_PATH";

fn kept_clean(name: &OsString) -> bool {
    let name = name.to_string_lossy();
    CLEAN_KEEP.contains(&name.as_ref()) || CLEAN_KEEP_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// As root, the application gets no capabilities and cannot regain any (setuid files
/// are ignored): the bounding set goes first, so that nothing can come back on exec.
pub fn drop_privileges() -> Result<()> {
    let os = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| Error(format!("cannot {what}: {e}"))
    };
    // Every capability the kernel knows, until it says there are no more (EINVAL).
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(os(&format!("drop capability {cap} from the bounding set"))(e));
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) } != 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: a kernel before 4.3, which has no ambient set to clear.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(os("clear the ambient capabilities")(e));
        }
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| Error(format!("cannot set no_new_privs: {e}")))?;
    clear_capability_sets().map_err(os("clear the effective, permitted and inheritable capabilities"))
}

/// capset(2) with every set empty (the version 3 layout: two 32-bit words per set). By
/// hand: the `caps` crate did this and little else, for 2.5 KB of stub.
fn clear_capability_sets() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset reads a header and two data records, which live until it returns.
    match unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Replaces this process with `argv[0]` (searched in `PATH` when it has no `/`).
/// Returns only on failure.
pub fn exec(argv: &[OsString], env: &BTreeMap<OsString, OsString>) -> Error {
    let Some(program) = argv.first() else {
        return Error("nothing to run".into());
    };
    let err = Command::new(program).args(&argv[1..]).env_clear().envs(env).exec();
    let name = program.to_string_lossy();
    let hint = match err.kind() {
        std::io::ErrorKind::NotFound => "not found in the bundle",
        std::io::ErrorKind::PermissionDenied if on_noexec_mount(program) => {
            // Extract mode binds the cache's tree, and a bind keeps `noexec`.
            return Error(format!(
                "{name}: cannot execute: the file system it is on is mounted noexec (in extract mode: the \
                 cache's, BUNDLE_CACHE_DIR); set BUNDLE_CACHE_DIR to a directory on a file system that \
                 allows execution ({err})"
            ));
        }
        std::io::ErrorKind::PermissionDenied => "not executable",
        _ => "cannot execute",
    };
    Error(format!("{name}: {hint} ({err})"))
}

/// Is `program` (a path in the container, or a name searched in `PATH`, then judged by
/// the root) on a mount with `noexec`?
fn on_noexec_mount(program: &std::ffi::OsStr) -> bool {
    let path = std::path::Path::new(program);
    let at = if path.is_absolute() { path } else { std::path::Path::new("/") };
    nix::sys::statvfs::statvfs(at).is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<(OsString, OsString)> {
        [
            ("HOME", "/home/a"),
            ("PATH", "/host/bin"),
            ("SECRET", "x"),
            ("BUNDLEENV_OMP_NUM_THREADS", "4"),
            ("A", "host"),
            ("PMIX_NAMESPACE", "job"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
    }

    #[test]
    fn host_then_bundle_then_overrides() {
        let bundle = BTreeMap::from([("A".to_string(), "bundle".to_string()), ("OMP_NUM_THREADS".into(), "1".into())]);
        let env = environment(host(), &bundle, &Injected::default(), false);
        assert_eq!(env[std::ffi::OsStr::new("A")], "bundle");
        assert_eq!(env[std::ffi::OsStr::new("OMP_NUM_THREADS")], "4");
        assert_eq!(env[std::ffi::OsStr::new("SECRET")], "x");
        assert!(!env.contains_key(&OsString::from("BUNDLEENV_OMP_NUM_THREADS")));
    }

    #[test]
    fn injected_variables_and_library_directories_come_before_the_overrides() {
        let injected = Injected {
            env: vec![("NVIDIA_VISIBLE_DEVICES".into(), "all".into()), ("A".into(), "device".into())],
            lib_path: vec!["/.bundle/host-libs".into(), "/opt/x/lib".into()],
            ..Injected::default()
        };
        let bundle = BTreeMap::from([("LD_LIBRARY_PATH".to_string(), "/usr/local/lib".to_string())]);
        let env = environment(host(), &bundle, &injected, false);
        assert_eq!(env[std::ffi::OsStr::new("A")], "device");
        assert_eq!(env[std::ffi::OsStr::new("LD_LIBRARY_PATH")], "/.bundle/host-libs:/opt/x/lib:/usr/local/lib");
        let mut host = host();
        host.push(("BUNDLEENV_A".into(), "mine".into()));
        assert_eq!(environment(host, &bundle, &injected, false)[std::ffi::OsStr::new("A")], "mine");
    }

    #[test]
    fn cleanenv_keeps_only_the_basics() {
        let env = environment(host(), &BTreeMap::new(), &Injected::default(), true);
        assert_eq!(env[std::ffi::OsStr::new("HOME")], "/home/a");
        assert_eq!(env[std::ffi::OsStr::new("PATH")], DEFAULT_PATH);
        assert!(!env.contains_key(&OsString::from("SECRET")));
        assert_eq!(env[std::ffi::OsStr::new("OMP_NUM_THREADS")], "4");
        assert_eq!(env[std::ffi::OsStr::new("PMIX_NAMESPACE")], "job");
    }
}
