//! Issue 2, end to end: `bundle build` → a bundle → run as an ordinary user, in fuse mode
//! and in extract mode. Every test checks on drop that nothing it started is left running
//! or mounted (see `common`).
//!
//! The main bundle (busybox + the probe, entrypoint `/bin/probe`) is built once and
//! shared; tests that damage a bundle work on a copy.

use e2e::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The bundle most tests run: `/bin/probe` with two `--env` values and a label.
fn app() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        probe_bundle(
            shared_dir(),
            "app",
            &["--env", "BUNDLE_E2E=from-bundle", "--env", "WITH_SPACE=a b", "--label", "purpose=e2e"],
        )
    })
}

const READY: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_secs(20);

/// A test in `mode`; fuse mode needs `/dev/fuse` usable by the test user.
fn start(name: &str, mode: Mode) -> Test {
    if mode != Mode::Extract {
        require_fuse();
    }
    Test::new(&format!("{name}-{}", mode.name()))
}

/// Runs the given functions once per forced mode: `NAME::fuse` and `NAME::extract`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn fuse() {
                super::$name(e2e::Mode::Fuse)
            }
            #[test]
            fn extract() {
                super::$name(e2e::Mode::Extract)
            }
        }
    )*};
}

in_both_modes!(
    args_pass_untouched,
    exit_status_passes_through,
    death_by_signal_is_128_plus_n,
    signals_reach_the_application,
    the_bundle_pid_is_the_application,
    cwd_is_the_callers,
    environment_passes_through,
    stdio_passes_through,
    terminal_passes_through,
    identity_is_the_callers,
    host_binds_and_nothing_else,
    mount_mode_is_the_one_asked_for,
    exec_and_shell_run_programs_of_the_image,
    exec_of_a_missing_command_is_an_error,
    command_substitution_returns_promptly,
    sigkill_leaves_nothing_behind,
    read_only_binds_are_read_only_in_their_submounts,
    host_mounts_reach_a_lingering_container,
);

// ---------------------------------------------------------------------------------------
// Running the application

fn args_pass_untouched(mode: Mode) {
    let t = start("args", mode);
    let args = ["two words", "", "--bundle-info", "--bundle-mode=extract", "--", "*", "$HOME", "a\tb", "ünï"];
    let mut cmd = t.app(app(), mode, &["args"]);
    cmd.args(args);
    let out = run(&mut cmd);
    let expected: String = args.iter().map(|a| format!("[{a}]\n")).collect();
    out.assert_success().assert_stdout(&expected);

    // `--` ends the bundle's own options: what follows is the application's.
    let out = run(&mut t.app(app(), mode, &["--", "args", "--bundle-help"]));
    out.assert_success().assert_stdout("[--bundle-help]\n");
}

fn exit_status_passes_through(mode: Mode) {
    let t = start("exit", mode);
    for code in [0, 1, 42] {
        run(t.app(app(), mode, &["exit", &code.to_string()])).assert_code(code);
    }
}

fn death_by_signal_is_128_plus_n(mode: Mode) {
    let t = start("raise", mode);
    for sig in [libc::SIGTERM, libc::SIGUSR1, libc::SIGKILL] {
        let out = run(t.app(app(), mode, &["raise", &sig.to_string()]));
        assert_eq!(out.status.signal(), Some(sig), "the bundle's process should die by signal {sig}\n{out}");
        // What a shell (or a job script) sees.
        let mut sh = t.cmd("/bin/sh");
        set_mode(&mut sh, mode);
        sh.args(["-c", r#""$0" raise "$1"; echo "status $?""#]).arg(app()).arg(sig.to_string());
        let out = run(&mut sh);
        assert!(out.lines().contains(&format!("status {}", 128 + sig)), "expected status {}\n{out}", 128 + sig);
    }
}

fn signals_reach_the_application(mode: Mode) {
    let t = start("signals", mode);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        let mut p = Running::spawn(&mut t.app(app(), mode, &["wait-signal"]));
        p.wait_for_line("ready", READY);
        p.signal(sig);
        let out = p.finish(SHORT);
        assert!(out.lines().contains(&format!("signal {sig}")), "the application did not report signal {sig}\n{out}");
        out.assert_code(64 + sig);
    }
}

fn the_bundle_pid_is_the_application(mode: Mode) {
    let t = start("pid", mode);
    let p = Running::spawn(&mut t.app(app(), mode, &["pid"]));
    let pid = p.pid();
    let out = p.finish(SHORT);
    out.assert_success().assert_stdout(&format!("{pid}\n"));
}

fn cwd_is_the_callers(mode: Mode) {
    let t = start("cwd", mode);
    // Under /tmp (bound whole), with a space in its name.
    let dir = t.dir.user_dir("a dir/deeper");
    let mut cmd = t.app(app(), mode, &["cwd"]);
    cmd.current_dir(&dir);
    run(&mut cmd).assert_success().assert_stdout(&format!("{}\n", dir.display()));

    // The user's home.
    let home = &user().home;
    let mut cmd = t.app(app(), mode, &["cwd"]);
    cmd.current_dir(home);
    run(&mut cmd).assert_success().assert_stdout(&format!("{}\n", home.display()));

    // Somewhere the image has no directory for (/var/tmp/...): the runtime must make
    // the mount point.
    let elsewhere = TestDir::new_in(Path::new("/var/tmp"), "cwd");
    let dir = elsewhere.user_dir("x/y");
    let mut cmd = t.app(app(), mode, &["cwd"]);
    cmd.current_dir(&dir);
    run(&mut cmd).assert_success().assert_stdout(&format!("{}\n", dir.display()));
}

fn environment_passes_through(mode: Mode) {
    let t = start("env", mode);
    let env = |name: &str| {
        let mut cmd = t.app(app(), mode, &["env", name]);
        cmd.env("HOST_ONLY", "host value").env("BUNDLE_E2E", "from-host");
        run(&mut cmd)
    };
    env("HOST_ONLY").assert_success().assert_stdout("host value\n");
    env("WITH_SPACE").assert_success().assert_stdout("a b\n");
    // The bundle's own --env values apply over the caller's.
    env("BUNDLE_E2E").assert_success().assert_stdout("from-bundle\n");
    env("HOME").assert_success().assert_stdout(&format!("{}\n", user().home.display()));
    env("NOT_SET_ANYWHERE").assert_code(3);
}

fn stdio_passes_through(mode: Mode) {
    let t = start("stdio", mode);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let out = run_with(&mut t.app(app(), mode, &["cat"]), Some(data.clone()), TIMEOUT);
    out.assert_success();
    assert!(out.stdout == data, "stdin → stdout changed the data ({} bytes in, {} out)", data.len(), out.stdout.len());

    let out = run(&mut t.app(app(), mode, &["err", "to stderr"]));
    out.assert_success();
    assert_eq!(out.stderr(), "to stderr\n", "{out}");

    let out = run(&mut t.app(app(), mode, &["isatty"]));
    out.assert_success().assert_stdout("0 0 0\n");
}

fn terminal_passes_through(mode: Mode) {
    let t = start("tty", mode);
    // script(1) runs the bundle on a new pseudo-terminal.
    let mut cmd = t.cmd("script");
    set_mode(&mut cmd, mode);
    cmd.args(["-q", "-e", "-c"]).arg(format!("'{}' isatty", app().display())).arg("/dev/null");
    let out = run(&mut cmd);
    out.assert_success();
    assert!(out.stdout().contains("1 1 1"), "stdin, stdout and stderr should be the terminal\n{out}");
}

fn identity_is_the_callers(mode: Mode) {
    let t = start("ids", mode);
    let u = user();
    run(&mut t.app(app(), mode, &["uid"])).assert_success().assert_stdout(&format!("{} {}\n", u.uid, u.gid));
    // /etc/passwd is the host's: the name resolves.
    run(&mut t.app(app(), mode, &["--bundle-exec", "id", "-un"]))
        .assert_success()
        .assert_stdout(&format!("{}\n", u.name));
}

fn host_binds_and_nothing_else(mode: Mode) {
    let t = start("binds", mode);
    let host_file = t.work.join("host-file.txt");
    fs::write(&host_file, "from the host\n").unwrap();
    let home = user().home.display().to_string();
    let checks = [
        "/proc/self/status",
        "/sys/kernel",
        "/dev/null",
        "/dev/shm",
        &home,
        &host_file.display().to_string(),
        "/oldroot",
        "/newroot",
    ]
    .map(str::to_string);
    let script = r#"for p in "$@"; do if [ -e "$p" ]; then echo "yes $p"; else echo "no $p"; fi; done
cat /etc/hosts > "$OUT/hosts"
echo written > "$OUT/written""#;
    let mut cmd = t.app(app(), mode, &["--bundle-shell", "-c", script, "sh"]);
    cmd.args(&checks).env("OUT", &t.work);
    let out = run(&mut cmd);
    out.assert_success();
    let expected: Vec<String> = checks
        .iter()
        .map(|p| format!("{} {p}", if p == "/oldroot" || p == "/newroot" { "no" } else { "yes" }))
        .collect();
    assert_eq!(out.lines(), expected, "host paths seen in the container\n{out}");
    assert_eq!(fs::read(t.work.join("hosts")).unwrap(), fs::read("/etc/hosts").unwrap(), "/etc/hosts is the host's");
    let written = fs::metadata(t.work.join("written")).expect("a file written in the container is on the host");
    assert_eq!((written.uid(), written.gid()), (user().uid, user().gid), "owned by the caller");
}

fn mount_mode_is_the_one_asked_for(mode: Mode) {
    let t = start("mode", mode);
    let out = run(&mut t.app(app(), mode, &["--bundle-exec", "cat", "/proc/self/mountinfo"]));
    out.assert_success();
    let fstype = root_fstype(&out.stdout()).unwrap_or_default();
    match mode {
        Mode::Fuse => {
            assert!(fstype.starts_with("fuse"), "root should be the FUSE mount, is {fstype:?}\n{out}");
            assert!(!t.cache.exists(), "fuse mode must not fill the extract cache");
        }
        _ => {
            assert!(!fstype.starts_with("fuse"), "root should not be FUSE in extract mode\n{out}");
            assert!(t.cache.join("images").join(read_trailer(app()).image_sha256).is_dir(), "extract cache not filled");
        }
    }
}

fn exec_and_shell_run_programs_of_the_image(mode: Mode) {
    let t = start("exec", mode);
    let out = run(&mut t.app(app(), mode, &["--bundle-exec", "ls", "/"]));
    out.assert_success();
    for d in ["bin", "proc", "dev", "tmp", "etc"] {
        assert!(out.lines().iter().any(|l| l == d), "`ls /` should show {d}\n{out}");
    }
    let out = run(&mut t.app(app(), mode, &["--bundle-exec", "/bin/probe", "args", "x y"]));
    out.assert_success().assert_stdout("[x y]\n");
    let out = run(&mut t.app(app(), mode, &["--bundle-exec", "env"]));
    assert!(out.lines().contains(&"BUNDLE_E2E=from-bundle".to_string()), "bundle env under --bundle-exec\n{out}");
    run(&mut t.app(app(), mode, &["--bundle-shell", "-c", "echo hi"])).assert_success().assert_stdout("hi\n");
    run(&mut t.app(app(), mode, &["--bundle-shell", "-c", "exit 7"])).assert_code(7);
}

fn exec_of_a_missing_command_is_an_error(mode: Mode) {
    let t = start("exec-missing", mode);
    run(&mut t.app(app(), mode, &["--bundle-exec", "/bin/nope"])).assert_bundle_error("/bin/nope");
    run(&mut t.app(app(), mode, &["--bundle-exec", "no-such-command", "x"])).assert_bundle_error("no-such-command");
}

fn command_substitution_returns_promptly(mode: Mode) {
    let t = start("subst", mode);
    let mut sh = t.cmd("/bin/sh");
    set_mode(&mut sh, mode);
    sh.args(["-c", r#"out=$("$0" args hello); echo "got $out""#]).arg(app());
    let out = run_with(&mut sh, None, Duration::from_secs(10));
    out.assert_success().assert_stdout("got [hello]\n");
    assert!(out.elapsed < Duration::from_secs(5), "$(./app.sif …) took {:?}\n{out}", out.elapsed);
}

/// An upper bound for the runtime's default linger (how long the container outlives its
/// last application, for warm starts), plus time to leave.
const DEFAULT_LINGER_BOUND: Duration = Duration::from_secs(10);

fn sigkill_leaves_nothing_behind(mode: Mode) {
    let t = start("sigkill", mode);
    // With the runtime's default linger.
    let mut cmd = t.app(app(), mode, &["wait-signal"]);
    cmd.env_remove("BUNDLE_LINGER");
    let mut p = Running::spawn(&mut cmd);
    p.wait_for_line("ready", READY);
    if mode == Mode::Fuse {
        let procs = t.processes();
        assert!(procs.len() >= 2, "fuse mode: expected the application and its FUSE server, found {procs:?}");
    }
    p.signal(libc::SIGKILL);
    let out = p.finish(SHORT);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out}");
    t.assert_no_processes(DEFAULT_LINGER_BOUND);
}

// ---------------------------------------------------------------------------------------
// Mounts of the host

/// A `:ro` bind of a directory with a tmpfs mounted below it: the tmpfs comes along, and
/// is read-only too (a rw bind of the same shows it writable).
fn read_only_binds_are_read_only_in_their_submounts(mode: Mode) {
    require_root("mounting a tmpfs on the host");
    let t = start("ro-submount", mode);
    let data = t.work.join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    chown_to_user(&data);
    let _sub = HostMount::tmpfs(&data.join("sub"));
    let script = r#"for f in /data/top /data/sub/below; do echo x > "$f" && echo "wrote $f"; done; true"#;
    let bind = |opt: &str| format!("{}:/data{opt}", data.display());

    let out = run(&mut t.app(app(), mode, &["--bundle-bind", &bind(""), "--bundle-shell", "-c", script]));
    out.assert_success().assert_stdout("wrote /data/top\nwrote /data/sub/below\n");
    assert!(data.join("sub/below").is_file(), "the write went to the host's tmpfs\n{out}");

    let out = run(&mut t.app(app(), mode, &["--bundle-bind", &bind(":ro"), "--bundle-shell", "-c", script]));
    out.assert_success().assert_stdout("");
    for f in ["/data/top", "/data/sub/below"] {
        assert!(out.stderr().contains(&format!("{f}: Read-only file system")), "{f} should be EROFS\n{out}");
    }
}

/// A mount the host makes under a bound directory after a container started (an
/// automounted home or project directory) is seen by a later run joining it.
fn host_mounts_reach_a_lingering_container(mode: Mode) {
    require_root("mounting on the host");
    let t = start("automount", mode);
    let auto = t.work.join("auto");
    fs::create_dir_all(auto.join("later")).unwrap();
    let _shared = HostMount::shared(&auto);
    let spec = format!("{}:/projects", auto.display());
    let joined = |args: &[&str]| {
        let mut c = t.app(app(), mode, &[&["--bundle-bind", spec.as_str()], args].concat());
        c.env("BUNDLE_LINGER", "5").env("BUNDLE_SHARE", &t.id);
        run(&mut c)
    };
    // `mnt:[N]`, the mount namespace (busybox has no readlink here).
    let namespace = r#"l=$(ls -l /proc/self/ns/mnt); echo "${l##* }""#;
    let first = joined(&["--bundle-shell", "-c", namespace]);
    first.assert_success();

    let _later = HostMount::tmpfs(&auto.join("later"));
    fs::write(auto.join("later/marker"), "mounted later\n").unwrap();
    let second = joined(&["--bundle-shell", "-c", &format!("{namespace}; cat /projects/later/marker")]);
    second.assert_success();
    assert_eq!(second.lines(), [first.stdout().trim(), "mounted later"], "the same container, the new mount\n{second}");
    t.assert_no_processes(Duration::from_secs(15));
}

// ---------------------------------------------------------------------------------------
// Mode selection

#[test]
fn fuse_server_lives_while_the_application_runs() {
    let t = start("server-life", Mode::Fuse);
    let mut p = Running::spawn(&mut t.app(app(), Mode::Fuse, &["wait-signal"]));
    p.wait_for_line("ready", READY);
    let procs = t.processes();
    let others: Vec<_> = procs.iter().filter(|(pid, _)| *pid != p.pid()).collect();
    assert!(!others.is_empty(), "no FUSE server process besides the application: {procs:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        t.processes().iter().any(|(pid, _)| *pid != p.pid()),
        "the FUSE server went away while the application runs"
    );
    p.signal(libc::SIGTERM);
    p.finish(SHORT).assert_code(64 + libc::SIGTERM);
    t.assert_no_processes(Duration::from_secs(3));
}

/// The parent pid of `pid`, from /proc.
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_dead_fuse_server_ends_its_container_and_the_next_run_works() {
    let t = start("server-death", Mode::Fuse);
    let shared = |linger: &str, args: &[&str]| {
        let mut c = t.app(app(), Mode::Fuse, args);
        c.env("BUNDLE_SHARE", "server-death").env("BUNDLE_LINGER", linger);
        c
    };
    let mut p = Running::spawn(&mut shared("60", &["wait-signal"]));
    p.wait_for_line("ready", READY);
    let procs: Vec<i32> = t.processes().iter().map(|(pid, _)| *pid).filter(|&pid| pid != p.pid()).collect();
    // The keeper and its child, the FUSE server.
    let server = procs.iter().copied().find(|&s| parent_pid(s).is_some_and(|pp| procs.contains(&pp)));
    let server = server.unwrap_or_else(|| panic!("no FUSE server among {procs:?}"));
    let keeper = parent_pid(server).unwrap();
    // Named, so that `ps -e` and `top` tell them from the application.
    let comm = |pid: i32| fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!((comm(keeper).trim(), comm(server).trim()), ("bundle-keeper", "bundle-fuse"));
    // SAFETY: kill of a process of this test.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    // The keeper leaves at once, not after its 60 s of linger, though a member still runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fs::read_to_string(format!("/proc/{keeper}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(std::time::Instant::now() < deadline, "the keeper {keeper} outlived its FUSE server");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A run under the same key gets a new container.
    run(&mut shared("0", &["args", "again"])).assert_success().assert_stdout("[again]\n");
    p.signal(libc::SIGTERM);
    p.finish(SHORT).assert_code(64 + libc::SIGTERM);
    t.assert_no_processes(Duration::from_secs(5));
}

#[test]
fn automatic_mode_is_fuse_when_usable() {
    let t = start("auto-fuse", Mode::Auto);
    let out = run(&mut t.app(app(), Mode::Auto, &["--bundle-exec", "cat", "/proc/self/mountinfo"]));
    out.assert_success();
    let fstype = root_fstype(&out.stdout()).unwrap_or_default();
    assert!(fstype.starts_with("fuse"), "with a usable /dev/fuse the root should be FUSE, is {fstype:?}\n{out}");
    assert!(!t.cache.exists(), "fuse mode must not fill the extract cache");
}

#[test]
fn automatic_mode_falls_back_to_extract_without_fuse() {
    require_root("masking /dev/fuse for one test");
    let t = Test::new("auto-extract");
    let mut cmd = t.cmd_without_fuse(app()).unwrap();
    cmd.args(["args", "a b"]);
    run(&mut cmd).assert_success().assert_stdout("[a b]\n");
    let tree = t.cache.join("images").join(read_trailer(app()).image_sha256);
    assert!(tree.is_dir(), "extract mode should have unpacked the image into {}", tree.display());

    let mut cmd = t.cmd_without_fuse(app()).unwrap();
    cmd.args(["--bundle-exec", "cat", "/proc/self/mountinfo"]);
    let out = run(&mut cmd);
    out.assert_success();
    assert!(!root_fstype(&out.stdout()).unwrap_or_default().starts_with("fuse"), "{out}");

    // Forcing fuse mode there is an error, not a silent fallback.
    let mut cmd = t.cmd_without_fuse(app()).unwrap();
    cmd.args(["--bundle-mode=fuse", "args", "x"]);
    run(&mut cmd).assert_bundle_error("fuse");
    let mut cmd = t.cmd_without_fuse(app()).unwrap();
    cmd.env("BUNDLE_MODE", "fuse").args(["args", "x"]);
    run(&mut cmd).assert_bundle_error("fuse");
}

#[test]
fn mode_flag_forms_and_precedence() {
    let t = start("mode-flag", Mode::Auto);
    let root_of = |args: &[&str], env_mode: Mode| {
        let mut cmd = t.app(app(), env_mode, args);
        cmd.args(["--bundle-exec", "cat", "/proc/self/mountinfo"]);
        let out = run(&mut cmd);
        out.assert_success();
        root_fstype(&out.stdout()).unwrap_or_default()
    };
    assert!(!root_of(&["--bundle-mode=extract"], Mode::Fuse).starts_with("fuse"), "the flag wins over BUNDLE_MODE");
    assert!(!root_of(&["--bundle-mode", "extract"], Mode::Auto).starts_with("fuse"));
    assert!(root_of(&["--bundle-mode=fuse"], Mode::Extract).starts_with("fuse"), "the flag wins over BUNDLE_MODE");
}

#[test]
fn bad_options_and_modes_are_errors() {
    let t = Test::new("bad-options");
    run(&mut t.app(app(), Mode::Auto, &["--bundle-mode=bogus", "args"])).assert_bundle_error("bogus");
    run(t.app(app(), Mode::Auto, &["args"]).env("BUNDLE_MODE", "bogus")).assert_bundle_error("bogus");
    run(&mut t.app(app(), Mode::Auto, &["--bundle-nope"])).assert_bundle_error("--bundle-nope");
    run(&mut t.app(app(), Mode::Auto, &["--bundle-extract"])).assert_bundle_error("--bundle-extract");
}

// ---------------------------------------------------------------------------------------
// Extract mode's cache

#[test]
fn extract_cache_is_reused() {
    let t = Test::new("cache-reuse");
    let tree = t.cache.join("images").join(read_trailer(app()).image_sha256);
    run(&mut t.app(app(), Mode::Extract, &["args", "1"])).assert_success();
    assert!(tree.is_dir(), "no tree at {}", tree.display());
    let before = identity(&tree);
    let probe_before = identity(&tree.join("bin/probe"));
    run(&mut t.app(app(), Mode::Extract, &["args", "2"])).assert_success().assert_stdout("[2]\n");
    assert_eq!(identity(&tree), before, "the cached tree was replaced on the second run");
    assert_eq!(identity(&tree.join("bin/probe")), probe_before, "the cached tree was rewritten on the second run");
    assert_eq!(fs::read(tree.join("bin/probe")).unwrap(), fs::read(probe()).unwrap());
}

#[test]
fn extract_cache_default_locations() {
    let t = Test::new("cache-where");
    let digest = read_trailer(app()).image_sha256;

    let xdg = t.dir.user_dir("xdg");
    let mut cmd = t.app(app(), Mode::Extract, &["exit", "0"]);
    cmd.env_remove("BUNDLE_CACHE_DIR").env("XDG_CACHE_HOME", &xdg);
    run(&mut cmd).assert_success();
    assert!(xdg.join("bundle/images").join(&digest).is_dir(), "$XDG_CACHE_HOME/bundle/images/<digest> expected");
    t.assert_cache_clean(&xdg.join("bundle"));

    let home = t.dir.user_dir("home");
    let mut cmd = t.app(app(), Mode::Extract, &["exit", "0"]);
    cmd.env_remove("BUNDLE_CACHE_DIR").env("HOME", &home);
    run(&mut cmd).assert_success();
    assert!(home.join(".cache/bundle/images").join(&digest).is_dir(), "~/.cache/bundle/images/<digest> expected");
    t.assert_cache_clean(&home.join(".cache/bundle"));
}

#[test]
fn concurrent_first_runs_share_one_extraction() {
    let t = Test::new("cache-race");
    // Each run in a container of its own (no sharing), so that all eight unpack at once.
    let runs: Vec<Running> = (0..8)
        .map(|i| {
            let mut cmd = t.app(app(), Mode::Extract, &["args", &format!("run {i}")]);
            cmd.env("BUNDLE_SHARE", "off");
            Running::spawn(&mut cmd)
        })
        .collect();
    for (i, p) in runs.into_iter().enumerate() {
        p.finish(TIMEOUT).assert_success().assert_stdout(&format!("[run {i}]\n"));
    }
    let images = t.cache.join("images");
    let digest = read_trailer(app()).image_sha256;
    let mut names: Vec<String> =
        fs::read_dir(&images).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let dirs: Vec<&String> = names.iter().filter(|n| images.join(n).is_dir()).collect();
    assert_eq!(dirs, [&digest], "one tree expected in {}: {names:?}", images.display());
    t.assert_cache_clean(&t.cache);
    let tree = images.join(&digest);
    assert_eq!(fs::read(tree.join("bin/probe")).unwrap(), fs::read(probe()).unwrap(), "cached probe differs");
    assert_eq!(fs::read(tree.join("bin/busybox")).unwrap(), fs::read(busybox()).unwrap(), "cached busybox differs");
    assert_eq!(fs::read_link(tree.join("bin/sh")).unwrap(), Path::new("busybox"));
}

// ---------------------------------------------------------------------------------------
// The bundle's own options

#[test]
fn bundle_help() {
    let t = Test::new("opt-help");
    let out = run(&mut t.app(app(), Mode::Auto, &["--bundle-help"]));
    out.assert_success();
    for opt in [
        "--bundle-info",
        "--bundle-verify",
        "--bundle-offset",
        "--bundle-extract",
        "--bundle-mode",
        "--bundle-exec",
        "--bundle-shell",
    ] {
        assert!(out.stdout().contains(opt), "help should mention {opt}\n{out}");
    }
}

#[test]
fn bundle_info_is_the_metadata() {
    let t = Test::new("opt-info");
    let out = run(&mut t.app(app(), Mode::Auto, &["--bundle-info"]));
    out.assert_success();
    let mut info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"));
    assert_eq!(info["entrypoint"], serde_json::json!(["/bin/probe"]), "{out}");
    assert_eq!(info["env"]["BUNDLE_E2E"], "from-bundle", "{out}");
    assert_eq!(info["labels"]["purpose"], "e2e", "{out}");
    // The same document as `bundle inspect --json`, with the signers' keys added.
    let signers = info.as_object_mut().unwrap().remove("signers");
    assert_eq!(signers, Some(serde_json::json!([])), "an unsigned bundle has no signers\n{out}");
    let cli = run(bundle(&[OsStr::new("inspect"), OsStr::new("--json"), app().as_os_str()]));
    cli.assert_success();
    let cli: Value = serde_json::from_slice(&cli.stdout).expect("inspect --json is JSON");
    assert_eq!(cli, info);
}

#[test]
fn bundle_verify_option() {
    let t = Test::new("opt-verify");
    run(&mut t.app(app(), Mode::Auto, &["--bundle-verify"])).assert_success();
}

#[test]
fn bundle_offset_works_with_unsquashfs() {
    let t = Test::new("opt-offset");
    let out = run(&mut t.app(app(), Mode::Auto, &["--bundle-offset"]));
    out.assert_success();
    let offset: u64 = out.stdout().trim().parse().unwrap_or_else(|_| panic!("not a number\n{out}"));
    assert_eq!(offset % IMAGE_ALIGN, 0, "offset {offset} is not 4096-aligned");
    assert_eq!(offset, read_trailer(app()).image_offset);

    let mut cmd = t.cmd("unsquashfs");
    cmd.args(["-o", &offset.to_string(), "-l"]).arg(app());
    let out = run(&mut cmd);
    out.assert_success();
    for f in ["squashfs-root/bin/probe", "squashfs-root/bin/busybox", "squashfs-root/bin/sh", "squashfs-root/proc"] {
        assert!(out.lines().iter().any(|l| l == f), "unsquashfs -l should list {f}\n{out}");
    }
    // zstd, 128 KiB blocks by default.
    let mut cmd = t.cmd("unsquashfs");
    cmd.args(["-o", &offset.to_string(), "-s"]).arg(app());
    let out = run(&mut cmd);
    out.assert_success();
    assert!(out.stdout().contains("Compression zstd"), "{out}");
    assert!(out.stdout().contains("Block size 131072"), "{out}");
}

#[test]
fn bundle_extract_option() {
    let t = Test::new("opt-extract");
    let dest = t.work.join("unpacked");
    run(&mut t.app(app(), Mode::Auto, &[OsStr::new("--bundle-extract"), dest.as_os_str()])).assert_success();
    assert_unpacked(&dest);
    // Not into a non-empty directory.
    run(&mut t.app(app(), Mode::Auto, &[OsStr::new("--bundle-extract"), dest.as_os_str()]))
        .assert_bundle_error("empty");
}

/// `dest` holds the main bundle's tree.
fn assert_unpacked(dest: &Path) {
    assert_eq!(fs::read(dest.join("bin/probe")).unwrap(), fs::read(probe()).unwrap(), "unpacked probe differs");
    assert_eq!(fs::metadata(dest.join("bin/probe")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::read(dest.join("bin/busybox")).unwrap(), fs::read(busybox()).unwrap(), "unpacked busybox differs");
    for a in APPLETS {
        assert_eq!(fs::read_link(dest.join("bin").join(a)).unwrap(), Path::new("busybox"), "applet {a}");
    }
    for d in ["proc", "sys", "dev", "tmp", "home", "etc"] {
        assert!(dest.join(d).is_dir(), "mount point /{d} missing from the image");
    }
}

// ---------------------------------------------------------------------------------------
// The `bundle` CLI

#[test]
fn built_file_layout() {
    let bytes = fs::read(app()).unwrap();
    let t = read_trailer(app());
    assert!(bytes.starts_with(b"\x7fELF"), "a bundle starts with the stub");
    let stub = fs::read(stub_bin()).unwrap();
    assert!(bytes.starts_with(&stub), "the stub's bytes come first, unchanged");
    assert_eq!(t.image_offset, (stub.len() as u64).div_ceil(IMAGE_ALIGN) * IMAGE_ALIGN);
    assert!(bytes[stub.len()..t.image_offset as usize].iter().all(|&b| b == 0), "zero padding");
    assert_eq!(&bytes[t.image_offset as usize..t.image_offset as usize + 4], b"hsqs", "squashfs magic at the offset");
    // Version 3: the chunk table (32 bytes per 64 KiB of image) and its index (32 bytes
    // per 4 KiB of table) between image and metadata, no signatures yet.
    let table = t.image_size.div_ceil(65536) * 32;
    assert_eq!(t.metadata_offset, t.image_offset + t.image_size + table + table.div_ceil(4096) * 32);
    assert_eq!(t.signatures_size, 0);
    assert_eq!(t.metadata_offset + t.metadata_size + TRAILER_LEN, t.file_len);
    assert_eq!(t.version, 3);
    assert_eq!(&bytes[bytes.len() - 8..], b"\x01\x00ELDNUB", "end magic");
    assert_eq!(fs::metadata(app()).unwrap().permissions().mode() & 0o777, 0o755, "bundles are mode 0755");
}

#[test]
fn runtime_stub_is_static() {
    let stub = fs::read(stub_bin()).unwrap();
    assert!(!elf_has_interp(&stub), "{} is dynamically linked", stub_bin().display());
    eprintln!("stub size: {} bytes", stub.len());
}

#[test]
fn bundle_build_uses_a_static_stub_by_default() {
    // Without --stub or BUNDLE_STUB the bundler finds a stub itself: it must be the
    // static one, whatever else the build tree holds.
    let d = TestDir::new("default-stub");
    let root = d.join("rootfs");
    make_rootfs(&root);
    let out = d.join("default.sif");
    let mut cmd = bundle(&[
        OsStr::new("build"),
        OsStr::new("--dir"),
        root.as_os_str(),
        OsStr::new("-e"),
        OsStr::new("/bin/probe"),
        OsStr::new("-o"),
        out.as_os_str(),
    ]);
    cmd.env_remove("BUNDLE_STUB");
    run(&mut cmd).assert_success();
    let bytes = fs::read(&out).unwrap();
    let t = read_trailer(&out);
    assert!(
        !elf_has_interp(&bytes[..t.image_offset as usize]),
        "bundle build picked a dynamically linked stub ({} bytes before the image); the default must be the static stub",
        t.image_offset
    );
}

#[test]
fn cli_inspect() {
    let out = run(bundle(&[OsStr::new("inspect"), app().as_os_str()]));
    out.assert_success();
    let text = out.stdout();
    for needle in ["/bin/probe", "BUNDLE_E2E=from-bundle", "purpose=e2e", &read_trailer(app()).image_sha256] {
        assert!(text.contains(needle), "inspect should show {needle}\n{out}");
    }
}

#[test]
fn cli_verify_and_list() {
    run(bundle(&[OsStr::new("verify"), app().as_os_str()])).assert_success();
    let out = run(bundle(&[OsStr::new("list"), app().as_os_str()]));
    out.assert_success();
    let lines = out.lines();
    for p in ["/bin/probe", "/bin/busybox", "/proc", "/etc/passwd"] {
        assert!(lines.iter().any(|l| l.ends_with(&format!(" {p}"))), "list should show {p}\n{out}");
    }
    assert!(lines.iter().any(|l| l.ends_with("/bin/sh -> busybox")), "list should show the symlink\n{out}");
}

#[test]
fn cli_extract() {
    let d = TestDir::new("cli-extract");
    let dest = d.join("out");
    run(bundle(&[OsStr::new("extract"), app().as_os_str(), dest.as_os_str()])).assert_success();
    assert_unpacked(&dest);
    // A non-empty directory is refused, and left as it was.
    let full = d.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), "mine").unwrap();
    run(bundle(&[OsStr::new("extract"), app().as_os_str(), full.as_os_str()])).assert_bundle_error("empty");
    assert_eq!(fs::read_dir(&full).unwrap().count(), 1);
    assert_eq!(fs::read_to_string(full.join("keep")).unwrap(), "mine");
}

#[test]
fn build_from_a_file_list_and_files() {
    let t = Test::new("file-list");
    let src = t.dir.join("src");
    fs::create_dir(&src).unwrap();
    fs::copy(probe(), src.join("probe")).unwrap();
    fs::write(src.join("data.txt"), "some data\n").unwrap();
    // Relative sources are taken from the list's directory.
    let list = src.join("list.txt");
    fs::write(
        &list,
        format!(
            "# the app\nprobe=/usr/bin/app\n\n{}=/bin/busybox\ndata.txt=/usr/share/app/data.txt\n",
            busybox().display()
        ),
    )
    .unwrap();
    let out = t.dir.join("app.sif");
    Build::new()
        .arg("--files")
        .arg(&list)
        .arg("--file")
        .arg(format!("{}=/opt/probe2", probe().display()))
        .entrypoint("/usr/bin/app")
        .build(&out);
    run(&mut t.app(&out, Mode::Auto, &["args", "arg1", "two words"]))
        .assert_success()
        .assert_stdout("[arg1]\n[two words]\n");
    let out2 = run(&mut t.app(&out, Mode::Auto, &["--bundle-exec", "/bin/busybox", "cat", "/usr/share/app/data.txt"]));
    out2.assert_success().assert_stdout("some data\n");
    run(&mut t.app(&out, Mode::Auto, &["--bundle-exec", "/opt/probe2", "exit", "5"])).assert_code(5);
}

#[test]
fn build_options_level_and_block_size() {
    let d = TestDir::new("build-opts");
    let root = d.join("rootfs");
    make_rootfs(&root);
    let out = d.join("opts.sif");
    Build::new()
        .dir(&root)
        .entrypoint("/bin/probe")
        .args(["--level", "3", "--block-size", "65536", "--threads", "1"])
        .build(&out);
    let json = run(bundle(&[OsStr::new("inspect"), OsStr::new("--json"), out.as_os_str()]));
    json.assert_success();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["image"]["level"], 3, "{json}");
    assert_eq!(v["image"]["block_size"], 65536, "{json}");
    let offset = read_trailer(&out).image_offset.to_string();
    let s = run(Command::new("unsquashfs").args(["-o", &offset, "-s"]).arg(&out));
    s.assert_success();
    assert!(s.stdout().contains("Block size 65536"), "{s}");
    run(bundle(&[OsStr::new("verify"), out.as_os_str()])).assert_success();
}

#[test]
fn build_replaces_the_output_by_rename() {
    let d = TestDir::new("build-rename");
    let root = d.join("rootfs");
    make_rootfs(&root);
    let out = d.join("out.sif");
    let witness = d.join("witness");
    fs::write(&witness, "old").unwrap();
    fs::hard_link(&witness, &out).unwrap();
    Build::new().dir(&root).entrypoint("/bin/probe").build(&out);
    assert_eq!(fs::read_to_string(&witness).unwrap(), "old", "the old output was written in place, not replaced");
    assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o755);
    let names: Vec<_> = fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 3, "only rootfs, witness and out.sif expected: {names:?}");
}

// ---------------------------------------------------------------------------------------
// Reproducibility

const EPOCH: &str = "1700000000";

fn repro_build(src: &Path, out: &Path) -> Vec<u8> {
    Build::new()
        .dir(src)
        .entrypoint("/bin/probe")
        .args(["--env", "A=1", "--label", "l=v"])
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .build(out);
    fs::read(out).unwrap()
}

/// A copy of `from` at `to`, entries created in reverse order, every time set to
/// `mtime`, and (as root) owned by the test user.
fn scrambled_copy(from: &Path, to: &Path, mtime: &str) {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir(to).unwrap();
        let mut entries: Vec<_> = fs::read_dir(from).unwrap().flatten().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.file_name()));
        for e in entries {
            let (src, dst) = (e.path(), to.join(e.file_name()));
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
            } else if ft.is_dir() {
                copy(&src, &dst);
            } else {
                fs::copy(&src, &dst).unwrap();
            }
        }
        fs::set_permissions(to, fs::metadata(from).unwrap().permissions()).unwrap();
    }
    copy(from, to);
    run(Command::new("find").arg(to).args(["-exec", "touch", "-h", "-d", mtime, "{}", "+"])).assert_success();
    if is_root() {
        let owner = format!("{}:{}", user().uid, user().gid);
        run(Command::new("chown").args(["-R", "-h", &owner]).arg(to)).assert_success();
    }
}

/// Where two bundles first differ, and in which part of the first.
fn first_difference(a: &[u8], b: &[u8], a_path: &Path) -> String {
    let Some(at) = a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
    else {
        return "identical".into();
    };
    let t = read_trailer(a_path);
    let part = if (at as u64) < t.image_offset {
        "stub or padding"
    } else if (at as u64) < t.metadata_offset {
        "image"
    } else if (at as u64) < t.metadata_offset + t.metadata_size {
        "metadata"
    } else {
        "trailer"
    };
    let mut msg = format!("sizes {} and {}; first difference at byte {at}, in the {part}", a.len(), b.len());
    if part == "metadata" {
        // Show the JSON lines that differ.
        let meta = |x: &[u8]| {
            let start = t.metadata_offset as usize;
            String::from_utf8_lossy(&x[start.min(x.len())..x.len().saturating_sub(TRAILER_LEN as usize)]).into_owned()
        };
        let (ma, mb) = (meta(a), meta(b));
        for (la, lb) in ma.lines().zip(mb.lines()).filter(|(x, y)| x != y) {
            msg.push_str(&format!("\n  - {}\n  + {}", la.trim(), lb.trim()));
        }
    }
    msg
}

#[track_caller]
fn assert_same_bytes(a: &[u8], b: &[u8], a_path: &Path, what: &str) {
    assert!(a == b, "{what}: not byte-identical: {}", first_difference(a, b, a_path));
}

#[test]
fn reproducible_same_inputs() {
    let d = TestDir::new("repro-same");
    let src = d.join("src");
    make_rootfs(&src);
    let a = repro_build(&src, &d.join("a.sif"));
    let b = repro_build(&src, &d.join("b.sif"));
    assert_same_bytes(&a, &b, &d.join("a.sif"), "two builds of the same directory");
    let json = run(bundle(&[OsStr::new("inspect"), OsStr::new("--json"), d.join("a.sif").as_os_str()]));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["created"].to_string(), EPOCH, "created should be SOURCE_DATE_EPOCH\n{json}");
}

#[test]
fn reproducible_from_a_copy_with_other_times_order_and_owners() {
    let d = TestDir::new("repro-copy");
    let src = d.join("src");
    make_rootfs(&src);
    let a = repro_build(&src, &d.join("a.sif"));
    // Another copy of the same tree, at the same path.
    fs::rename(&src, d.join("original")).unwrap();
    scrambled_copy(&d.join("original"), &src, "@1000000000");
    let b = repro_build(&src, &d.join("b.sif"));
    assert_same_bytes(&a, &b, &d.join("a.sif"), "a copy with other mtimes, creation order and owners");
}

#[test]
fn reproducible_from_a_copy_in_another_directory() {
    let d = TestDir::new("repro-path");
    let src = d.join("src");
    make_rootfs(&src);
    let a = repro_build(&src, &d.join("a.sif"));
    let other = d.join("elsewhere/rootfs");
    fs::create_dir(d.join("elsewhere")).unwrap();
    scrambled_copy(&src, &other, "@1200000000");
    let b = repro_build(&other, &d.join("b.sif"));
    assert_same_bytes(&a, &b, &d.join("a.sif"), "the same tree copied to another directory");
}

// ---------------------------------------------------------------------------------------
// Errors: exit 255, one line `bundle: error: …`

/// Runs a damaged bundle, `bundle verify` and `bundle inspect` on it: all must fail
/// with one clear line mentioning `needle`.
fn assert_damaged(t: &Test, bad: &Path, needle: &str) {
    run(&mut t.app(bad, Mode::Auto, &["args", "x"])).assert_bundle_error(needle);
    run(&mut t.app(bad, Mode::Auto, &["--bundle-info"])).assert_bundle_error(needle);
    run(bundle(&[OsStr::new("verify"), bad.as_os_str()])).assert_bundle_error(needle);
    run(bundle(&[OsStr::new("inspect"), bad.as_os_str()])).assert_bundle_error(needle);
}

#[test]
fn error_truncated_file() {
    let t = Test::new("err-truncated");
    let tail = patched_copy(app(), &t.dir.join("tail.sif"), |b| b.truncate(b.len() - 10));
    assert_damaged(&t, &tail, "truncated");
    let tr = read_trailer(app());
    let half =
        patched_copy(app(), &t.dir.join("half.sif"), |b| b.truncate((tr.image_offset + tr.image_size / 2) as usize));
    assert_damaged(&t, &half, "truncated");
}

#[test]
fn error_not_a_bundle() {
    let t = Test::new("err-not-bundle");
    let zeroed = patched_copy(app(), &t.dir.join("zeroed.sif"), |b| {
        let n = b.len();
        b[n - TRAILER_LEN as usize..].fill(0);
    });
    assert_damaged(&t, &zeroed, "not a bundle");
    // The stub on its own.
    let stub = patched_copy(stub_bin(), &t.dir.join("stub-alone"), |_| {});
    run(&mut t.app(&stub, Mode::Auto, &["args"])).assert_bundle_error("not a bundle");
    run(&mut t.app(&stub, Mode::Auto, &["--bundle-info"])).assert_bundle_error("not a bundle");
    run(bundle(&[OsStr::new("inspect"), stub.as_os_str()])).assert_bundle_error("not a bundle");
}

#[test]
fn error_wrong_version() {
    let t = Test::new("err-version");
    let bad = patched_copy(app(), &t.dir.join("v99.sif"), |b| {
        let at = b.len() - TRAILER_LEN as usize + 8;
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    });
    assert_damaged(&t, &bad, "version 99");
}

#[test]
fn error_image_digest_mismatch() {
    let t = Test::new("err-digest");
    let tr = read_trailer(app());
    let bad = patched_copy(app(), &t.dir.join("flipped.sif"), |b| {
        b[(tr.image_offset + tr.image_size / 2) as usize] ^= 0x55;
    });
    run(&mut t.app(&bad, Mode::Auto, &["--bundle-verify"])).assert_bundle_error("digest");
    run(bundle(&[OsStr::new("verify"), bad.as_os_str()])).assert_bundle_error("digest");
    // Extract mode refuses to cache a damaged image.
    run(&mut t.app(&bad, Mode::Extract, &["args", "x"])).assert_bundle_error("digest");
    let images = t.cache.join("images");
    let trees: Vec<_> = fs::read_dir(&images).into_iter().flatten().flatten().filter(|e| e.path().is_dir()).collect();
    assert!(trees.is_empty(), "a damaged image was cached: {:?}", trees.iter().map(|e| e.path()).collect::<Vec<_>>());
}

#[test]
fn error_metadata_digest_mismatch() {
    let t = Test::new("err-meta");
    let tr = read_trailer(app());
    let bad = patched_copy(app(), &t.dir.join("meta.sif"), |b| {
        // Inside the JSON text: a letter changes case, the JSON stays valid.
        let at = (tr.metadata_offset..tr.metadata_offset + tr.metadata_size)
            .find(|&i| b[i as usize].is_ascii_lowercase())
            .unwrap() as usize;
        b[at] = b[at].to_ascii_uppercase();
    });
    assert_damaged(&t, &bad, "metadata");
}

#[test]
fn error_no_user_namespaces() {
    // A real host without user namespaces for us: inside a user namespace of our own,
    // the limit on nested ones is set to 0 (the sysctl is per namespace), then the
    // bundle runs there.
    let t = Test::new("err-userns");
    for mode in [Mode::Extract, Mode::Fuse] {
        if mode == Mode::Fuse {
            require_fuse();
        }
        let mut cmd = t.cmd("unshare");
        set_mode(&mut cmd, mode);
        cmd.args(["--user", "--map-root-user", "--", "/bin/sh", "-c"])
            .arg(r#"echo 0 > /proc/sys/user/max_user_namespaces || exit 99; exec "$0" "$@""#)
            .arg(app())
            .args(["args", "x"]);
        let out = run(&mut cmd);
        assert_ne!(out.code(), Some(99), "cannot limit user namespaces here\n{out}");
        out.assert_bundle_error("user namespace");
    }
}

/// A bundle of a dynamically linked probe (the closure brings its libraries).
fn dynamic_probe_bundle(t: &Test) -> PathBuf {
    let exe = t.dir.join("probe-dyn");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs/probe.c");
    run(Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&exe).arg(&src)).assert_success();
    Build::new()
        .arg("--file")
        .arg(format!("{}=/usr/bin/probe", exe.display()))
        .entrypoint("/usr/bin/probe")
        .build(&t.dir.join("dynamic.sif"))
}

#[test]
fn host_mode_where_no_namespace_can_be_made() {
    // bubblewrap's --disable-userns: a user namespace in which no further one can be
    // made (unshare fails with ENOSPC), as under a seccomp filter or a nested limit.
    let t = Test::new("host-mode");
    let sif = dynamic_probe_bundle(&t);
    let denied = |mode: Mode, args: &[&str]| {
        let mut c = t.cmd("bwrap");
        c.args(["--unshare-user", "--disable-userns", "--bind", "/", "/", "--proc", "/proc"])
            .args(["--dev-bind", "/dev", "/dev", "--chdir"])
            .arg(&t.work)
            .arg(&sif)
            .args(args);
        set_mode(&mut c, mode);
        c
    };
    // Chosen by itself: the program runs, with the image's libraries, from the cache.
    run(&mut denied(Mode::Auto, &["args", "a b", "c"])).assert_success().assert_stdout("[a b]\n[c]\n");
    let root = run(&mut denied(Mode::Auto, &["env", "BUNDLE_ROOT"])).assert_success().stdout();
    let root = root.trim_end();
    assert!(root.starts_with(t.cache.join("images").to_str().unwrap()), "{root}");
    let libs = run(&mut denied(Mode::Auto, &["libs"])).assert_success().lines();
    assert!(libs.iter().any(|l| l.contains("libc.so")), "{libs:?}");
    assert!(libs.iter().all(|l| l.starts_with(root)), "libraries from outside the image: {libs:?}");
    run(&mut denied(Mode::Auto, &["cwd"])).assert_success().assert_stdout(&format!("{}\n", t.work.display()));
    run(&mut denied(Mode::Auto, &["exit", "7"])).assert_code(7);
    // A forced namespace mode says why it cannot run, and what to do.
    for mode in [Mode::Fuse, Mode::Extract] {
        run(&mut denied(mode, &["args"])).assert_bundle_error("--bundle-mode=host");
    }
    // Forced where namespaces work: the same.
    let mut c = t.app(&sif, Mode::Auto, &["args", "forced"]);
    c.env("BUNDLE_MODE", "host");
    run(&mut c).assert_success().assert_stdout("[forced]\n");
}

#[test]
fn error_unwritable_cache_dir() {
    let t = Test::new("err-cache");
    // Owned by root (or, when we are not root, by us) and mode 0500: the user cannot
    // create anything in it.
    let locked = t.dir.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).unwrap();
    for cache in [locked.clone(), locked.join("sub")] {
        let mut cmd = t.app(app(), Mode::Extract, &["args", "x"]);
        cmd.env("BUNDLE_CACHE_DIR", &cache);
        run(&mut cmd).assert_bundle_error("cache");
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn error_missing_entrypoint_at_build() {
    let d = TestDir::new("err-entry");
    let root = d.join("rootfs");
    make_rootfs(&root);
    fs::write(root.join("data.txt"), "not a program").unwrap();
    let outdir = d.join("out");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("x.sif");
    let b = |e: &str| Build::new().dir(&root).entrypoint(e).run(&out);
    let r = b("/bin/nope");
    r.assert_bundle_error("/bin/nope");
    assert!(
        r.stderr().contains("candidates") && r.stderr().contains("/bin/probe"),
        "the error should list candidates\n{r}"
    );
    b("/data.txt").assert_bundle_error("not executable");
    b("bin/probe").assert_bundle_error("absolute");
    assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0, "a failed build must leave no file");
}

#[test]
fn error_other_build_mistakes_leave_no_file() {
    let d = TestDir::new("err-build");
    let root = d.join("rootfs");
    make_rootfs(&root);
    let outdir = d.join("out");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("x.sif");
    Build::new().dir(d.join("missing")).entrypoint("/bin/probe").run(&out).assert_bundle_error("missing");
    Build::new().entrypoint("/bin/probe").run(&out).assert_bundle_error("nothing to bundle");
    Build::new()
        .dir(&root)
        .entrypoint("/bin/probe")
        .args(["--env", "NOEQUALS"])
        .run(&out)
        .assert_bundle_error("NOEQUALS");
    Build::new()
        .dir(&root)
        .entrypoint("/bin/probe")
        .args(["--block-size", "1000"])
        .run(&out)
        .assert_bundle_error("block-size");
    Build::new()
        .dir(&root)
        .entrypoint("/bin/probe")
        .run(&outdir.join("no/such/dir/x.sif"))
        .assert_bundle_error("no/such/dir");
    assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0, "a failed build must leave no file");
}

// ---------------------------------------------------------------------------------------
// The harness checks itself: a process left behind is found.

#[test]
fn harness_finds_leftover_processes() {
    let t = Test::new("harness");
    let mut cmd =
        t.app(app(), Mode::Extract, &["--bundle-shell", "-c", "sleep 60 >/dev/null 2>&1 </dev/null & echo started"]);
    run(&mut cmd).assert_success().assert_stdout("started\n");
    let left = t.wait_for_no_processes(Duration::from_millis(500));
    assert!(!left.is_empty(), "a background sleep of the bundle was not found by its tag");
    t.kill_processes();
    t.assert_no_processes(Duration::from_secs(3));
}
