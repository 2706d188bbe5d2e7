//! One test: its directory, its tag, its leftovers.

use super::*;
use std::os::fd::AsRawFd;

/// How a bundle chooses its mount mode in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No `BUNDLE_MODE`: the runtime chooses.
    Auto,
    Fuse,
    Extract,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Fuse => "fuse",
            Mode::Extract => "extract",
        }
    }
}

/// One end-to-end test. Its drop fails the test if any process it started is still
/// alive (after [`LEFTOVER_GRACE`]; they are killed), if a bundle mount is visible on
/// the host, or if a keeper's socket or a half-made cache tree is left, and removes its
/// directory.
pub struct Test {
    pub id: String,
    pub dir: TestDir,
    /// The user's working directory for commands (under /tmp, owned by the user).
    pub work: PathBuf,
    /// `BUNDLE_CACHE_DIR` of commands (owned by the user, initially absent).
    pub cache: PathBuf,
    /// `XDG_RUNTIME_DIR` of commands (owned by the user, mode 0700, as logind makes it),
    /// where the runtime puts its rendezvous sockets: each test has its own.
    pub runtime: PathBuf,
}

impl Test {
    pub fn new(name: &str) -> Test {
        let _ = (bundle_bin(), stub_bin(), user());
        let dir = TestDir::new(name);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        // The test process's pid first: a later run can tell the tags of dead runs.
        let id = format!("{}.{}.{nanos}.{name}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let work = dir.user_dir("work");
        let home_of_cache = dir.user_dir("cache-parent");
        let runtime = dir.user_dir("runtime");
        fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).expect("chmod runtime dir");
        Test { id, work, cache: home_of_cache.join("cache"), runtime, dir }
    }

    /// A command run as the test user, from [`Test::work`], with a clean environment:
    /// HOME, USER, LOGNAME, PATH, the tag, `BUNDLE_CACHE_DIR` = [`Test::cache`],
    /// `XDG_RUNTIME_DIR` = [`Test::runtime`] and `BUNDLE_LINGER=0`.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        self.user_env(&mut c);
        as_user(&mut c);
        c
    }

    /// A bundle run as the test user in `mode`, with `args`.
    pub fn app<S: AsRef<OsStr>>(&self, bundle: &Path, mode: Mode, args: &[S]) -> Command {
        let mut c = self.cmd(bundle);
        set_mode(&mut c, mode);
        c.args(args);
        c
    }

    /// The environment and working directory [`Test::cmd`] gives its commands.
    pub fn user_env(&self, c: &mut Command) {
        let u = user();
        c.env_clear()
            .env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .env("PATH", USER_PATH)
            .env(TAG_VAR, &self.id)
            .env("BUNDLE_CACHE_DIR", &self.cache)
            .env("XDG_RUNTIME_DIR", &self.runtime)
            .env("BUNDLE_LINGER", "0")
            .current_dir(&self.work);
    }

    /// [`Test::cmd`], run in the network namespace `netns` (a file such as
    /// `/run/netns/NAME`): the child enters it as root, then becomes the test user.
    /// Needs root.
    pub fn cmd_in_netns(&self, netns: &Path, program: impl AsRef<OsStr>) -> Command {
        require_root("entering a network namespace");
        let fd = fs::File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
        let u = user();
        let (uid, gid) = (u.uid, u.gid);
        let mut c = Command::new(program);
        self.user_env(&mut c);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            c.pre_exec(move || {
                let ok = libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == 0
                    && libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(gid) == 0
                    && libc::setuid(uid) == 0;
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        c
    }

    /// A command run as the test user in a mount namespace of its own where `/dev/fuse`
    /// is a root-owned, mode-0600 empty file: as on a host whose FUSE is unusable, without
    /// touching the real device. Needs root: None otherwise.
    pub fn cmd_without_fuse(&self, program: impl AsRef<OsStr>) -> Option<Command> {
        if !is_root() {
            return None;
        }
        let fake = self.dir.join("fake-dev-fuse");
        if !fake.exists() {
            fs::write(&fake, b"").expect("create fake /dev/fuse");
            fs::set_permissions(&fake, fs::Permissions::from_mode(0o600)).expect("chmod fake /dev/fuse");
        }
        let u = user();
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(r#"f=$0 u=$1 g=$2; shift 2; mount --bind "$f" /dev/fuse && exec setpriv --reuid="$u" --regid="$g" --clear-groups -- "$@""#)
            .arg(&fake)
            .arg(u.uid.to_string())
            .arg(u.gid.to_string())
            .arg(program.as_ref());
        self.user_env(&mut c);
        Some(c)
    }

    /// Pids and names of live processes carrying this test's tag.
    pub fn processes(&self) -> Vec<(i32, String)> {
        tagged_processes(&self.id)
    }

    /// Waits until no process of this test is alive; the survivors after `timeout`.
    pub fn wait_for_no_processes(&self, timeout: Duration) -> Vec<(i32, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.processes();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills every live process of this test; returns what it found.
    pub fn kill_processes(&self) -> Vec<(i32, String)> {
        let left = self.processes();
        kill_all(&left);
        left
    }

    /// Asserts that no process of this test remains (within `timeout`).
    #[track_caller]
    pub fn assert_no_processes(&self, timeout: Duration) {
        let left = self.wait_for_no_processes(timeout);
        if !left.is_empty() {
            kill_all(&left);
            panic!("processes of this test still alive {timeout:?} after it ended (now killed): {left:?}");
        }
    }

    /// Asserts that no keeper left its rendezvous socket in [`Test::runtime`].
    #[track_caller]
    pub fn assert_no_sockets(&self) {
        let mut left = Vec::new();
        let mut dirs = vec![self.runtime.clone()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    dirs.push(e.path());
                } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                    left.push(e.path());
                }
            }
        }
        assert!(left.is_empty(), "sockets left after every process of the test ended: {left:?}");
    }

    /// Asserts that the extract cache at `cache` holds no half-made trees (`.tmp-*`).
    #[track_caller]
    pub fn assert_cache_clean(&self, cache: &Path) {
        let images = cache.join("images");
        let tmp: Vec<String> = fs::read_dir(&images)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "temporary trees left in {}: {tmp:?}", images.display());
    }
}

impl Drop for Test {
    fn drop(&mut self) {
        let left = self.wait_for_no_processes(LEFTOVER_GRACE);
        kill_all(&left);
        let mounts = host_mounts_mentioning(&[self.dir.path().to_string_lossy().as_ref(), "fuse.bundle"]);
        if !thread::panicking() {
            assert!(
                left.is_empty(),
                "processes of this test still alive {LEFTOVER_GRACE:?} after it ended (now killed): {left:?}"
            );
            assert!(mounts.is_empty(), "mounts left on the host: {mounts:#?}");
            self.assert_cache_clean(&self.cache);
            self.assert_no_sockets();
        }
    }
}

/// Sets (or clears) `BUNDLE_MODE` on a command.
pub fn set_mode(c: &mut Command, mode: Mode) {
    match mode {
        Mode::Auto => c.env_remove("BUNDLE_MODE"),
        m => c.env("BUNDLE_MODE", m.name()),
    };
}

/// Live processes whose environment contains `BUNDLE_TEST_ID=<id>`.
pub fn tagged_processes(id: &str) -> Vec<(i32, String)> {
    let needle = format!("{TAG_VAR}={id}");
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(env) = fs::read(e.path().join("environ")) else { continue };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // Zombies have no environment left, so what we see here is alive.
            let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("?").to_string();
            found.push((pid, format!("{} (state {state})", comm.trim())));
        }
    }
    found
}

pub(crate) fn kill_all(procs: &[(i32, String)]) {
    for (pid, _) in procs {
        // SAFETY: kill by pid; these are our test's processes.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
}

/// Lines of the host's mount table (ours) that contain any of `needles`.
pub fn host_mounts_mentioning(needles: &[&str]) -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// The file system type of `/` in a mountinfo text (as printed inside the container).
pub fn root_fstype(mountinfo: &str) -> Option<String> {
    mountinfo.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (mount_point == "/").then(|| right.split_whitespace().next().unwrap_or("").to_string())
    })
}

/// Inode and modification time of a path: did it stay the same object?
pub fn identity(p: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.ino(), m.mtime(), m.mtime_nsec())
}
