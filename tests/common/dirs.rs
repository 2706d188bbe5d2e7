//! Temporary directories.

use super::*;

pub(crate) static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A prefix naming this process, so that directories of dead runs can be found.
pub(crate) fn prefix() -> String {
    format!("bundle-e2e-{}-", std::process::id())
}

/// A directory under `/tmp` (or another base), mode 0755, removed (with everything in
/// it, read-only parts included) on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        TestDir::new_in(Path::new("/tmp"), name)
    }

    pub fn new_in(base: &Path, name: &str) -> TestDir {
        sweep_stale_dirs();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{}{n}-{name}", prefix()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod test dir");
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// A new directory (and parents) inside, owned by the test user, mode 0755.
    pub fn user_dir(&self, name: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod user dir");
        chown_to_user(&p);
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// `rm -rf` that first makes directories writable (extracted images have read-only ones).
pub fn remove_tree(path: &Path) {
    fn make_writable(p: &Path) {
        let Ok(m) = fs::symlink_metadata(p) else { return };
        if m.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                make_writable(&e.path());
            }
        }
    }
    if fs::remove_dir_all(path).is_err() {
        make_writable(path);
        let _ = fs::remove_dir_all(path);
    }
}

/// Cleans up after test runs that were killed before their own cleanup (an interrupted
/// `scripts/test`): kills processes whose tag names a test process that no longer
/// exists, then removes `bundle-e2e-<pid>-*` directories of such processes.
pub(crate) fn sweep_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    let dead = |pid: u32| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists();
    ONCE.get_or_init(|| {
        let prefix = format!("{TAG_VAR}=");
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(env) = fs::read(e.path().join("environ")) else { continue };
            let owner = env.split(|&b| b == 0).find_map(|v| {
                let tag = std::str::from_utf8(v.strip_prefix(prefix.as_bytes())?).ok()?;
                tag.split('.').next()?.parse::<u32>().ok()
            });
            if owner.is_some_and(dead) {
                kill_all(&[(pid, String::new())]);
            }
        }
        for base in ["/tmp", "/var/tmp"] {
            for e in fs::read_dir(base).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix("bundle-e2e-") else { continue };
                let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
                if dead(pid) {
                    remove_tree(&e.path());
                }
            }
        }
    });
}

/// A directory for artefacts shared by all tests of this binary (bundles built once),
/// removed when the process exits.
pub fn shared_dir() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove_shared() {
        if let Some(p) = P.get() {
            remove_tree(p);
        }
    }
    P.get_or_init(|| {
        sweep_stale_dirs();
        let p = PathBuf::from(format!("/tmp/{}shared", prefix()));
        fs::create_dir(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod shared dir");
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_shared) };
        p
    })
}
