//! Open MPI for the end-to-end tests: the MPI test program (`tests/programs/mpi_probe.c`),
//! a bundle of it with everything Open MPI needs at run time, `mpirun` as the test user,
//! the parsed report of a run, and a watch that counts container keepers.
//!
//! Uses Debian's Open MPI 4.1 (`openmpi-bin`, `libopenmpi-dev`), installed by
//! `./scripts/test`.

use crate::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Where the MPI program is inside its bundle (the entrypoint).
pub const MPI_PROBE_IN_IMAGE: &str = "/usr/local/bin/mpi_probe";
/// Debian's Open MPI component and data directories: what `MPI_Init` opens besides the
/// libraries the program links (MCA plugins, the external PMIx and its plugins, help
/// texts, the system-wide MCA parameter file).
pub const OPEN_MPI_DIRS: [&str; 4] =
    ["/usr/lib/x86_64-linux-gnu/openmpi", "/usr/lib/x86_64-linux-gnu/pmix2", "/usr/share/openmpi", "/etc/openmpi"];
/// The plugins among those, whose libraries the image must also carry.
const PLUGIN_DIRS: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3", "/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix"];
/// Where the image keeps every library (Debian's merged /usr: `/lib` → `usr/lib`).
const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

const SETUP: &str = "Open MPI is missing: install openmpi-bin and libopenmpi-dev (./scripts/test does)";

/// Panics with advice unless `mpirun` and `mpicc` are installed.
#[track_caller]
pub fn require_mpi() {
    for tool in ["/usr/bin/mpirun", "/usr/bin/mpicc"] {
        assert!(Path::new(tool).exists(), "{tool}: {SETUP}");
    }
}

/// `tests/programs/mpi_probe.c`, compiled once per test binary with Debian's `mpicc`
/// into `target/<profile>/e2e/mpi_probe`.
pub fn mpi_probe() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        require_mpi();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs/mpi_probe.c");
        let dir = target_profile_dir().join("e2e");
        fs::create_dir_all(&dir).expect("create target/<profile>/e2e");
        let out = dir.join("mpi_probe");
        let tmp = dir.join(format!("mpi_probe.tmp-{}", std::process::id()));
        let result = run(Command::new("mpicc").args(["-O2", "-Wall", "-Wextra", "-o"]).arg(&tmp).arg(&src));
        assert!(result.status.success(), "cannot compile the MPI probe: {SETUP}\n{result}");
        fs::rename(&tmp, &out).expect("publish the MPI probe");
        out
    })
}

/// The shared libraries `ldd` resolves for `elf`: (soname, host path).
fn ldd(elf: &Path) -> Vec<(String, PathBuf)> {
    let out = run(Command::new("ldd").arg(elf));
    out.assert_success();
    let mut libs = Vec::new();
    for line in out.lines() {
        let Some((name, rest)) = line.trim().split_once(" => ") else { continue };
        let path = rest.split_whitespace().next().unwrap_or("");
        assert!(path.starts_with('/'), "ldd {}: {name} is not found on this host\n{out}", elf.display());
        libs.push((name.to_string(), PathBuf::from(path)));
    }
    libs
}

/// A file list (`bundle build --files`) for `program` at `dest` with what it needs to run
/// under `mpirun` and `srun --mpi=pmix`: the dynamic loader, every library `ldd` finds
/// for the program and for Open MPI's and PMIx's plugins (as files, at their sonames),
/// Open MPI's and PMIx's own directories, and busybox as `/usr/bin/busybox`.
///
/// This is the test fixture's own closure, written out by hand on purpose: it does not
/// depend on the bundler's automatic closure (`bundle build` adding libraries itself),
/// and it shows exactly what an MPI program needs, dlopen'ed plugins included.
pub fn closure_list(program: &Path, dest: &str) -> String {
    let mut elves = vec![program.to_path_buf()];
    for dir in PLUGIN_DIRS {
        let mut plugins: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}: {SETUP}"))
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "so"))
            .collect();
        plugins.sort();
        elves.extend(plugins);
    }
    let mut libs = BTreeSet::new();
    for elf in &elves {
        for (name, path) in ldd(elf) {
            let real = fs::canonicalize(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            libs.insert(format!("{}={LIB_DIR}/{name}", real.display()));
        }
    }
    let loader = fs::canonicalize("/lib64/ld-linux-x86-64.so.2").expect("the dynamic loader");
    let mut list = vec![
        "# Made by tests/common/mpi.rs: an MPI program and Open MPI's run-time closure.".to_string(),
        format!("{}={dest}", program.display()),
        format!("{}=/usr/bin/busybox", busybox().display()),
        // Merged /usr, as on the host: the loader and RUNPATHs name /lib and /lib64.
        "/lib=/lib".into(),
        "/lib64=/lib64".into(),
        format!("{}=/usr/lib64/ld-linux-x86-64.so.2", loader.display()),
    ];
    list.extend(libs);
    list.extend(OPEN_MPI_DIRS.iter().map(|d| d.to_string()));
    list.join("\n") + "\n"
}

/// Does this `bundle build` have `--no-closure` (the automatic closure)? The fixture's
/// list is complete, so the bundler is asked not to add to it.
fn bundler_has_closure() -> bool {
    static B: OnceLock<bool> = OnceLock::new();
    *B.get_or_init(|| run(bundle(&["build".as_ref(), "--help".as_ref()])).stdout().contains("--no-closure"))
}

/// Builds `dir/NAME.sif`: the MPI probe and Open MPI's closure, entrypoint the probe.
pub fn mpi_bundle(dir: &Path, name: &str) -> PathBuf {
    let list = dir.join(format!("{name}.files"));
    fs::write(&list, closure_list(mpi_probe(), MPI_PROBE_IN_IMAGE)).expect("write the file list");
    let mut b = Build::new().arg("--files").arg(&list).entrypoint(MPI_PROBE_IN_IMAGE).args(["--level", "3"]);
    if bundler_has_closure() {
        b = b.arg("--no-closure");
    }
    b.build(&dir.join(format!("{name}.sif")))
}

/// The MPI bundle shared by the tests of one binary (built once).
pub fn shared_mpi_bundle() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| mpi_bundle(shared_dir(), "mpi"))
}

/// `mpirun ARGS…` as the test user (see [`Test::cmd`]), with `BUNDLE_LINGER=linger`.
pub fn mpirun(t: &Test, linger: &str) -> Command {
    require_mpi();
    let mut c = t.cmd("mpirun");
    c.env("BUNDLE_LINGER", linger);
    c
}

// ---------------------------------------------------------------------------------------
// What `mpi_probe run` reports

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rank {
    pub rank: usize,
    pub host: String,
    pub pid: i32,
    /// Inode of the rank's user namespace.
    pub user: u64,
    /// Inode of the rank's mount namespace.
    pub mnt: u64,
    /// `PMIX_SERVER_TMPDIR` seen from the rank: "ok" (a directory it can reach),
    /// "missing", or "unset".
    pub rdv: String,
}

/// The report that rank 0 of `mpi_probe run` prints.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub size: usize,
    pub ranks: Vec<Rank>,
    /// Per rank: "ok", "EPERM", "error=N" or "mismatch".
    pub cma: Vec<String>,
    pub allreduce_ok: bool,
    /// A token passed once round the ring of ranks (rank r to r+1) came back right.
    pub ring_ok: bool,
    pub latency_us: Option<f64>,
    pub bandwidth_mbps: Option<f64>,
}

impl Report {
    /// Parses the report out of `out`'s stdout, panicking with the output if it is not
    /// a complete one.
    #[track_caller]
    pub fn parse(out: &Out) -> Report {
        let mut r = Report::default();
        let field = |words: &[&str], key: &str| -> String {
            words.iter().find_map(|w| w.strip_prefix(&format!("{key}="))).unwrap_or("").to_string()
        };
        for line in out.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["size", n] => r.size = n.parse().unwrap_or(0),
                ["rank", n, ..] => r.ranks.push(Rank {
                    rank: n.parse().unwrap_or(usize::MAX),
                    host: field(&words, "host"),
                    pid: field(&words, "pid").parse().unwrap_or(0),
                    user: field(&words, "user").parse().unwrap_or(0),
                    mnt: field(&words, "mnt").parse().unwrap_or(0),
                    rdv: field(&words, "rdv"),
                }),
                ["cma", _, what] => r.cma.push(what.to_string()),
                ["allreduce", what] => r.allreduce_ok = *what == "ok",
                ["ring", what] => r.ring_ok = *what == "ok",
                ["latency_us", x] => r.latency_us = x.parse().ok(),
                ["bandwidth_MBps", x] => r.bandwidth_mbps = x.parse().ok(),
                _ => {}
            }
        }
        assert!(
            r.size > 0 && r.ranks.len() == r.size && r.cma.len() == r.size,
            "no complete report from mpi_probe run (size {}, {} rank lines, {} cma lines)\n{out}",
            r.size,
            r.ranks.len(),
            r.cma.len()
        );
        r
    }

    /// The distinct user namespaces of the ranks.
    pub fn user_namespaces(&self) -> BTreeSet<u64> {
        self.ranks.iter().map(|r| r.user).collect()
    }

    pub fn mount_namespaces(&self) -> BTreeSet<u64> {
        self.ranks.iter().map(|r| r.mnt).collect()
    }

    /// "latency 0.35 us, bandwidth 4100 MB/s" (for messages).
    pub fn figures(&self) -> String {
        match (self.latency_us, self.bandwidth_mbps) {
            (Some(l), Some(b)) => format!("latency {l:.3} us, bandwidth {b:.0} MB/s"),
            _ => "no ping-pong".into(),
        }
    }
}

/// Parses `mpi_probe ns` lines: (user namespace, mount namespace, pid) per line.
pub fn ns_lines(out: &Out) -> Vec<(u64, u64, i32)> {
    out.lines()
        .iter()
        .filter(|l| l.starts_with("ns "))
        .map(|l| {
            let get = |key: &str| -> String {
                l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).unwrap_or("").to_string()
            };
            (get("user").parse().unwrap_or(0), get("mnt").parse().unwrap_or(0), get("pid").parse().unwrap_or(0))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Counting keepers

/// The pids of the keepers of `bundle` among the processes tagged `tag`: a keeper is
/// the stub re-parented to init by its double fork, running from a private copy of the
/// bundle's stub (its executable then a memfd, `/memfd:bundle-keeper`) and holding the
/// bundle file open, or, where the kernel did not let it name the memfd, the bundle
/// file itself. (A rank
/// runs the stub too, but only until its exec, and as a child of its launcher; the
/// FUSE server is the keeper's child.) Under a child subreaper other than init a
/// keeper is not found this way.
pub fn keepers(tag: &str, bundle: &Path) -> Vec<i32> {
    let Ok(b) = fs::metadata(bundle) else { return Vec::new() };
    let is_bundle = |p: &Path| fs::metadata(p).is_ok_and(|m| m.dev() == b.dev() && m.ino() == b.ino());
    let from_copy = |pid: i32| {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        exe.to_string_lossy().starts_with("/memfd:bundle-keeper")
            && fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten().any(|fd| is_bundle(&fd.path()))
    };
    tagged_processes(tag)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|&pid| {
            let keeper_of_bundle = is_bundle(Path::new(&format!("/proc/{pid}/exe"))) || from_copy(pid);
            keeper_of_bundle && parent_of(pid) == Some(1)
        })
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The containers the processes tagged `tag` are in: the distinct mount namespaces
/// (inodes) other than ours.
pub fn containers(tag: &str) -> BTreeSet<u64> {
    let ours = fs::metadata("/proc/self/ns/mnt").map(|m| m.ino()).unwrap_or(0);
    tagged_processes(tag)
        .into_iter()
        .filter_map(|(pid, _)| fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| m.ino()))
        .filter(|ino| *ino != ours)
        .collect()
}

/// What a [`KeeperWatch`] saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Distinct mount namespaces (inodes) other than ours among the tagged processes:
    /// one per container, whoever made it.
    pub containers: BTreeSet<u64>,
    /// Keeper pids, as [`keepers`] finds them.
    pub keepers: BTreeSet<i32>,
    /// The network namespace (inode) of each keeper: keepers are per host, and each
    /// host of the two-node Slurm is a network namespace.
    pub keeper_netns: std::collections::BTreeMap<i32, u64>,
}

/// Samples the processes tagged `tag` every few milliseconds until stopped: which
/// containers and which keepers of `bundle` existed meanwhile. (A keeper lives at least
/// its linger, so none is missed.)
pub struct KeeperWatch {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Seen>>,
}

impl KeeperWatch {
    pub fn start(tag: &str, bundle: &Path) -> KeeperWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let (tag, bundle, flag) = (tag.to_string(), bundle.to_path_buf(), stop.clone());
        let handle = thread::spawn(move || {
            let mut seen = Seen::default();
            let deadline = Instant::now() + Duration::from_secs(300);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                seen.containers.extend(containers(&tag));
                for pid in keepers(&tag, &bundle) {
                    if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) {
                        seen.keeper_netns.insert(pid, m.ino());
                    }
                    seen.keepers.insert(pid);
                }
                thread::sleep(Duration::from_millis(3));
            }
            seen
        });
        KeeperWatch { stop, handle: Some(handle) }
    }

    /// Stops sampling.
    pub fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("watching").join().expect("the keeper watch panicked")
    }
}

impl Drop for KeeperWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Waits until `path` exists (a rank's "ready" file); panics after `timeout`.
#[track_caller]
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {timeout:?}", path.display());
        thread::sleep(Duration::from_millis(20));
    }
}
