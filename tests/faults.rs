//! Issue 11: what happens when something breaks — the fault matrix. Each row is a test:
//! a process killed with SIGKILL at a bad moment, a disk that fills up, a cache or home
//! that cannot be written, a working directory that is gone, a bundle on a `noexec`
//! mount, and many runs (in a row, at once) against one node. Every row asserts the
//! exact outcome (exit status, the message the user gets, what is left on disk) and that
//! the next run works; `docs/runtime.md` ("When things go wrong") quotes the messages.
//!
//! The bundles run as the ordinary test user; the tests that mount a small or `noexec`
//! tmpfs need root (as `./scripts/test` runs them) and unmount it on drop.

use e2e::mpi::keepers;
use e2e::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Until a background run is ready.
const READY: Duration = Duration::from_secs(30);
/// A run that must end (with an error or not) rather than hang.
const NO_HANG: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Helpers

/// `len` bytes that zstd cannot shrink (xorshift), so that writing them takes time and
/// space.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// What `probe sum` prints for `bytes`: size and FNV-1a 64.
fn sum_line(bytes: &[u8]) -> String {
    let mut h: u64 = 1469598103934665603;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(1099511628211);
    }
    format!("sum {} {h:016x}\n", bytes.len())
}

/// A probe bundle `dir/NAME.sif` whose image also has `/data/big`, `mib` MiB of noise;
/// returns the bundle and what `probe sum /data/big` must print.
fn data_bundle(dir: &Path, name: &str, mib: usize) -> (PathBuf, String) {
    let root = dir.join(format!("rootfs-{name}"));
    make_rootfs(&root);
    fs::create_dir(root.join("data")).expect("mkdir data");
    fs::set_permissions(root.join("data"), fs::Permissions::from_mode(0o755)).expect("chmod data");
    let big = noise(mib << 20, 0x9e37_79b9_7f4a_7c15 ^ mib as u64);
    fs::write(root.join("data/big"), &big).expect("write data/big");
    fs::set_permissions(root.join("data/big"), fs::Permissions::from_mode(0o644)).expect("chmod big");
    let app =
        Build::new().dir(&root).entrypoint("/bin/probe").args(["--level", "1"]).build(&dir.join(format!("{name}.sif")));
    (app, sum_line(&big))
}

/// A run of `app` in `mode` joining the container under `key`, lingering `linger`.
fn shared(t: &Test, app: &Path, mode: Mode, key: &str, linger: &str, args: &[&str]) -> Command {
    let mut c = t.app(app, mode, args);
    c.env("BUNDLE_SHARE", key).env("BUNDLE_LINGER", linger);
    c
}

/// The keeper of `app` for test `t`, waiting until there is exactly one.
#[track_caller]
fn the_keeper(t: &Test, app: &Path) -> i32 {
    let deadline = Instant::now() + READY;
    loop {
        let k = keepers(&t.id, app);
        if k.len() == 1 {
            return k[0];
        }
        assert!(Instant::now() < deadline, "expected one keeper of {}, found {k:?}", app.display());
        thread::sleep(Duration::from_millis(10));
    }
}

/// The children of `pid` (the FUSE server is the keeper's child).
fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid == Some(pid) {
            found.push(p);
        }
    }
    found
}

/// The application's read failed because the mount lost its server (it did not hang,
/// and did not crash): ENOTCONN, or ECONNABORTED for a request the kernel had queued
/// when the connection went.
#[track_caller]
fn assert_lost_server(out: &Out) {
    out.assert_code(1);
    let lost = ["Transport endpoint is not connected", "Software caused connection abort"]
        .map(|why| format!("ready\nerror /data/big: {why}\n"));
    assert!(lost.contains(&out.stdout()), "the application's read should fail with ENOTCONN or ECONNABORTED\n{out}");
}

fn kill9(pid: i32) {
    // SAFETY: kill of a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// Waits until `pid` is gone (or a zombie).
#[track_caller]
fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("");
        if stat.is_empty() || state == "Z" {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} still alive 10 s after kill -9");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Names in `dir` (empty when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

/// A tmpfs of `size` at `path` (mode 0755, owned by the test user), with extra mount
/// options; unmounted on drop. Needs root.
fn small_tmpfs(path: &Path, size: &str, extra: &str) -> HostMount {
    require_root("mounting a small tmpfs");
    fs::create_dir_all(path).expect("create the mount point");
    let u = user();
    let opts = format!("size={size},mode=0755,uid={},gid={}{extra}", u.uid, u.gid);
    run(Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(path)).assert_success();
    HostMount { path: path.to_path_buf() }
}

fn remount_size(m: &HostMount, size: &str) {
    run(Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&m.path)).assert_success();
}

/// Field `name` (in kB) of /proc/PID/status.
fn status_kb(pid: i32, name: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
}

fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// The descriptors of an idle keeper or server: the fewest seen over 300 ms (the keeper
/// holds a run's pidfd until it has seen that run exit, a moment after the run's parent).
fn settled_fd_count(pid: i32) -> usize {
    (0..30)
        .map(|_| {
            thread::sleep(Duration::from_millis(10));
            fd_count(pid)
        })
        .min()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// kill -9

#[test]
fn keeper_killed_the_application_gets_an_error_and_the_next_run_works() {
    require_fuse();
    let t = Test::new("kill-keeper");
    let (app, want) = data_bundle(t.dir.path(), "app", 4);
    let key = format!("kill-keeper-{}", t.id);
    let mut a = Running::spawn(&mut shared(&t, &app, Mode::Fuse, &key, "30", &["read-on-signal", "/data/big"]));
    a.wait_for_line("ready", READY);
    let keeper = the_keeper(&t, &app);
    let server = children(keeper);
    assert_eq!(server.len(), 1, "the keeper's one child is the FUSE server: {server:?}");
    kill9(keeper);
    wait_gone(keeper);
    // The FUSE server dies with its keeper (PR_SET_PDEATHSIG).
    wait_gone(server[0]);
    a.signal(libc::SIGUSR1);
    let out = a.finish(NO_HANG);
    assert_lost_server(&out);
    // The name died with the keeper: the next run in the same session starts a new one.
    let out = run(shared(&t, &app, Mode::Fuse, &key, "0", &["sum", "/data/big"]));
    out.assert_success().assert_stdout(&want);
}

#[test]
fn keeper_killed_in_extract_mode_the_application_does_not_notice() {
    let t = Test::new("kill-keeper-extract");
    let (app, want) = data_bundle(t.dir.path(), "app", 2);
    let key = format!("kill-keeper-x-{}", t.id);
    let mut a = Running::spawn(&mut shared(&t, &app, Mode::Extract, &key, "30", &["read-on-signal", "/data/big"]));
    a.wait_for_line("ready", READY);
    let keeper = the_keeper(&t, &app);
    kill9(keeper);
    wait_gone(keeper);
    // The unpacked tree is on disk and the mounts belong to the namespaces, which the
    // application still holds.
    a.signal(libc::SIGUSR1);
    let out = a.finish(NO_HANG);
    out.assert_success().assert_stdout(&format!("ready\n{want}"));
    let out = run(shared(&t, &app, Mode::Extract, &key, "0", &["sum", "/data/big"]));
    out.assert_success().assert_stdout(&want);
}

/// Starts a run that waits to read `/data/big`, kills the FUSE server under it, and
/// checks that the run's read fails rather than hangs. Returns the bundle, the session
/// key and what `probe sum /data/big` prints.
fn kill_the_fuse_server_under_a_run(t: &Test) -> (PathBuf, String, String) {
    require_fuse();
    let (app, want) = data_bundle(t.dir.path(), "app", 4);
    let key = format!("kill-server-{}", t.id);
    let mut a = Running::spawn(&mut shared(t, &app, Mode::Fuse, &key, "30", &["read-on-signal", "/data/big"]));
    a.wait_for_line("ready", READY);
    let keeper = the_keeper(t, &app);
    let server = children(keeper);
    assert_eq!(server.len(), 1, "the keeper's one child is the FUSE server: {server:?}");
    kill9(server[0]);
    wait_gone(server[0]);
    a.signal(libc::SIGUSR1);
    assert_lost_server(&a.finish(NO_HANG));
    (app, key, want)
}

#[test]
fn fuse_server_killed_the_application_gets_an_error() {
    let t = Test::new("kill-fuse-server");
    kill_the_fuse_server_under_a_run(&t);
    // The keeper leaves by itself once its server is dead (the next test); make sure.
    for pid in keepers(&t.id, &t.dir.join("app.sif")) {
        kill9(pid);
    }
}

#[test]
fn fuse_server_killed_the_next_run_works() {
    let t = Test::new("kill-fuse-server-next");
    let (app, key, want) = kill_the_fuse_server_under_a_run(&t);
    // A later run of the same session must not be handed the dead mount.
    let out = run(shared(&t, &app, Mode::Fuse, &key, "0", &["sum", "/data/big"]));
    out.assert_success().assert_stdout(&want);
}

#[test]
fn a_rank_killed_in_the_middle_of_a_read_leaves_the_others_reading() {
    require_fuse();
    let t = Test::new("kill-rank-reading");
    let (app, want) = data_bundle(t.dir.path(), "app", 16);
    let key = format!("kill-rank-{}", t.id);
    let mut other = Running::spawn(&mut shared(&t, &app, Mode::Fuse, &key, "3", &["read-on-signal", "/data/big"]));
    other.wait_for_line("ready", READY);
    let mut victim = Running::spawn(&mut shared(&t, &app, Mode::Fuse, &key, "3", &["readloop", "/data/big"]));
    victim.wait_for_line("reading", READY);
    // It drops the file's pages after every pass, so its reads keep reaching the server:
    // kill it while it waits in read(2) (system call 0) for the server's answer.
    let deadline = Instant::now() + READY;
    let in_read = || fs::read_to_string(format!("/proc/{}/syscall", victim.pid())).is_ok_and(|s| s.starts_with("0 "));
    while !in_read() {
        assert!(Instant::now() < deadline, "the reader was never seen waiting in read(2)");
        thread::yield_now();
    }
    victim.signal(libc::SIGKILL);
    let out = victim.finish(NO_HANG);
    assert_eq!(out.status.code(), None, "the reader died of SIGKILL\n{out}");
    other.signal(libc::SIGUSR1);
    let out = other.finish(NO_HANG);
    out.assert_success().assert_stdout(&format!("ready\n{want}"));
    let out = run(shared(&t, &app, Mode::Fuse, &key, "0", &["sum", "/data/big"]));
    out.assert_success().assert_stdout(&want);
}

#[test]
fn bundle_build_killed_leaves_no_output_and_no_temporary_file() {
    let t = Test::new("kill-build");
    let root = t.dir.join("rootfs");
    make_rootfs(&root);
    fs::write(root.join("big"), noise(96 << 20, 7)).expect("write big");
    let out_dir = t.dir.join("out");
    fs::create_dir(&out_dir).expect("mkdir out");
    let target = out_dir.join("app.sif");
    let build = Build::new().dir(&root).entrypoint("/bin/probe").args(["--level", "1", "--threads", "1"]);
    let io = |pid: i32| {
        let s = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        s.lines().find_map(|l| l.strip_prefix("rchar: ")?.parse::<u64>().ok()).unwrap_or(0)
    };
    // Kills a build while it writes the image: once it has read part of the big file.
    let kill_a_build = |sig: i32| {
        let p = Running::spawn(&mut build.command(&target));
        let deadline = Instant::now() + READY;
        while io(p.pid()) < 16 << 20 {
            assert!(Instant::now() < deadline, "bundle build did not get going");
            thread::sleep(Duration::from_millis(5));
        }
        p.signal(sig);
        let out = p.finish(NO_HANG);
        assert_eq!(out.status.signal(), Some(sig), "bundle build was still running when signalled\n{out}");
    };
    kill_a_build(libc::SIGKILL);
    assert_eq!(names(&out_dir), Vec::<String>::new(), "a killed build leaves nothing in the output directory");
    // The next build works.
    build.build(&target);
    run(t.app(&target, Mode::Auto, &["exit", "0"])).assert_success();
    // A rebuild killed (SIGKILL, a terminal's ^C, SIGTERM) leaves the old bundle as it was,
    // and nothing else.
    let before = identity(&target);
    for sig in [libc::SIGKILL, libc::SIGINT, libc::SIGTERM] {
        kill_a_build(sig);
        assert_eq!(names(&out_dir), ["app.sif"], "after signal {sig}");
        assert_eq!(identity(&target), before, "the old bundle is untouched after signal {sig}");
    }
    run(t.app(&target, Mode::Auto, &["exit", "0"])).assert_success();
}

#[test]
fn the_first_run_killed_while_it_unpacks_the_next_run_works() {
    let t = Test::new("kill-unpack");
    let (app, want) = data_bundle(t.dir.path(), "app", 64);
    let images = t.cache.join("images");
    let unpacking = || names(&images).into_iter().any(|n| n.starts_with(".tmp-"));
    let start_and_wait_for_unpacking = |key: &str| {
        let p = Running::spawn(&mut shared(&t, &app, Mode::Extract, key, "0", &["sum", "/data/big"]));
        let deadline = Instant::now() + READY;
        while !unpacking() {
            assert!(Instant::now() < deadline, "the first run did not start unpacking");
            thread::sleep(Duration::from_millis(1));
        }
        p
    };

    // 1. The run and its keeper (which unpacks) killed, as a node's job clean-up would:
    //    a half-made tree is left; the next run removes it and unpacks again.
    let p = start_and_wait_for_unpacking(&format!("k1-{}", t.id));
    let keeper = the_keeper(&t, &app);
    kill9(keeper);
    p.signal(libc::SIGKILL);
    let _ = p.finish(NO_HANG);
    wait_gone(keeper);
    assert!(unpacking(), "the killed keeper left its temporary tree: {:?}", names(&images));
    let out = run(shared(&t, &app, Mode::Extract, &format!("k2-{}", t.id), "0", &["sum", "/data/big"]));
    out.assert_success().assert_stdout(&want);
    t.assert_cache_clean(&t.cache);

    // 2. Only the run killed: its keeper finishes the tree, and the next run of the
    //    session uses it.
    remove_tree(&images);
    let key = format!("k3-{}", t.id);
    let p = start_and_wait_for_unpacking(&key);
    p.signal(libc::SIGKILL);
    let out = p.finish(NO_HANG);
    assert_eq!(out.status.code(), None, "{out}");
    let out = run(shared(&t, &app, Mode::Extract, &key, "0", &["sum", "/data/big"]));
    out.assert_success().assert_stdout(&want);
    t.assert_cache_clean(&t.cache);
}

// ---------------------------------------------------------------------------------------
// Full disks

#[test]
fn no_space_while_building_one_line_and_no_partial_output() {
    let t = Test::new("enospc-build");
    let root = t.dir.join("rootfs");
    make_rootfs(&root);
    fs::write(root.join("big"), noise(4 << 20, 3)).expect("write big");
    let small = small_tmpfs(&t.dir.join("small"), "2m", "");
    let target = small.path.join("app.sif");
    let build = Build::new().dir(&root).entrypoint("/bin/probe").args(["--level", "1"]);
    let out = build.run(&target);
    out.assert_bundle_error("No space left on device");
    assert_eq!(names(&small.path), Vec::<String>::new(), "nothing left on the full file system\n{out}");
    remount_size(&small, "64m");
    build.build(&target);
    run(t.app(&target, Mode::Auto, &["exit", "0"])).assert_success();
}

#[test]
fn no_space_while_unpacking_into_the_cache_one_line_and_no_half_cache() {
    let t = Test::new("enospc-unpack");
    let (app, want) = data_bundle(t.dir.path(), "app", 8);
    let small = small_tmpfs(&t.dir.join("small"), "4m", "");
    let cache = small.path.join("cache");
    let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
    c.env("BUNDLE_CACHE_DIR", &cache);
    let out = run(&mut c);
    out.assert_bundle_error("No space left on device");
    let left: Vec<String> = names(&cache.join("images")).into_iter().filter(|n| !n.ends_with(".lock")).collect();
    assert_eq!(left, Vec::<String>::new(), "no tree, half or whole, is left in the cache\n{out}");
    remount_size(&small, "64m");
    let out = run(&mut c);
    out.assert_success().assert_stdout(&want);
    t.assert_cache_clean(&cache);
}

#[test]
fn a_cache_on_a_file_system_without_rename_across_directories() {
    // overlayfs without redirect_dir: a directory of the lower layer cannot be renamed
    // into another directory (EXDEV). The cache publishes a tree by renaming it within
    // one directory (`images/.tmp-*` to `images/<digest>`), which such a file system
    // allows.
    require_root("mounting an overlay");
    let t = Test::new("cache-overlay");
    let (app, want) = data_bundle(t.dir.path(), "app", 1);
    let lower = t.dir.user_dir("lower");
    for d in ["cache/images", "x/sub", "y"] {
        fs::create_dir_all(lower.join(d)).unwrap();
    }
    let layers = HostMount::tmpfs(&t.dir.user_dir("layers"));
    let (upper, work, merged) = (layers.path.join("upper"), layers.path.join("work"), t.dir.user_dir("merged"));
    for d in [&upper, &work] {
        fs::create_dir(d).unwrap();
        chown_to_user(d);
    }
    run(Command::new("chown").arg("-R").arg(format!("{}:{}", user().uid, user().gid)).arg(&lower)).assert_success();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged)).assert_success();
    let overlay = HostMount { path: merged.clone() };
    let across = fs::rename(merged.join("x/sub"), merged.join("y/sub"));
    assert_eq!(across.map_err(|e| e.raw_os_error()), Err(Some(libc::EXDEV)), "the overlay should refuse that rename");
    let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
    c.env("BUNDLE_CACHE_DIR", merged.join("cache"));
    run(&mut c).assert_success().assert_stdout(&want);
    run(&mut c).assert_success().assert_stdout(&want);
    t.assert_cache_clean(&merged.join("cache"));
    drop(overlay);
    drop(layers);
}

#[test]
fn a_cache_directory_that_is_read_only_or_on_a_full_disk() {
    let t = Test::new("cache-ro-full");
    let (app, want) = data_bundle(t.dir.path(), "app", 1);
    // Read-only: the user cannot create it.
    let ro = t.dir.user_dir("ro");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).expect("chmod ro");
    let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
    c.env("BUNDLE_CACHE_DIR", ro.join("cache"));
    let out = run(&mut c);
    out.assert_bundle_error("set BUNDLE_CACHE_DIR to a writable directory");
    assert!(out.stderr().contains("Permission denied"), "{out}");
    // A read-only cache that is already filled (e.g. made by the site) is used as it is.
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).expect("chmod ro");
    run(&mut c).assert_success().assert_stdout(&want);
    let images = ro.join("cache/images");
    for p in [images.as_path(), ro.join("cache").as_path(), ro.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o555)).expect("chmod read-only");
    }
    run(&mut c).assert_success().assert_stdout(&want);
    for p in [ro.as_path(), ro.join("cache").as_path(), images.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod back");
    }

    // A full disk: not a byte left.
    let full = small_tmpfs(&t.dir.join("full"), "16m", "");
    let filler = full.path.join("filler");
    let _ = fs::write(&filler, vec![0u8; 32 << 20]);
    let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
    c.env("BUNDLE_CACHE_DIR", full.path.join("cache"));
    let out = run(&mut c);
    out.assert_bundle_error("No space left on device");
    fs::remove_file(&filler).expect("free the space");
    run(&mut c).assert_success().assert_stdout(&want);
    t.assert_cache_clean(&full.path.join("cache"));
}

// ---------------------------------------------------------------------------------------
// Home and working directory

#[test]
fn home_unset_or_not_writable() {
    let t = Test::new("home");
    let (app, want) = data_bundle(t.dir.path(), "app", 1);
    // No HOME: fuse mode needs none.
    if fuse_usable() {
        let mut c = t.app(&app, Mode::Fuse, &["sum", "/data/big"]);
        c.env_remove("HOME");
        run(&mut c).assert_success().assert_stdout(&want);
    }
    // A home that does not exist on this node: fuse mode does not bind it, and runs.
    if fuse_usable() {
        let mut c = t.app(&app, Mode::Fuse, &["sum", "/data/big"]);
        c.env("HOME", "/nonexistent-e2e/home");
        run(&mut c).assert_success().assert_stdout(&want);
    }
    // Extract mode without HOME nor BUNDLE_CACHE_DIR has no cache.
    let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
    c.env_remove("HOME").env_remove("BUNDLE_CACHE_DIR");
    run(&mut c).assert_bundle_error("no cache directory: set BUNDLE_CACHE_DIR");
    // A home the user cannot write: fuse mode runs; extract mode says where to put the
    // cache instead.
    let home = t.dir.user_dir("home");
    fs::set_permissions(&home, fs::Permissions::from_mode(0o555)).expect("chmod home");
    if fuse_usable() {
        let mut c = t.app(&app, Mode::Fuse, &["sum", "/data/big"]);
        c.env("HOME", &home);
        run(&mut c).assert_success().assert_stdout(&want);
    }
    let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
    c.env("HOME", &home).env_remove("BUNDLE_CACHE_DIR");
    let out = run(&mut c);
    out.assert_bundle_error(&format!("cannot create the cache directory {}/.cache/bundle/images", home.display()));
    assert!(out.stderr().contains("set BUNDLE_CACHE_DIR to a writable directory"), "{out}");
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).expect("chmod home back");
}

#[test]
fn a_working_directory_that_was_deleted() {
    let t = Test::new("cwd-deleted");
    let (app, _) = data_bundle(t.dir.path(), "app", 1);
    t.dir.user_dir("work/gone");
    // The shell enters it, removes it, then starts the bundle from it.
    let mut c = t.cmd("/bin/sh");
    c.args(["-c", r#"cd gone && rmdir "$PWD" && exec "$0" cwd"#]).arg(&app);
    let out = run(&mut c);
    out.assert_bundle_error(
        "the working directory no longer exists (it was deleted or moved): cd to an existing directory",
    );
}

#[test]
fn a_bundle_on_a_noexec_mount_cannot_be_started_and_a_copy_can() {
    let t = Test::new("noexec");
    let (app, _) = data_bundle(t.dir.path(), "app", 1);
    let noexec = small_tmpfs(&t.dir.join("noexec"), "16m", ",noexec");
    let there = noexec.path.join("app.sif");
    fs::copy(&app, &there).expect("copy the bundle");
    chown_to_user(&there);
    // The kernel refuses the exec: the runtime never runs, so the shell says it.
    let mut c = t.cmd("/bin/sh");
    c.args(["-c", r#""$0" exit 0"#]).arg(&there);
    let out = run(&mut c);
    out.assert_code(126);
    assert!(out.stderr().contains("Permission denied"), "{out}");
    // The way out: a copy where execution is allowed (here the working directory).
    let copy = t.work.join("app.sif");
    let mut c = t.cmd("/bin/cp");
    c.arg(&there).arg(&copy);
    run(&mut c).assert_success();
    run(t.app(&copy, Mode::Auto, &["exit", "0"])).assert_success();
}

#[test]
fn an_extract_cache_on_a_noexec_mount() {
    let t = Test::new("noexec-cache");
    let noexec = small_tmpfs(&t.dir.join("noexec"), "16m", ",noexec");
    let cache = noexec.path.join("cache");
    // Where the image lacks mount points (a home directory, as nearly always), extract
    // mode puts a tmpfs overlay on the tree, and the overlay's mount allows execution.
    let (app, want) = data_bundle(t.dir.path(), "app", 1);
    let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
    c.env("BUNDLE_CACHE_DIR", &cache);
    run(&mut c).assert_success().assert_stdout(&want);
    // An image with every mount point is bound as it is, `noexec` included: the error
    // names the cause and the fix, rather than calling the program not executable.
    let root = t.dir.join("rootfs-complete");
    make_rootfs(&root);
    let home = user().home.strip_prefix("/").expect("an absolute home").to_path_buf();
    for d in [Path::new("proc"), Path::new("sys"), Path::new("dev"), Path::new("tmp"), Path::new("etc"), &home] {
        fs::create_dir_all(root.join(d)).expect("mkdir a mount point");
    }
    for f in ["passwd", "group", "hosts", "resolv.conf", "localtime"] {
        fs::write(root.join("etc").join(f), "").expect("write a file mount point");
    }
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&root)).assert_success();
    let complete = Build::new().dir(&root).entrypoint("/bin/probe").build(&t.dir.join("complete.sif"));
    let mut c = t.app(&complete, Mode::Extract, &["exit", "0"]);
    c.env("BUNDLE_CACHE_DIR", &cache).current_dir(&t.work);
    let out = run(&mut c);
    out.assert_bundle_error("/bin/probe: cannot execute: the file system it is on is mounted noexec");
    assert!(
        out.stderr().contains("set BUNDLE_CACHE_DIR to a directory on a file system that allows execution"),
        "{out}"
    );
    // With the cache elsewhere it runs.
    let mut c = t.app(&complete, Mode::Extract, &["exit", "0"]);
    run(&mut c).assert_success();
}

// ---------------------------------------------------------------------------------------
// Many runs

#[test]
fn five_hundred_runs_joining_one_lingering_keeper_do_not_grow_it() {
    require_fuse();
    let t = Test::new("500-runs");
    let app = probe_bundle(t.dir.path(), "app", &[]);
    let key = format!("500-{}", t.id);
    let once = || run(shared(&t, &app, Mode::Fuse, &key, "5", &["exit", "0"])).assert_success().code();
    for _ in 0..20 {
        once();
    }
    let keeper = the_keeper(&t, &app);
    let server = children(keeper);
    assert_eq!(server.len(), 1, "the FUSE server: {server:?}");
    let (fds, rss) = (settled_fd_count(keeper), status_kb(keeper, "VmRSS:"));
    let (server_fds, server_rss) = (settled_fd_count(server[0]), status_kb(server[0], "VmRSS:"));
    let started = Instant::now();
    for _ in 0..480 {
        once();
    }
    let elapsed = started.elapsed();
    assert_eq!(keepers(&t.id, &app), [keeper], "every run joined the same keeper");
    let (fds2, rss2) = (settled_fd_count(keeper), status_kb(keeper, "VmRSS:"));
    let (server_fds2, server_rss2) = (settled_fd_count(server[0]), status_kb(server[0], "VmRSS:"));
    eprintln!(
        "500 runs in {elapsed:.1?} after 20: keeper fds {fds} -> {fds2}, VmRSS {rss} -> {rss2} kB; \
         FUSE server fds {server_fds} -> {server_fds2}, VmRSS {server_rss} -> {server_rss2} kB"
    );
    assert_eq!(fds2, fds, "the keeper's descriptors grew over 480 runs");
    assert!(rss2 <= rss + 256, "the keeper's memory grew over 480 runs: {rss} -> {rss2} kB");
    assert_eq!(server_fds2, server_fds, "the FUSE server's descriptors grew over 480 runs");
    assert!(server_rss2 <= server_rss + 1024, "the FUSE server's memory grew: {server_rss} -> {server_rss2} kB");
}

#[test]
fn two_hundred_fifty_six_starts_at_once_on_one_node() {
    let t = Test::new("256-starts");
    let app = probe_bundle(t.dir.path(), "app", &[]);
    let key = format!("256-{}", t.id);
    let gate = Arc::new(Barrier::new(256));
    let starts: Vec<_> = (0..256)
        .map(|_| {
            let mut c = shared(&t, &app, Mode::Auto, &key, "3", &["ns"]);
            let gate = gate.clone();
            thread::spawn(move || {
                gate.wait();
                run(&mut c)
            })
        })
        .collect();
    let outs: Vec<Out> = starts.into_iter().map(|h| h.join().expect("a start panicked")).collect();
    let mut containers = BTreeSet::new();
    for out in &outs {
        out.assert_success();
        containers.insert(out.stdout());
    }
    assert_eq!(containers.len(), 1, "256 starts under one key share one container: {containers:?}");
}

#[test]
fn one_hundred_twenty_eight_first_runs_in_extract_mode_unpack_once() {
    let t = Test::new("128-unpack");
    let (app, want) = data_bundle(t.dir.path(), "app", 4);
    let gate = Arc::new(Barrier::new(128));
    // Each run has a container (and a keeper) of its own: 128 keepers race for the one
    // empty cache.
    let starts: Vec<_> = (0..128)
        .map(|_| {
            let mut c = t.app(&app, Mode::Extract, &["sum", "/data/big"]);
            c.env("BUNDLE_SHARE", "off");
            let gate = gate.clone();
            thread::spawn(move || {
                gate.wait();
                run_with(&mut c, None, Duration::from_secs(120))
            })
        })
        .collect();
    let outs: Vec<Out> = starts.into_iter().map(|h| h.join().expect("a start panicked")).collect();
    for out in &outs {
        out.assert_success().assert_stdout(&want);
    }
    let images = t.cache.join("images");
    let digest = read_trailer(&app).image_sha256;
    assert_eq!(names(&images), [digest.clone(), format!("{digest}.lock")], "one tree, unpacked once");
    t.assert_cache_clean(&t.cache);
}
