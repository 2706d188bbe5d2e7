//! Issue 4, under Slurm: the MPI bundle (see tests/mpi.rs) run by `srun --mpi=pmix`,
//! from an `sbatch` job script, and stopped with `scancel`, on a single-node Slurm that
//! the tests start and stop themselves (`common::slurm`: munged, slurmctld, slurmd on
//! 127.0.0.1, everything in a folder under /var/tmp). Needs root (slurmd); jobs run as
//! the test user.
//!
//! Two more tests start a two-node Slurm of their own (`Slurm::start_two_nodes`: each
//! slurmd in its own network namespace): `srun -N 2 -n 4 --mpi=pmix` and an `sbatch -N 2`
//! job that `sbcast`s the bundle to node-local storage; one container per node.
//!
//! One Slurm serves all other tests of this file (they run in parallel; every job asks for
//! `--oversubscribe`, the partition allows it); it stops when the test process exits.

use e2e::mpi::*;
use e2e::slurm::*;
use e2e::*;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `BUNDLE_LINGER` of these tests (seconds), unless a test is about lingering.
const LINGER: &str = "0.5";
/// One job (the machine may be busy).
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
const READY: Duration = Duration::from_secs(60);

fn start(name: &str) -> (Test, &'static Slurm) {
    require_mpi();
    require_fuse();
    let slurm = Slurm::shared();
    (Test::new(name), slurm)
}

/// `srun --oversubscribe ARGS…` as the test user, with `BUNDLE_LINGER`.
fn srun(t: &Test, slurm: &Slurm, args: &[&str]) -> Command {
    let mut c = slurm.cmd(t, "srun");
    c.env("BUNDLE_LINGER", LINGER).arg("--oversubscribe").args(args);
    c
}

/// The MPI bundle as `./app.sif` in the test's working directory (a hard link).
fn app_in_work(t: &Test) -> PathBuf {
    let app = t.work.join("app.sif");
    if fs::hard_link(shared_mpi_bundle(), &app).is_err() {
        fs::copy(shared_mpi_bundle(), &app).expect("copy the bundle");
    }
    app
}

fn run_job(mut c: Command, slurm: &Slurm) -> Out {
    let p = Running::spawn(&mut c);
    let out = p.finish(JOB_TIMEOUT);
    if !out.status.success() {
        eprintln!("{}", slurm.logs());
    }
    out
}

// ---------------------------------------------------------------------------------------
// srun

#[test]
fn srun_two_ranks_share_one_container_and_use_cma() {
    let (t, slurm) = start("srun-two");
    let mut c = srun(&t, slurm, &["-n", "2", "--mpi=pmix"]);
    c.arg(shared_mpi_bundle()).arg("run");
    let out = run_job(c, slurm);
    out.assert_success();
    let r = Report::parse(&out);
    assert!(r.allreduce_ok, "{out}");
    // Slurm's PMIx server directory (in SlurmdSpoolDir, here under /var/tmp) is bound
    // for the ranks without being asked.
    assert!(r.ranks.iter().all(|k| k.rdv == "ok"), "PMIX_SERVER_TMPDIR should be reachable in every rank\n{out}");
    assert_eq!(r.user_namespaces().len(), 1, "both ranks of the step should share one container\n{out}");
    assert_eq!(r.mount_namespaces().len(), 1, "one mount namespace\n{out}");
    assert_eq!(r.cma, ["ok", "ok"], "CMA between the ranks of one container\n{out}");
    eprintln!("srun -n 2 --mpi=pmix, inside one bundle: {}", r.figures());
}

#[test]
fn pmix_client_directory_outside_tmp_is_bound() {
    // A Slurm of its own, whose PMIxCliTmpDirBase (mpi.conf) is under /var/tmp: the ranks
    // make Open MPI's session directory there, a path that the PMIx server tells them
    // and no environment variable names.
    require_mpi();
    require_fuse();
    let slurm = Slurm::start_with(false);
    let t = Test::new("srun-pmix-dir");
    let mut c = srun(&t, &slurm, &["-n", "2", "--mpi=pmix"]);
    c.arg(shared_mpi_bundle()).args(["run", "--no-pingpong"]);
    let out = run_job(c, &slurm);
    out.assert_success();
    assert!(Report::parse(&out).allreduce_ok, "{out}");
}

#[test]
fn srun_exit_statuses_pass_through() {
    let (t, slurm) = start("srun-exit");
    // Four ranks on two CPUs; rank 2 exits with 3 after MPI_Finalize.
    let mut c = srun(&t, slurm, &["-n", "4", "--overcommit", "--mpi=pmix"]);
    c.arg(shared_mpi_bundle()).args(["run", "--iters", "100:10", "--exit", "2:3"]);
    let out = run_job(c, slurm);
    out.assert_code(3);
    let r = Report::parse(&out);
    assert!(r.size == 4 && r.allreduce_ok, "{out}");

    // A task killed by a signal: 128+N, as a shell would say.
    let mut c = srun(&t, slurm, &["-n", "1"]);
    c.arg(shared_mpi_bundle()).args(["--bundle-exec", "/usr/bin/busybox", "sh", "-c", "kill -9 $$"]);
    run_job(c, slurm).assert_code(128 + libc::SIGKILL);

    // An error of the bundle itself.
    let mut c = srun(&t, slurm, &["-n", "1"]);
    c.arg(shared_mpi_bundle()).args(["--bundle-bind", "/nonexistent-e2e-bind", "ns"]);
    let out = run_job(c, slurm);
    out.assert_code(255);
    assert!(out.stderr().contains("bundle: error: "), "{out}");
}

#[test]
fn scancel_reaches_the_application_and_leaves_nothing() {
    let (t, slurm) = start("scancel");
    let name = format!("scancel-{}", std::process::id());
    let ready = t.dir.user_dir("ready");
    let marker = t.work.join("term");
    let mut c = srun(&t, slurm, &["-n", "2", "--mpi=pmix", "--job-name", &name]);
    c.arg(shared_mpi_bundle()).args(["run", "--no-pingpong", "--term"]).arg(&marker).arg("--ready").arg(&ready);
    let p = Running::spawn(&mut c);
    for r in 0..2 {
        wait_for_file(&ready.join(format!("ready.{r}")), READY);
    }
    let id = slurm.wait_for_running_job(&name, READY);
    run(slurm.cmd(&t, "scancel").arg(&id)).assert_success();
    let out = p.finish(JOB_TIMEOUT);
    assert!(!out.status.success(), "a cancelled step does not succeed\n{out}");
    for r in 0..2 {
        let m = PathBuf::from(format!("{}.{r}", marker.display()));
        let text = fs::read_to_string(&m).unwrap_or_default();
        assert!(
            text.contains(&format!("rank {r} ")) && text.contains("SIGTERM"),
            "rank {r}'s SIGTERM handler did not run ({}: {text:?})\n{out}",
            m.display()
        );
    }
    // Nothing of the job on the node: no task, no keeper (the test's drop checks the
    // tagged processes), and Slurm has forgotten the job.
    wait_until_gone(slurm, &id);
    t.assert_no_processes(Duration::from_secs(5));
}

fn wait_until_gone(slurm: &Slurm, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(slurm.root_cmd("squeue").args(["-h", "-j", id, "-o", "%T"]));
        let state = out.stdout().trim().to_string();
        if state.is_empty() || state == "COMPLETED" || state == "CANCELLED" || state == "FAILED" {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} still {state} 30 s after it ended\n{}", slurm.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// sbatch

/// `sbatch --wait job.sh` as the test user: the job's exit status is sbatch's.
fn sbatch_wait(t: &Test, slurm: &Slurm, script: &Path) -> Out {
    let mut c = slurm.cmd(t, "sbatch");
    c.args(["--wait", "--oversubscribe", "--quiet"]).arg(script);
    run_job(c, slurm)
}

#[test]
fn sbatch_job_script_runs_the_bundle_like_any_program() {
    let (t, slurm) = start("sbatch");
    app_in_work(&t);
    let output = t.work.join("job.out");
    let script = t.work.join("job.sh");
    // Three runs in a row: the second and the third join the lingering container.
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             #SBATCH --job-name=bundle-e2e-sbatch\n\
             #SBATCH --output={out}\n\
             #SBATCH --ntasks=1\n\
             export BUNDLE_LINGER=2\n\
             for i in 1 2 3; do\n\
             \x20   ./app.sif ns || exit 100\n\
             done\n\
             echo \"job $SLURM_JOB_ID done\"\n\
             ./app.sif exit 7\n",
            out = output.display()
        ),
    );
    let out = sbatch_wait(&t, slurm, &script);
    let job_out = fs::read_to_string(&output).unwrap_or_default();
    assert_eq!(
        out.code(),
        Some(7),
        "the job's exit status (the bundle's) through sbatch --wait\n{out}\njob output:\n{job_out}"
    );
    let ns: Vec<&str> = job_out.lines().filter(|l| l.starts_with("ns ")).collect();
    assert_eq!(ns.len(), 3, "three runs\n{job_out}");
    let containers: BTreeSet<(String, String)> = ns
        .iter()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_string(), w[2].to_string())
        })
        .collect();
    assert_eq!(containers.len(), 1, "the later runs should join the first run's lingering container\n{job_out}");
    assert!(job_out.contains(" done"), "{job_out}");
    // The container lingers 2 s after the last run, then nothing is left.
    t.assert_no_processes(Duration::from_secs(8));
}

#[test]
fn a_lingering_container_never_outlives_its_job() {
    let (t, slurm) = start("sbatch-linger");
    app_in_work(&t);
    let output = t.work.join("job.out");
    let script = t.work.join("job.sh");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             #SBATCH --job-name=bundle-e2e-linger\n\
             #SBATCH --output={out}\n\
             export BUNDLE_LINGER=60\n\
             ./app.sif ns\n",
            out = output.display()
        ),
    );
    let out = sbatch_wait(&t, slurm, &script);
    out.assert_success();
    // The job is over: its container must go with it, not 60 s later.
    let left = t.wait_for_no_processes(Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "the job ended but its container lingers on (BUNDLE_LINGER=60): {left:?}\njob output:\n{}",
        fs::read_to_string(&output).unwrap_or_default()
    );
}

#[test]
fn the_example_job_script_runs_the_example_mpi_program() {
    // examples/slurm/job.sh with examples/mpi/ring.c, bundled as examples/mpi/build.sh
    // does it: three serial runs in the batch step, then an srun --mpi=pmix step.
    let (t, slurm) = start("example-job");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let ring = t.work.join("ring");
    run(Command::new("mpicc").args(["-O2", "-o"]).arg(&ring).arg(examples.join("mpi/ring.c"))).assert_success();
    let mut b = Build::new().arg("--file").arg(format!("{}=/usr/local/bin/ring", ring.display()));
    for dir in OPEN_MPI_DIRS {
        b = b.arg("--include").arg(dir);
    }
    b.entrypoint("/usr/local/bin/ring").args(["--level", "3"]).build(&t.work.join("app.sif"));
    let script = t.work.join("job.sh");
    fs::copy(examples.join("slurm/job.sh"), &script).expect("copy the example job script");
    let output = t.work.join("job.out");
    let mut c = slurm.cmd(&t, "sbatch");
    // Two tasks on this 2-CPU node instead of the script's four; a short linger.
    c.env("BUNDLE_LINGER", "2")
        .args(["--wait", "--oversubscribe", "--quiet", "--ntasks=2"])
        .arg(format!("--output={}", output.display()))
        .arg(&script);
    let out = run_job(c, slurm);
    let job_out = fs::read_to_string(&output).unwrap_or_default();
    out.assert_success();
    let serial: Vec<&str> = job_out.lines().filter(|l| l.starts_with("serial run")).collect();
    assert_eq!(serial.len(), 3, "three serial runs\n{job_out}");
    let namespaces: BTreeSet<&str> = serial
        .iter()
        .filter_map(|l| l.split(", user namespace ").nth(1))
        .map(|s| s.split(',').next().unwrap_or(""))
        .collect();
    assert_eq!(namespaces.len(), 1, "the serial runs share the lingering container\n{job_out}");
    assert!(job_out.contains("ring: token 1, allreduce 1: ok"), "the MPI step\n{job_out}");
    t.assert_no_processes(Duration::from_secs(8));
}

// ---------------------------------------------------------------------------------------
// Two nodes: each slurmd in its own network namespace (common::slurm::Slurm::start_two_nodes)

/// The test user's commands on the two-node Slurm: Open MPI's TCP transport between the
/// nodes kept on their veth pair.
fn two_node_env(c: &mut Command) {
    c.env("BUNDLE_LINGER", LINGER).env("OMPI_MCA_btl_tcp_if_include", NODES_NET);
}

/// The inode of a network namespace file (`/run/netns/NAME`): what `/proc/PID/ns/net`
/// of its processes shows.
fn netns_inode(node: &Node) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(node.netns_path()).unwrap_or_else(|e| panic!("{}: {e}", node.netns_path().display())).ino()
}

/// Ranks on the same host share one container; ranks on different hosts do not. The
/// hosts the ranks ran on, in rank order.
#[track_caller]
fn assert_one_container_per_node(r: &Report, out: &str) -> Vec<String> {
    let hosts: Vec<String> = r.ranks.iter().map(|k| k.host.clone()).collect();
    let mut per_host: std::collections::BTreeMap<&str, BTreeSet<(u64, u64)>> = Default::default();
    for k in &r.ranks {
        per_host.entry(k.host.as_str()).or_default().insert((k.user, k.mnt));
    }
    assert_eq!(per_host.len(), 2, "ranks on both nodes: {hosts:?}\n{out}");
    for (host, containers) in &per_host {
        assert_eq!(containers.len(), 1, "the ranks on {host} should share one user and mount namespace\n{out}");
    }
    let all: BTreeSet<&(u64, u64)> = per_host.values().flatten().collect();
    assert_eq!(all.len(), 2, "each node has a container of its own\n{out}");
    hosts
}

#[test]
fn two_nodes_srun_one_container_per_node_and_ranks_talk_across() {
    require_mpi();
    require_fuse();
    let slurm = Slurm::start_two_nodes();
    let t = Test::new("srun-two-nodes");
    let app = app_in_work(&t);
    let watch = KeeperWatch::start(&t.id, &app);
    let mut c = slurm.cmd(&t, "srun");
    two_node_env(&mut c);
    c.args(["-N", "2", "-n", "4", "--mpi=pmix", "./app.sif", "run", "--iters", "20:2"]);
    let out = run_job(c, &slurm);
    let seen = watch.stop();
    out.assert_success();
    let r = Report::parse(&out);
    let hosts = assert_one_container_per_node(&r, &out.to_string());
    assert_eq!(hosts, ["n1", "n1", "n2", "n2"], "two ranks per node, in block order\n{out}");
    assert!(r.allreduce_ok, "allreduce over both nodes\n{out}");
    assert!(r.ring_ok, "a token round the ring, across the nodes twice\n{out}");
    assert!(r.ranks.iter().all(|k| k.rdv == "ok"), "each node's PMIx server directory is bound\n{out}");
    // Within a node the ranks share the user namespace, so CMA works to the neighbour
    // on the same node (ranks 0 and 2) and is refused across nodes (ranks 1 and 3).
    assert_eq!(r.cma, ["ok", "EPERM", "ok", "EPERM"], "{out}");
    // Two keepers, one in each node's network namespace.
    let nets: BTreeSet<u64> = seen.keeper_netns.values().copied().collect();
    let want: BTreeSet<u64> = slurm.nodes().iter().map(netns_inode).collect();
    assert_eq!(seen.keepers.len(), 2, "one keeper per node: {seen:?}\n{out}");
    assert_eq!(nets, want, "the keepers should be one in each node's network namespace: {seen:?}");
    eprintln!("srun -N 2 -n 4 over a veth pair: {}", r.figures());
    t.assert_no_processes(Duration::from_secs(8));
}

#[test]
fn two_nodes_sbatch_job_sbcasts_the_bundle_to_node_local_storage() {
    require_mpi();
    require_fuse();
    let slurm = Slurm::start_two_nodes();
    let t = Test::new("sbatch-two-nodes");
    app_in_work(&t);
    let local = slurm.local_dir().join("app.sif");
    let output = t.work.join("job.out");
    let script = t.work.join("job.sh");
    // As docs/mpi-slurm.md says: copy the bundle once to each node's local storage
    // (one read of the shared file system per node), then start the tasks from there.
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             #SBATCH --job-name=bundle-e2e-two-nodes\n\
             #SBATCH --output={out}\n\
             #SBATCH --nodes=2\n\
             #SBATCH --ntasks-per-node=2\n\
             set -eu\n\
             sbcast --force ./app.sif {local}\n\
             srun --mpi=pmix {local} run --no-pingpong\n\
             echo \"job $SLURM_JOB_ID on $SLURM_JOB_NODELIST done\"\n",
            out = output.display(),
            local = local.display()
        ),
    );
    // The keepers run the node-local copies: one per node, each in its node's network
    // namespace.
    let watches: Vec<(&Node, KeeperWatch)> = slurm
        .nodes()
        .iter()
        .map(|n| (n, KeeperWatch::start(&t.id, &slurm.local_dir_of(&n.name).join("app.sif"))))
        .collect();
    let mut c = slurm.cmd(&t, "sbatch");
    two_node_env(&mut c);
    c.args(["--wait", "--quiet"]).arg(&script);
    let out = run_job(c, &slurm);
    for (node, watch) in watches {
        let seen = watch.stop();
        let nets: BTreeSet<u64> = seen.keeper_netns.values().copied().collect();
        assert_eq!(seen.keepers.len(), 1, "one keeper ran {}'s copy: {seen:?}", node.name);
        assert_eq!(nets, BTreeSet::from([netns_inode(node)]), "{}'s keeper is in its network namespace", node.name);
    }
    let job_out = fs::read_to_string(&output).unwrap_or_default();
    assert!(out.status.success(), "the job failed\n{out}\njob output:\n{job_out}\n{}", slurm.logs());
    let parsed = Out { stdout: job_out.clone().into_bytes(), ..out };
    let r = Report::parse(&parsed);
    let hosts = assert_one_container_per_node(&r, &job_out);
    assert_eq!(hosts, ["n1", "n1", "n2", "n2"], "{job_out}");
    assert!(r.allreduce_ok && r.ring_ok, "{job_out}");
    assert!(job_out.contains("on n[1-2] done"), "{job_out}");
    // sbcast wrote a copy into each node's own local directory (not a shared one).
    let shared_len = fs::metadata(shared_mpi_bundle()).expect("the bundle").len();
    for node in slurm.nodes() {
        let copy = slurm.local_dir_of(&node.name).join("app.sif");
        let len = fs::metadata(&copy).map(|m| m.len()).unwrap_or(0);
        assert_eq!(len, shared_len, "sbcast's copy on {}: {}", node.name, copy.display());
    }
    t.assert_no_processes(Duration::from_secs(8));
}
