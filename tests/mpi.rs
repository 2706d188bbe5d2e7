//! Issue 4, under Open MPI: an MPI program of our own (`tests/programs/mpi_probe.c`:
//! ping-pong, allreduce, and a direct CMA check) bundled with Open MPI's run-time
//! closure and started by Debian's `mpirun` (4.1) as the test user, every rank a bundle.
//!
//! - Ranks of one job on one node share one container: one user and mount namespace
//!   (compared by inode), one keeper; cross-memory attach works between them. With
//!   `--bundle-share=off` each rank has its own, and CMA is refused (the control).
//! - 64 ranks starting at once, exit codes through `mpirun`, a rank killed with SIGKILL,
//!   rendezvous directories outside `/tmp`, binds and environment for every rank,
//!   kernel mode as root, and two "hosts" (network namespaces joined by a veth pair)
//!   with `mpirun` reaching the second through a launcher agent.
//!
//! Every test checks on drop that nothing it started is left running or mounted
//! (`common::Test`); the containers linger only `LINGER` seconds here.

use e2e::mpi::*;
use e2e::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

/// `BUNDLE_LINGER` of these tests (seconds): the default. A rank that starts late under
/// load still finds the container, and the keeper leaves as soon as `mpirun`'s node
/// daemon (every rank's parent) is gone, so the tests do not wait for it.
const LINGER: &str = "3";
/// One `mpirun` (the machine may be busy: 2 cores, other tests in parallel).
const MPI_TIMEOUT: Duration = Duration::from_secs(120);
/// Until the ranks of a long-running job are ready.
const READY: Duration = Duration::from_secs(60);

fn start(name: &str) -> Test {
    require_mpi();
    require_fuse();
    Test::new(name)
}

fn bundle() -> &'static Path {
    shared_mpi_bundle()
}

/// The user namespace of the host (ours: the tests run in the initial one).
fn host_user_ns() -> u64 {
    fs::metadata("/proc/self/ns/user").expect("our user namespace").ino()
}

/// `mpirun -n N ARGS…` of the MPI bundle, run to the end.
fn mpirun_bundle(t: &Test, n: usize, mpirun_args: &[&str], app_args: &[&str]) -> Out {
    let mut c = mpirun(t, LINGER);
    c.arg("-n").arg(n.to_string()).args(mpirun_args).arg(bundle()).args(app_args);
    run_with(&mut c, None, MPI_TIMEOUT)
}

#[track_caller]
fn assert_one_container(r: &Report, out: &Out) {
    assert_eq!(r.user_namespaces().len(), 1, "the ranks should share one user namespace: {:#?}\n{out}", r.ranks);
    assert_eq!(r.mount_namespaces().len(), 1, "the ranks should share one mount namespace: {:#?}\n{out}", r.ranks);
    assert!(!r.user_namespaces().contains(&host_user_ns()), "the ranks run in the host's user namespace\n{out}");
}

// ---------------------------------------------------------------------------------------
// One container per node per job

#[test]
fn two_ranks_share_one_container_and_use_cma() {
    let t = start("mpi-two");
    let out = mpirun_bundle(&t, 2, &[], &["run"]);
    out.assert_success();
    let r = Report::parse(&out);
    assert_eq!(r.size, 2, "{out}");
    assert!(r.allreduce_ok, "allreduce gave a wrong sum\n{out}");
    assert_one_container(&r, &out);
    assert_eq!(r.cma, ["ok", "ok"], "process_vm_readv between the ranks should work in one user namespace\n{out}");
    eprintln!("mpirun -n 2, inside one bundle: {}", r.figures());

    // Open MPI's own single-copy path, forced: it must not report CMA as unusable.
    let out = mpirun_bundle(&t, 2, &["--mca", "btl_vader_single_copy_mechanism", "cma"], &["run", "--iters", "200:20"]);
    out.assert_success();
    assert!(
        !out.stderr().contains("single_copy_mechanism"),
        "Open MPI found CMA unusable between ranks of one container\n{out}"
    );
    assert!(Report::parse(&out).allreduce_ok, "{out}");
}

#[test]
fn without_sharing_each_rank_has_its_own_namespace_and_no_cma() {
    let t = start("mpi-share-off");
    let out = mpirun_bundle(&t, 2, &[], &["--bundle-share=off", "run", "--iters", "200:20"]);
    // Open MPI falls back to copy-in/copy-out and completes.
    out.assert_success();
    let r = Report::parse(&out);
    assert!(r.allreduce_ok, "{out}");
    assert_eq!(r.user_namespaces().len(), 2, "with --bundle-share=off every rank has its own container\n{out}");
    assert_eq!(r.cma, ["EPERM", "EPERM"], "CMA between separate user namespaces should be refused\n{out}");

    // The same through the environment, which mpirun passes on to its ranks.
    let mut c = mpirun(&t, LINGER);
    c.env("BUNDLE_SHARE", "off").args(["-n", "2"]).arg(bundle()).args(["run", "--no-pingpong"]);
    let out = run_with(&mut c, None, MPI_TIMEOUT);
    out.assert_success();
    assert_eq!(Report::parse(&out).user_namespaces().len(), 2, "BUNDLE_SHARE=off\n{out}");
}

#[test]
fn eight_ranks_oversubscribed_share_one_container() {
    let t = start("mpi-eight");
    let out = mpirun_bundle(&t, 8, &["--oversubscribe"], &["run", "--iters", "200:10"]);
    out.assert_success();
    let r = Report::parse(&out);
    assert_eq!(r.size, 8, "{out}");
    assert!(r.allreduce_ok, "{out}");
    assert_one_container(&r, &out);
    assert!(r.cma.iter().all(|c| c == "ok"), "CMA should work between all 8 ranks: {:?}\n{out}", r.cma);
}

#[test]
fn sixty_four_ranks_start_at_once_in_one_container() {
    let t = start("mpi-64");
    let watch = KeeperWatch::start(&t.id, bundle());
    let out = mpirun_bundle(&t, 64, &["--oversubscribe"], &["ns"]);
    let seen = watch.stop();
    out.assert_success();
    let ns = ns_lines(&out);
    assert_eq!(ns.len(), 64, "every rank should report\n{out}");
    let users: BTreeSet<u64> = ns.iter().map(|n| n.0).collect();
    let mounts: BTreeSet<u64> = ns.iter().map(|n| n.1).collect();
    assert_eq!((users.len(), mounts.len()), (1, 1), "64 ranks should share one container: {users:?} {mounts:?}\n{out}");
    assert_one_keeper(&seen);
    t.assert_no_processes(Duration::from_secs(5));
}

#[track_caller]
fn assert_one_keeper(seen: &Seen) {
    assert_eq!(seen.containers.len(), 1, "exactly one container should have existed: {seen:?}");
    assert!(seen.keepers.len() <= 1, "exactly one keeper should have existed: {seen:?}");
}

#[test]
fn sixty_four_simultaneous_starts_with_one_share_key() {
    let t = start("share-64");
    let key = format!("e2e-{}", t.id);
    let watch = KeeperWatch::start(&t.id, bundle());
    let gate = Arc::new(Barrier::new(64));
    let starts: Vec<_> = (0..64)
        .map(|_| {
            let mut c = t.app(bundle(), Mode::Auto, &["ns"]);
            c.env("BUNDLE_SHARE", &key).env("BUNDLE_LINGER", LINGER);
            let gate = gate.clone();
            thread::spawn(move || {
                gate.wait();
                run(&mut c)
            })
        })
        .collect();
    let outs: Vec<Out> = starts.into_iter().map(|h| h.join().expect("a start panicked")).collect();
    let seen = watch.stop();
    let mut users = BTreeSet::new();
    for out in &outs {
        out.assert_success();
        let ns = ns_lines(out);
        assert_eq!(ns.len(), 1, "{out}");
        users.insert(ns[0].0);
    }
    assert_eq!(users.len(), 1, "64 starts under one BUNDLE_SHARE key should share one container: {users:?}");
    assert_one_keeper(&seen);
    t.assert_no_processes(Duration::from_secs(5));
}

#[test]
fn a_bundle_made_with_the_automatic_closure_runs_under_mpirun() {
    // What a user would write (docs/mpi-slurm.md, examples/mpi): the program, and Open
    // MPI's plugin and data directories with `--include`; `bundle build` adds every
    // library they need, dlopen'ed plugins' included.
    let t = start("mpi-closure");
    let mut b = Build::new().arg("--file").arg(format!("{}={MPI_PROBE_IN_IMAGE}", mpi_probe().display()));
    for dir in OPEN_MPI_DIRS {
        b = b.arg("--include").arg(dir);
    }
    let app = b.entrypoint(MPI_PROBE_IN_IMAGE).args(["--level", "3"]).build(&t.dir.join("closure.sif"));
    let mut c = mpirun(&t, LINGER);
    c.args(["-n", "2"]).arg(&app).args(["run", "--iters", "200:20"]);
    let out = run_with(&mut c, None, MPI_TIMEOUT);
    out.assert_success();
    let r = Report::parse(&out);
    assert!(r.allreduce_ok, "{out}");
    assert_one_container(&r, &out);
    assert_eq!(r.cma, ["ok", "ok"], "{out}");
}

// ---------------------------------------------------------------------------------------
// Exit codes and failures

#[test]
fn exit_codes_pass_through_mpirun() {
    let t = start("mpi-exit");
    let out = mpirun_bundle(&t, 2, &[], &["run", "--no-pingpong", "--exit", "1:3"]);
    out.assert_code(3);
    assert!(Report::parse(&out).allreduce_ok, "{out}");

    // An error of the bundle itself (exit status 255) in every rank.
    let out = mpirun_bundle(&t, 2, &[], &["--bundle-bind", "/nonexistent-e2e-bind", "ns"]);
    out.assert_code(255);
    assert!(out.stderr().contains("bundle: error: "), "the ranks' error should reach mpirun's stderr\n{out}");
}

#[test]
fn a_rank_killed_with_sigkill_ends_the_job_and_leaves_nothing() {
    let t = start("mpi-kill");
    let ready = t.dir.user_dir("ready");
    let mut c = mpirun(&t, LINGER);
    c.args(["-n", "2"]).arg(bundle()).args(["run", "--no-pingpong", "--hang", "--ready"]).arg(&ready);
    let p = Running::spawn(&mut c);
    for r in 0..2 {
        wait_for_file(&ready.join(format!("ready.{r}")), READY);
    }
    assert_eq!(containers(&t.id).len(), 1, "one container while the job runs");
    let victim: i32 = fs::read_to_string(ready.join("ready.1")).expect("rank 1's pid").trim().parse().expect("a pid");
    // SAFETY: kill of a rank of our own job.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0, "kill rank 1 ({victim})");
    // mpirun must notice and end the job (finish panics if it hangs).
    let out = p.finish(Duration::from_secs(60));
    assert!(!out.status.success(), "mpirun should report the killed rank\n{out}");
    t.assert_no_processes(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------
// Binds and environment for every rank

#[test]
fn rendezvous_directories_outside_tmp_are_bound() {
    let t = start("mpi-rdv");
    // mpirun puts its session directory (PMIX_SERVER_TMPDIR, the shared-memory backing
    // files) under TMPDIR: here a place no standard bind covers.
    let outside = TestDir::new_in(Path::new("/var/tmp"), "mpi-rdv");
    let tmp = outside.user_dir("tmp");
    let mut c = mpirun(&t, LINGER);
    c.env("TMPDIR", &tmp).args(["-n", "2"]).arg(bundle()).args(["run", "--iters", "200:20"]);
    let out = run_with(&mut c, None, MPI_TIMEOUT);
    out.assert_success();
    let r = Report::parse(&out);
    assert!(r.ranks.iter().all(|k| k.rdv == "ok"), "PMIX_SERVER_TMPDIR should be reachable in the ranks\n{out}");
    assert_one_container(&r, &out);
    assert!(r.allreduce_ok, "{out}");
}

#[test]
fn a_bind_to_a_missing_path_is_one_clear_error() {
    let t = start("bind-missing");
    let missing = "/nonexistent-e2e/data";
    let out = run(t.app(bundle(), Mode::Auto, &["--bundle-bind", &format!("{missing}:/data"), "ns"]));
    out.assert_bundle_error(missing);
    let mut c = t.app(bundle(), Mode::Auto, &["ns"]);
    c.env("BUNDLE_BIND", format!("{missing}:/data:ro"));
    run(&mut c).assert_bundle_error(missing);
}

#[test]
fn binds_and_bundleenv_reach_every_rank() {
    let t = start("mpi-binds");
    let data = t.dir.user_dir("data");
    fs::write(data.join("hello"), "hello from the host\n").expect("write data");
    let script = "b=/usr/bin/busybox; $b cat /opt/e2e-data/hello; echo \"inside=$E2E_INSIDE\"; \
                  if $b touch /opt/e2e-data/w 2>/dev/null; then echo writable; else echo read-only; fi; \
                  /usr/local/bin/mpi_probe ns";
    let mut c = mpirun(&t, LINGER);
    c.env("BUNDLEENV_E2E_INSIDE", "yes")
        .env("BUNDLE_BIND", format!("{}:/opt/e2e-data:ro", data.display()))
        .args(["-n", "2"])
        .arg(bundle())
        .args(["--bundle-exec", "/usr/bin/busybox", "sh", "-c", script]);
    let out = run_with(&mut c, None, MPI_TIMEOUT);
    out.assert_success();
    let lines = out.lines();
    let count = |s: &str| lines.iter().filter(|l| *l == s).count();
    assert_eq!(count("hello from the host"), 2, "the bind (not in the image) in every rank\n{out}");
    assert_eq!(count("inside=yes"), 2, "BUNDLEENV_E2E_INSIDE sets E2E_INSIDE in every rank\n{out}");
    assert_eq!(count("read-only"), 2, "the bind was asked read-only\n{out}");
    let users: BTreeSet<u64> = ns_lines(&out).iter().map(|n| n.0).collect();
    assert_eq!(users.len(), 1, "ranks with the same binds share one container\n{out}");
}

#[test]
fn cleanenv_keeps_what_the_launcher_needs() {
    let t = start("mpi-cleanenv");
    // Without a launcher: the caller's variables are gone, HOME stays.
    let mut c = t.app(bundle(), Mode::Auto, &["--bundle-cleanenv", "--bundle-exec", "/usr/bin/busybox", "env"]);
    c.env("E2E_HOST_ONLY", "x");
    let out = run(&mut c);
    out.assert_success();
    assert!(!out.stdout().contains("E2E_HOST_ONLY"), "--bundle-cleanenv should drop the caller's variables\n{out}");
    assert!(out.lines().iter().any(|l| l.starts_with("HOME=")), "HOME is kept\n{out}");

    // Under mpirun the ranks still need the launcher's variables (PMIX_*, OMPI_*) to
    // find it: a clean environment must not make MPI_Init fail.
    let out = mpirun_bundle(&t, 2, &[], &["--bundle-cleanenv", "run", "--no-pingpong"]);
    out.assert_success();
    assert!(Report::parse(&out).allreduce_ok, "{out}");
}

// ---------------------------------------------------------------------------------------
// Kernel mode as root

/// A command run as root for test `t`: a clean environment with the test's tag.
fn root_cmd(t: &Test, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .env("HOME", "/root")
        .env("USER", "root")
        .env("PATH", USER_PATH)
        .env(TAG_VAR, &t.id)
        .env("BUNDLE_LINGER", LINGER)
        .current_dir(&t.work);
    c
}

/// Loop devices backed by `file`: (device, offset, read-only).
fn loop_devices_of(file: &Path) -> Vec<(String, u64, bool)> {
    let out = run(Command::new("losetup").args(["-n", "-l", "-O", "NAME,OFFSET,RO", "-j"]).arg(file));
    out.lines()
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].parse().unwrap_or(u64::MAX), f[2] == "1"))
        })
        .collect()
}

#[test]
fn kernel_mode_as_root_drops_capabilities() {
    require_root("kernel mode");
    let t = Test::new("kernel");
    // A copy of our own: loop devices are looked up by backing file.
    let app = t.dir.join("kernel.sif");
    fs::copy(bundle(), &app).expect("copy the bundle");
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755)).expect("chmod");
    let status = |extra: &[&str]| {
        let mut c = root_cmd(&t, &app);
        c.arg("--bundle-mode=kernel").args(extra).arg("status");
        let out = run(&mut c);
        out.assert_success();
        let field = |name: &str| {
            out.lines()
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} line\n{out}"))
        };
        (field("Uid"), field("CapEff"), field("CapBnd"), field("NoNewPrivs"), out.to_string())
    };
    let (uid, eff, bnd, nnp, out) = status(&[]);
    assert!(uid.starts_with("0\t"), "still root inside\n{out}");
    assert_eq!(eff, "0000000000000000", "no effective capabilities in kernel mode\n{out}");
    assert_eq!(bnd, "0000000000000000", "nothing left in the bounding set\n{out}");
    assert_eq!(nnp, "1", "no_new_privs is set\n{out}");
    let (_, eff, _, nnp, out) = status(&["--bundle-keep-caps"]);
    assert_ne!(eff, "0000000000000000", "--bundle-keep-caps keeps root's capabilities\n{out}");
    assert_eq!(nnp, "0", "--bundle-keep-caps sets no no_new_privs\n{out}");

    // While it runs: the image comes from a read-only loop device at the image offset.
    let mut c = root_cmd(&t, &app);
    c.args([
        "--bundle-mode=kernel",
        "--bundle-exec",
        "/usr/bin/busybox",
        "sh",
        "-c",
        "echo ready; exec /usr/bin/busybox sleep 60",
    ]);
    let mut p = Running::spawn(&mut c);
    p.wait_for_line("ready", READY);
    let loops = loop_devices_of(&app);
    let offset = read_trailer(&app).image_offset;
    assert!(
        loops.iter().any(|(_, off, ro)| *off == offset && *ro),
        "expected a read-only loop device at offset {offset} for {}: {loops:?}",
        app.display()
    );
    p.signal(libc::SIGKILL);
    let _ = p.finish(Duration::from_secs(10));
    t.assert_no_processes(Duration::from_secs(5));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !loop_devices_of(&app).is_empty() && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loop_devices_of(&app), [], "the loop device should be detached once the container is gone");

    // Privileged MPI: ranks of `mpirun --allow-run-as-root` share the mount (there is no
    // user namespace in kernel mode).
    let mut c = root_cmd(&t, "mpirun");
    c.args(["--allow-run-as-root", "-n", "2"]).arg(&app).args(["--bundle-mode=kernel", "run", "--no-pingpong"]);
    let out = run_with(&mut c, None, MPI_TIMEOUT);
    out.assert_success();
    let r = Report::parse(&out);
    assert!(r.allreduce_ok, "{out}");
    assert_eq!(r.mount_namespaces().len(), 1, "one mount for both ranks\n{out}");
    assert_eq!(r.user_namespaces(), BTreeSet::from([host_user_ns()]), "kernel mode makes no user namespace\n{out}");
    t.assert_no_processes(Duration::from_secs(5));
    // The kernel detaches an auto-clearing loop device shortly after its last mount goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !loop_devices_of(&app).is_empty() && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loop_devices_of(&app), [], "no loop device left after the MPI job");
}

// ---------------------------------------------------------------------------------------
// Two hosts on one machine

/// Two "hosts" for `mpirun`: `h1`, a network namespace made with `ip netns add`, where
/// `mpirun` runs (entered as root, then as the test user); and `h2`, network, UTS and
/// user namespaces held by a process of the test user, so that the launcher agent,
/// which `mpirun` runs as the test user, can enter them with `nsenter` (no privilege:
/// the test user owns that user namespace). A veth pair joins them: 10.199.0.1/24 on h1,
/// 10.199.0.2/24 on h2; the addresses exist only inside these namespaces.
/// Everything is removed on drop.
struct TwoHosts {
    netns: String,
    veth: String,
    holder: Option<std::process::Child>,
}

const H1_ADDR: &str = "10.199.0.1";
const H2_ADDR: &str = "10.199.0.2";
const NET: &str = "10.199.0.0/24";

impl TwoHosts {
    fn new(t: &Test) -> TwoHosts {
        let id = format!("{}", std::process::id() % 100_000);
        let mut hosts = TwoHosts { netns: format!("bundle-e2e-{id}-h1"), veth: format!("be2e{id}a"), holder: None };
        let sh = |script: &str| {
            let out = run(Command::new("sh").args(["-ec", script]));
            assert!(out.status.success(), "setting up the hosts failed\n{out}");
        };
        sh(&format!("ip netns add {}", hosts.netns));
        let u = user();
        let mut holder = Command::new("setpriv");
        holder
            .args([format!("--reuid={}", u.uid), format!("--regid={}", u.gid), "--clear-groups".into(), "--".into()])
            .args(["unshare", &format!("--map-user={}", u.uid), &format!("--map-group={}", u.gid), "--net", "--uts"])
            .args(["--", "sleep", "900"])
            .env_clear()
            .env(TAG_VAR, &t.id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        hosts.holder = Some(holder.spawn().expect("start the holder of h2"));
        let h2 = hosts.h2_pid();
        // The holder is ready once it has its own network namespace.
        let ours = fs::read_link("/proc/self/ns/net").expect("our netns");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fs::read_link(format!("/proc/{h2}/ns/net")).is_ok_and(|n| n == ours)
            || fs::read_to_string(format!("/proc/{h2}/comm")).is_ok_and(|c| c.trim() != "sleep")
        {
            assert!(std::time::Instant::now() < deadline, "the holder of h2 did not start");
            thread::sleep(Duration::from_millis(20));
        }
        let (n1, a, b) = (&hosts.netns, &hosts.veth, format!("{}b", &hosts.veth[..hosts.veth.len() - 1]));
        sh(&format!(
            "ip link add {a} type veth peer name {b}
             ip link set {a} netns {n1}
             ip link set {b} netns {h2}
             ip netns exec {n1} sh -ec 'ip link set lo up; ip addr add {H1_ADDR}/24 dev {a}; ip link set {a} up'
             nsenter -t {h2} -n -u sh -ec 'hostname h2; ip link set lo up; ip addr add {H2_ADDR}/24 dev {b}; ip link set {b} up'"
        ));
        hosts
    }

    fn h2_pid(&self) -> u32 {
        self.holder.as_ref().expect("holder").id()
    }

    /// The launcher agent: `agent h2 COMMAND…` runs COMMAND (a shell command line, as
    /// ssh would) on h2.
    fn agent(&self, t: &Test) -> PathBuf {
        let agent = t.work.join("agent");
        e2e::slurm::write_script(
            &agent,
            &format!(
                "#!/bin/sh\n\
                 # mpirun's remote shell for the test hosts: agent HOST COMMAND...\n\
                 host=$1; shift\n\
                 case $host in\n\
                 h2|{H2_ADDR}) ;;\n\
                 *) echo \"agent: unknown host $host\" >&2; exit 255 ;;\n\
                 esac\n\
                 exec nsenter -t {pid} -U -n -u --preserve-credentials -- /bin/sh -c \"$*\"\n",
                pid = self.h2_pid(),
            ),
        );
        agent
    }

    /// A command run as the test user on h1 (in its network namespace, with the host
    /// name h1), with the environment of `t`.
    fn on_h1(&self, t: &Test, program: &str) -> Command {
        let u = user();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "unshare", "--uts", "--", "sh", "-c"])
            .arg(r#"hostname h1 && u=$1 g=$2 && shift 2 && exec setpriv --reuid="$u" --regid="$g" --clear-groups -- "$@""#)
            .arg("sh")
            .arg(u.uid.to_string())
            .arg(u.gid.to_string())
            .arg(program)
            .env_clear()
            .env("HOME", &u.home)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .env("PATH", USER_PATH)
            .env(TAG_VAR, &t.id)
            .env("BUNDLE_LINGER", LINGER)
            .current_dir(&t.work);
        c
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        quiet(&["netns", "del", &self.netns]);
        // Gone with its namespace already, normally.
        quiet(&["link", "del", &self.veth]);
    }
}

#[test]
fn two_network_namespace_hosts_through_a_launcher_agent() {
    require_root("making network namespaces");
    let t = start("mpi-hosts");
    let hosts = TwoHosts::new(&t);
    let agent = hosts.agent(&t);
    let mut c = hosts.on_h1(&t, "mpirun");
    c.args(["--host", "h1,h2", "-n", "2"])
        .args(["--mca", "plm_rsh_agent"])
        .arg(&agent)
        .args(["--mca", "oob_tcp_if_include", NET, "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", NET])
        .arg(bundle())
        .args(["run", "--iters", "20:2"]);
    let out = run_with(&mut c, None, MPI_TIMEOUT);
    out.assert_success();
    let r = Report::parse(&out);
    let hostnames: Vec<&str> = r.ranks.iter().map(|k| k.host.as_str()).collect();
    assert_eq!(hostnames, ["h1", "h2"], "one rank on each host\n{out}");
    assert!(r.allreduce_ok, "the ranks talked over TCP between the hosts\n{out}");
    assert_eq!(r.user_namespaces().len(), 2, "each host has its own container\n{out}");
    eprintln!("TCP between two network namespaces (veth): {}", r.figures());
    drop(hosts);
    t.assert_no_processes(Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------
// Speed

#[test]
fn latency_and_bandwidth_inside_and_bare() {
    let t = start("mpi-speed");
    let bare = t.work.join("mpi_probe");
    fs::copy(mpi_probe(), &bare).expect("copy the MPI probe");
    fs::set_permissions(&bare, fs::Permissions::from_mode(0o755)).expect("chmod");
    let measure = |program: &Path| {
        let mut c = mpirun(&t, LINGER);
        c.args(["-n", "2"]).arg(program).args(["run", "--iters", "5000:200"]);
        let out = run_with(&mut c, None, MPI_TIMEOUT);
        out.assert_success();
        Report::parse(&out)
    };
    let best = |program: &Path| {
        let runs: Vec<Report> = (0..3).map(|_| measure(program)).collect();
        let lat = runs.iter().filter_map(|r| r.latency_us).fold(f64::INFINITY, f64::min);
        let bw = runs.iter().filter_map(|r| r.bandwidth_mbps).fold(0.0, f64::max);
        (lat, bw, runs)
    };
    let (lat_in, bw_in, inside) = best(bundle());
    let (lat_bare, bw_bare, _) = best(&bare);
    assert!(inside.iter().all(|r| r.cma.iter().all(|c| c == "ok")), "CMA inside: {inside:?}");
    eprintln!(
        "mpirun -n 2 ping-pong (best of 3): inside a bundle {lat_in:.3} us / {bw_in:.0} MB/s; \
         bare {lat_bare:.3} us / {bw_bare:.0} MB/s"
    );
}
