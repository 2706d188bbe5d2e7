//! The end-to-end harness: real bundles, built by the real `bundle` CLI around the real
//! runtime stub, run as an ordinary user.
//!
//! - When the tests run as root (CI), every bundle runs as the unprivileged user
//!   [`TEST_USER`] (created by `./scripts/test`); otherwise as ourselves.
//! - Every command a test starts carries `BUNDLE_TEST_ID=<unique id>` in its
//!   environment. The runtime passes the environment through to the application, and
//!   the container's keeper and FUSE server are forks of the stub, so [`Test`]'s drop
//!   can find, by that tag alone, any process the test left behind, even though the
//!   test user is shared by tests running in parallel. Leftovers are killed and fail
//!   the test. Each test has its own `XDG_RUNTIME_DIR` (the runtime's rendezvous
//!   sockets) and extract cache, and runs bundles with `BUNDLE_LINGER=0`.
//! - Everything a test writes lives in a [`TestDir`] under `/tmp` (mode 0755, so the
//!   test user can read it), removed on drop. Processes and directories of earlier
//!   runs that were killed before their cleanup are swept at start.
//! - Every wait has a timeout; a process that outlives it is killed and the test fails
//!   with what it printed so far.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod mpi;
pub mod slurm;

/// The unprivileged user the bundles run as when the tests run as root.
pub const TEST_USER: &str = "bundletest";
/// The environment variable that tags every process a test starts.
pub const TAG_VAR: &str = "BUNDLE_TEST_ID";
/// Default limit for one command (a build, a run).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// How long processes of a finished test may take to disappear. Tests run bundles with
/// `BUNDLE_LINGER=0`, so the container's keeper (and its FUSE server) leave as soon as
/// the application has ended: this is generous.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(10);
/// The squashfs image starts on this boundary (docs/format.md).
pub const IMAGE_ALIGN: u64 = 4096;
/// Size of the trailer at the end of every bundle (docs/format.md).
pub const TRAILER_LEN: u64 = 128;
/// The applets of busybox that every test rootfs has in `/bin`.
pub const APPLETS: [&str; 10] = ["sh", "ls", "cat", "env", "pwd", "id", "sleep", "echo", "true", "false"];
/// A PATH with the usual places, for the test user.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

const RUN_SUITE: &str = "run the suite with ./scripts/test (it installs the prerequisites, creates the \
                         test user and builds the stub and the bundler)";

// ---------------------------------------------------------------------------------------
// Where things are

/// `target/<profile>`: the directory holding `deps/`, which holds this test binary.
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("deps directory");
    deps.parent().expect("profile directory").to_path_buf()
}

/// The `bundle` CLI built by `cargo build -p bundler`.
pub fn bundle_bin() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = target_profile_dir().join("bundle");
        assert!(p.is_file(), "{} is missing: {RUN_SUITE}", p.display());
        p
    })
}

/// The static runtime stub (`$BUNDLE_STUB`, else the `stub` profile's musl build),
/// copied once into [`shared_dir`]: every bundle of this test run gets the same stub,
/// even if the build tree's copy is rebuilt meanwhile.
pub fn stub_bin() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = match std::env::var_os("BUNDLE_STUB").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => target_profile_dir().join("../x86_64-unknown-linux-musl/stub/bundle-runtime"),
        };
        assert!(p.is_file(), "the runtime stub {} is missing: {RUN_SUITE}", p.display());
        let copy = shared_dir().join("bundle-runtime");
        fs::copy(&p, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", p.display()));
        copy
    })
}

/// busybox from `busybox-static`: the shell and tools of the test images.
pub fn busybox() -> &'static Path {
    let p = Path::new("/bin/busybox");
    assert!(p.is_file(), "/bin/busybox is missing (Debian package busybox-static): {RUN_SUITE}");
    p
}

/// `tests/programs/probe.c`, compiled once per test binary with `gcc -static -O2` into
/// [`shared_dir`].
pub fn probe() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs/probe.c");
        let out = shared_dir().join("probe");
        let tmp = shared_dir().join("probe.tmp");
        let result =
            run_with(Command::new("gcc").args(["-static", "-O2", "-Wall", "-o"]).arg(&tmp).arg(&src), None, TIMEOUT);
        assert!(result.status.success(), "cannot compile the probe (gcc and libc6-dev needed): {RUN_SUITE}\n{result}");
        fs::rename(&tmp, &out).expect("publish the probe");
        out
    })
}

// ---------------------------------------------------------------------------------------
// Users

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The user the bundles run as: [`TEST_USER`] when we are root, else ourselves.
pub fn user() -> &'static User {
    static U: OnceLock<User> = OnceLock::new();
    U.get_or_init(|| {
        if is_root() {
            passwd(|name, _| name == TEST_USER)
                .unwrap_or_else(|| panic!("user {TEST_USER} does not exist: {RUN_SUITE}"))
        } else {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            passwd(|_, u| u == uid).unwrap_or_else(|| {
                // SAFETY: getgid cannot fail.
                let gid = unsafe { libc::getgid() };
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/".into());
                User { name: std::env::var("USER").unwrap_or_else(|_| uid.to_string()), uid, gid, home }
            })
        }
    })
}

fn passwd(matches: impl Fn(&str, u32) -> bool) -> Option<User> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let (uid, gid) = (f[2].parse().ok()?, f[3].parse().ok()?);
        matches(f[0], uid).then(|| User { name: f[0].to_string(), uid, gid, home: PathBuf::from(f[5]) })
    })
}

/// Makes `cmd` run as the test user when we are root (uid, gid, no supplementary
/// groups; the working directory must be reachable by that user). Its environment is
/// left alone: [`Test::cmd`] also gives it a clean one.
pub fn as_user(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(user().uid).gid(user().gid);
    }
    cmd
}

/// Gives `path` to the test user (when we are root; otherwise it is ours already).
pub fn chown_to_user(path: &Path) {
    if is_root() {
        let u = user();
        std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Can the test user open `/dev/fuse`?
pub fn fuse_usable() -> bool {
    match fs::metadata("/dev/fuse") {
        Ok(m) if is_root() => m.permissions().mode() & 0o006 == 0o006,
        Ok(_) => fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_ok(),
        Err(_) => false,
    }
}

/// Panics with advice unless the test user can use FUSE: the fuse-mode tests model a
/// normal distribution, where `/dev/fuse` is 0666.
#[track_caller]
pub fn require_fuse() {
    assert!(
        fuse_usable(),
        "/dev/fuse is missing or not usable by {}: the fuse-mode tests need it mode 0666 as on a \
         normal distribution; ./scripts/test sets that for the run",
        user().name
    );
}

// ---------------------------------------------------------------------------------------
// Temporary directories

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A prefix naming this process, so that directories of dead runs can be found.
fn prefix() -> String {
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
fn sweep_stale_dirs() {
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

// ---------------------------------------------------------------------------------------
// Test images and bundles

/// A root tree at `at`: `/bin/busybox` with [`APPLETS`] linked to it, and the probe as
/// `/bin/probe`.
pub fn make_rootfs(at: &Path) {
    let bin = at.join("bin");
    fs::create_dir_all(&bin).expect("create rootfs/bin");
    for d in [at, bin.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod rootfs");
    }
    fs::copy(busybox(), bin.join("busybox")).expect("copy busybox");
    fs::copy(probe(), bin.join("probe")).expect("copy probe");
    for f in ["busybox", "probe"] {
        fs::set_permissions(bin.join(f), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).expect("applet symlink");
    }
}

/// `bundle build` with the stub of this build tree.
#[derive(Clone, Default)]
pub struct Build {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Build {
    pub fn new() -> Build {
        Build::default()
    }

    pub fn dir(self, d: impl AsRef<OsStr>) -> Build {
        self.arg("--dir").arg(d)
    }

    pub fn entrypoint(self, e: &str) -> Build {
        self.arg("-e").arg(e)
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Build {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(self, items: I) -> Build {
        items.into_iter().fold(self, |b, a| b.arg(a))
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Build {
        self.env.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// The command, with `--stub` and `-o out` added.
    pub fn command(&self, out: &Path) -> Command {
        let mut c = Command::new(bundle_bin());
        c.arg("build").args(&self.args).arg("--stub").arg(stub_bin()).arg("-o").arg(out);
        c.env_remove("BUNDLE_STUB").env_remove("SOURCE_DATE_EPOCH");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, out: &Path) -> Out {
        run(&mut self.command(out))
    }

    /// Builds `out`, panicking with the CLI's output on failure.
    pub fn build(&self, out: &Path) -> PathBuf {
        self.run(out).assert_success();
        assert!(out.is_file(), "bundle build succeeded but {} does not exist", out.display());
        out.to_path_buf()
    }
}

/// A rootfs in `dir/rootfs-NAME` and a bundle `dir/NAME.sif` of it with `/bin/probe` as
/// the entrypoint and `extra` build arguments.
pub fn probe_bundle(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let root = dir.join(format!("rootfs-{name}"));
    make_rootfs(&root);
    Build::new().dir(&root).entrypoint("/bin/probe").args(extra).build(&dir.join(format!("{name}.sif")))
}

/// `bundle SUBCOMMAND ARGS…`.
pub fn bundle(args: &[&OsStr]) -> Command {
    let mut c = Command::new(bundle_bin());
    c.args(args);
    c
}

/// The trailer of a bundle, read as docs/format.md describes it.
#[derive(Debug, Clone)]
pub struct TrailerInfo {
    pub file_len: u64,
    pub version: u32,
    pub image_offset: u64,
    pub image_size: u64,
    pub metadata_offset: u64,
    pub metadata_size: u64,
    pub image_sha256: String,
}

pub fn read_trailer(path: &Path) -> TrailerInfo {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let t = &bytes[bytes.len() - TRAILER_LEN as usize..];
    assert_eq!(&t[0..8], b"BUNDLE\x00\x01", "trailer magic of {}", path.display());
    let u64_at = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap());
    TrailerInfo {
        file_len: bytes.len() as u64,
        version: u32::from_le_bytes(t[8..12].try_into().unwrap()),
        image_offset: u64_at(16),
        image_size: u64_at(24),
        metadata_offset: u64_at(32),
        metadata_size: u64_at(40),
        image_sha256: t[48..80].iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Copies `src` to `dst` (mode 0755) and lets `patch` change its bytes.
pub fn patched_copy(src: &Path, dst: &Path, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    patch(&mut bytes);
    fs::write(dst, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", dst.display()));
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).expect("chmod");
    dst.to_path_buf()
}

/// Whether an ELF file asks for a program interpreter (is dynamically linked).
pub fn elf_has_interp(bytes: &[u8]) -> bool {
    assert!(bytes.starts_with(b"\x7fELF") && bytes[4] == 2, "not a 64-bit ELF");
    let u16_at = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

// ---------------------------------------------------------------------------------------
// Running commands

/// What a finished command did.
pub struct Out {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout's lines.
    pub fn lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_string).collect()
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Out {
        assert!(self.status.success(), "expected success\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Out {
        assert_eq!(self.code(), Some(code), "expected exit status {code}\n{self}");
        self
    }

    #[track_caller]
    pub fn assert_stdout(&self, expected: &str) -> &Out {
        assert_eq!(self.stdout(), expected, "unexpected stdout\n{self}");
        self
    }

    /// The contract for errors of `bundle` and of the runtime: exit status 255, nothing
    /// on stdout, and exactly one line on stderr, `bundle: error: …`, which contains
    /// `needle` (case-insensitive).
    #[track_caller]
    pub fn assert_bundle_error(&self, needle: &str) -> &Out {
        assert_eq!(self.code(), Some(255), "expected exit status 255 (an error of bundle itself)\n{self}");
        let err = self.stderr();
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.len() == 1 && err.ends_with('\n'),
            "expected exactly one line on stderr, got {}\n{self}",
            lines.len()
        );
        assert!(lines[0].starts_with("bundle: error: "), "stderr must start with `bundle: error: `\n{self}");
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "the error line should mention {needle:?}\n{self}"
        );
        assert!(self.stdout.is_empty(), "expected nothing on stdout\n{self}");
        self
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clip = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            match s.char_indices().nth(4000) {
                Some((i, _)) => format!("{}… ({} bytes in all)", &s[..i], b.len()),
                None => s.into_owned(),
            }
        };
        writeln!(f, "  command: {}", self.what)?;
        writeln!(f, "  status:  {} (after {:.2?})", describe_status(self.status), self.elapsed)?;
        writeln!(f, "  stdout:  {:?}", clip(&self.stdout))?;
        write!(f, "  stderr:  {:?}", clip(&self.stderr))
    }
}

pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s}"),
    }
}

/// A short description of a command for messages: its environment changes, program and
/// arguments.
pub fn describe(cmd: &Command) -> String {
    format!("{cmd:?}")
}

/// Runs `cmd` (a `Command` or `&mut Command`; stdin empty) with the default timeout.
pub fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Out {
    run_with(cmd.borrow_mut(), None, TIMEOUT)
}

/// Runs `cmd` with `input` on stdin (None: /dev/null), collecting stdout and stderr.
/// Panics if it does not finish within `timeout`, or if its stdout stays open more than
/// a few seconds after it exited (some other process holds it).
pub fn run_with(cmd: &mut Command, input: Option<Vec<u8>>, timeout: Duration) -> Out {
    let mut p = Running::spawn_with(cmd, input.is_some());
    if let Some(input) = input {
        let mut stdin = p.child.as_mut().unwrap().stdin.take().unwrap();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    p.finish(timeout)
}

/// A running process whose stdout is read line by line. Killed (SIGKILL) on drop if
/// still running.
pub struct Running {
    child: Option<Child>,
    what: String,
    started: Instant,
    lines: mpsc::Receiver<Vec<u8>>,
    stdout: Vec<u8>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
    stdout_eof: bool,
}

/// Spawns `cmd`, retrying on ETXTBSY: a file just written by this test can still be open
/// for writing in a child that another test thread forked and has not yet exec'ed.
pub fn spawn_retrying(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        Running::spawn_with(cmd, false)
    }

    fn spawn_with(cmd: &mut Command, piped_stdin: bool) -> Running {
        let what = describe(cmd);
        cmd.stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_retrying(cmd).unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || loop {
            let mut line = Vec::new();
            match out.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf);
            let _ = etx.send(buf);
        });
        Running {
            child: Some(child),
            what,
            started: Instant::now(),
            lines,
            stdout: Vec::new(),
            stderr: Some(erx),
            stdout_eof: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Waits for a line of stdout equal to `expected` (without its newline).
    #[track_caller]
    pub fn wait_for_line(&mut self, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.extend_from_slice(&line);
                    if line.strip_suffix(b"\n").unwrap_or(&line) == expected.as_bytes() {
                        return;
                    }
                }
                Err(e) => {
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => format!("not within {timeout:?}"),
                        mpsc::RecvTimeoutError::Disconnected => "stdout closed".to_string(),
                    };
                    self.kill();
                    let out = self.collect(Duration::from_secs(5));
                    panic!("waiting for the line {expected:?} from the bundle: {why}\n{out}");
                }
            }
        }
    }

    /// Sends signal `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}): {}", self.pid(), std::io::Error::last_os_error());
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    /// Waits for the process (killing it after `timeout`) and for its output.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) -> Out {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        let mut timed_out = false;
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let out = self.collect(Duration::from_secs(5));
        if timed_out {
            panic!("timed out after {timeout:?}; killed\n{out}");
        }
        out
    }

    /// Reaps the process and gathers the rest of its output, which must end (EOF)
    /// within `grace` of its exit.
    fn collect(&mut self, grace: Duration) -> Out {
        let mut child = self.child.take().expect("running");
        let status = child.wait().expect("wait");
        let elapsed = self.started.elapsed();
        let deadline = Instant::now() + grace;
        let mut held = Vec::new();
        while !self.stdout_eof {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.stdout.extend_from_slice(&line),
                Err(mpsc::RecvTimeoutError::Disconnected) => self.stdout_eof = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    held.push("stdout");
                    break;
                }
            }
        }
        let stderr =
            match self.stderr.take().map(|r| r.recv_timeout(deadline.saturating_duration_since(Instant::now()))) {
                Some(Ok(b)) => b,
                _ => {
                    held.push("stderr");
                    Vec::new()
                }
            };
        let out = Out { what: self.what.clone(), status, stdout: std::mem::take(&mut self.stdout), stderr, elapsed };
        assert!(
            held.is_empty(),
            "{} still open {grace:?} after the process exited: another process holds it\n{out}",
            held.join(" and ")
        );
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// One test: its directory, its tag, its leftovers

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

    fn user_env(&self, c: &mut Command) {
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

fn kill_all(procs: &[(i32, String)]) {
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
