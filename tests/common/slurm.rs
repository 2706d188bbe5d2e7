//! A single-node Slurm for the end-to-end tests, started and stopped by the tests
//! themselves: munged, `slurmctld` and `slurmd` (Debian's Slurm 22.05 and MUNGE), with
//! everything — keys, sockets, state, spool, logs, the PMIx directories — in one
//! temporary directory under `/var/tmp`, their own ports, and the node `localhost` on
//! 127.0.0.1 with 2 CPUs (see `../shared/FACTS.md`).
//!
//! - The directory is under `/var/tmp`, not `/tmp`: like a real node's
//!   `/var/spool/slurmd`, the PMIx server directory Slurm points its ranks at
//!   (`PMIX_SERVER_TMPDIR`, in `SlurmdSpoolDir`) is then outside what a bundle binds
//!   anyway, so `srun --mpi=pmix` exercises the runtime's automatic binding of it.
//! - The PMIx client directory (`PMIxCliTmpDirBase` in `mpi.conf`) is in a folder under
//!   `/tmp`, where Slurm puts it by default (`TmpFS`), unless asked otherwise
//!   ([`Slurm::start_with`]): ranks learn it from the PMIx server, not from their
//!   environment.
//! - [`Slurm::start_two_nodes`]: two nodes, `n1` and `n2`, each `slurmd` in a network
//!   namespace of its own (joined by a veth pair on [`NODES_NET`]), with its own host
//!   name and node-local directory; slurmctld in `n1`'s network namespace, munged on the
//!   host (its socket reached through the file system). The namespaces are removed on
//!   drop, and those of dead test processes at the next start.
//! - One Slurm per test binary: [`Slurm::shared`] starts it on first use and stops it
//!   when the process exits (an `atexit` handler: also after failed tests). The daemons
//!   run in the foreground as our children, so stopping them is exact: `scontrol
//!   shutdown`, a wait, then SIGKILL for what is left.
//! - Every daemon carries `BUNDLE_E2E_SLURM_OWNER=<pid of the test process>:<folder>`
//!   in its environment, and every Slurm command, job and task `SLURM_CONF=<folder>/…`;
//!   `slurmstepd`s (whose environment slurmd cleans) are known by the log file in the
//!   folder they hold open. What a test process that died without cleaning up (SIGKILL)
//!   left running is killed by the next start.

use crate::*;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Tags the fixture's daemons with the pid of the test process that started them.
pub const OWNER_VAR: &str = "BUNDLE_E2E_SLURM_OWNER";
/// How long the daemons may take to start, and the node to become idle.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long they may take to stop before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

const SETUP: &str = "Slurm and MUNGE are missing: install slurm-wlm (slurmctld, slurmd, slurm-client) and munge \
                     (./scripts/test does)";

/// A running single-node Slurm. Stopped on drop.
pub struct Slurm {
    dir: Option<TestDir>,
    /// The value of [`OWNER_VAR`] for this Slurm's daemons.
    owner: String,
    /// The PMIx client folder's parent, when it is not in `dir`.
    pmix_dir: Option<TestDir>,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
    /// The nodes of a multi-node Slurm ([`Slurm::start_two_nodes`]); empty for the
    /// single-node one on 127.0.0.1.
    nodes: Vec<Node>,
    /// The veth pair's name (without its `a`/`b` end), to delete on drop should it be
    /// left on the host by a set-up that failed half-way.
    veth: Option<String>,
}

/// A node of the two-node Slurm: a network namespace of its own (`ip netns add`), in
/// which its `slurmd` runs with its own host name (a UTS namespace) and its own
/// node-local directory ([`Slurm::local_dir`], a bind mount in a mount namespace of the
/// `slurmd`, which its jobs inherit).
#[derive(Debug, Clone)]
pub struct Node {
    /// The node name, which is also its host name: `n1`, `n2`.
    pub name: String,
    /// The network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// Its address on the veth pair joining the nodes.
    pub addr: String,
}

impl Node {
    /// `/run/netns/<netns>`, the namespace's file.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

/// The network of the two-node Slurm: a veth pair between the nodes' namespaces.
/// The addresses exist only inside those namespaces (every cluster has its own pair).
pub const NODES_NET: &str = "10.199.2.0/24";
const NODE_ADDRS: [&str; 2] = ["10.199.2.1", "10.199.2.2"];
/// Ports of the two-node Slurm (inside its namespaces, so they cannot collide).
const NODES_PORTS: (u16, u16) = (6817, 6818);

impl Slurm {
    /// Starts munged, slurmctld and slurmd, and waits until the node is idle. Needs root.
    pub fn start() -> Slurm {
        Slurm::start_with(true)
    }

    /// [`Slurm::start`], with `PMIxCliTmpDirBase` under `/tmp` (`pmix_in_tmp`) or in the
    /// fixture's folder under `/var/tmp`.
    pub fn start_with(pmix_in_tmp: bool) -> Slurm {
        Slurm::start_cluster(pmix_in_tmp, false)
    }

    /// A Slurm of two nodes, `n1` and `n2`, each `slurmd` in its own network namespace
    /// (and UTS and mount namespace), joined by a veth pair on [`NODES_NET`];
    /// `slurmctld` runs in `n1`'s network namespace (n1 is also the login node: Slurm
    /// commands of [`Slurm::cmd`] run there); munged on the host, its socket shared
    /// through the file system. Everything is stopped and removed on drop. Needs root.
    pub fn start_two_nodes() -> Slurm {
        Slurm::start_cluster(false, true)
    }

    fn start_cluster(pmix_in_tmp: bool, two_nodes: bool) -> Slurm {
        assert!(is_root(), "the Slurm fixture runs slurmd, which must be root");
        for tool in
            ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/srun", "/usr/bin/scontrol"]
        {
            assert!(Path::new(tool).exists(), "{tool}: {SETUP}");
        }
        kill_orphaned_daemons();
        let dir = TestDir::new_in(Path::new("/var/tmp"), "slurm");
        let d = dir.path().to_path_buf();
        let pmix_dir = pmix_in_tmp.then(|| TestDir::new("slurm-pmix"));
        let pmix = pmix_dir.as_ref().map_or_else(|| d.join("pmix"), |p| p.join("pmix"));
        let owner = format!("{}:{}", std::process::id(), d.display());
        let mut slurm = Slurm {
            conf: d.join("slurm.conf"),
            dir: Some(dir),
            owner,
            pmix_dir,
            daemons: Vec::new(),
            nodes: Vec::new(),
            veth: None,
        };
        if two_nodes {
            slurm.make_nodes();
        }

        // MUNGE: its own key, socket, pid and seed, run as the munge user. Clients
        // (every Slurm command, run as any user) must reach the socket: folder 0755.
        let (munge_uid, munge_gid) = user_ids("munge").unwrap_or_else(|| panic!("no user munge: {SETUP}"));
        let m = d.join("munge");
        fs::create_dir(&m).expect("create the munge folder");
        fs::write(m.join("munge.key"), random_bytes(1024)).expect("write the munge key");
        fs::set_permissions(m.join("munge.key"), fs::Permissions::from_mode(0o600)).expect("chmod key");
        for p in [&m, &m.join("munge.key")] {
            std::os::unix::fs::lchown(p, Some(munge_uid), Some(munge_gid)).expect("chown to munge");
        }
        fs::set_permissions(&m, fs::Permissions::from_mode(0o755)).expect("chmod munge folder");
        let socket = m.join("munge.socket");
        let mut munged = Command::new("/usr/sbin/munged");
        munged
            .arg("--foreground")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--key-file={}", m.join("munge.key").display()))
            .arg(format!("--pid-file={}", m.join("munged.pid").display()))
            .arg(format!("--log-file={}", m.join("munged.log").display()))
            .arg(format!("--seed-file={}", m.join("munged.seed").display()))
            .uid(munge_uid)
            .gid(munge_gid);
        slurm.spawn("munged", munged, &m.join("munged.out"));
        slurm.wait_until("the munge socket exists", |_| socket.exists());

        // Slurm.
        for sub in ["state", "spool", "log"] {
            fs::create_dir(d.join(sub)).expect("create a Slurm folder");
        }
        if slurm.nodes.is_empty() {
            fs::create_dir(&pmix).expect("create the PMIx client folder");
            fs::set_permissions(&pmix, fs::Permissions::from_mode(0o755)).expect("chmod pmix");
            let (ctld_port, slurmd_port) = (free_port(), free_port());
            let nodes = "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n\
                         PartitionName=e2e Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES\n";
            let ctld = format!("{}(127.0.0.1)", host_name());
            fs::write(&slurm.conf, slurm_conf(&d, &socket, &ctld, (ctld_port, slurmd_port), "spool", nodes))
                .expect("write slurm.conf");
            fs::write(d.join("mpi.conf"), format!("PMIxCliTmpDirBase={}\n", pmix.display())).expect("mpi.conf");
        } else {
            slurm.write_nodes_conf(&socket);
        }
        fs::write(d.join("plugstack.conf"), "").expect("write plugstack.conf");
        let mut ctld = slurm.in_ctld_netns("/usr/sbin/slurmctld");
        ctld.args(["-D", "-i"]);
        slurm.spawn("slurmctld", ctld, &d.join("log/slurmctld.out"));
        if slurm.nodes.is_empty() {
            let mut slurmd = Command::new("/usr/sbin/slurmd");
            slurmd.args(["-D", "-N", "localhost"]);
            slurm.spawn("slurmd", slurmd, &d.join("log/slurmd.out"));
        } else {
            for node in slurm.nodes.clone() {
                let local = d.join(format!("local-{}", node.name));
                // nsenter, not `ip netns exec`: that one remounts /sys, which hides
                // /sys/fs/cgroup from slurmd.
                let mut slurmd = Command::new("nsenter");
                slurmd
                    .arg(format!("--net={}", node.netns_path().display()))
                    .args(["--", "unshare", "--uts", "--mount", "--propagation", "private", "--", "sh", "-ec"])
                    .arg(r#"hostname "$0"; mount --bind "$1" "$2"; exec /usr/sbin/slurmd -D -N "$0""#)
                    .arg(&node.name)
                    .arg(&local)
                    .arg(slurm.local_dir());
                slurm.spawn("slurmd", slurmd, &d.join(format!("log/slurmd-{}.out", node.name)));
            }
        }
        let want = slurm.nodes.len().max(1);
        slurm.wait_until("the nodes are idle", |slurm| {
            let out = run(slurm.root_cmd("sinfo").args(["-h", "-N", "-o", "%t"]));
            let states = out.lines();
            out.status.success() && states.len() == want && states.iter().all(|s| s.trim() == "idle")
        });
        slurm
    }

    /// The Slurm of this test binary, started on first use, stopped at exit.
    pub fn shared() -> &'static Slurm {
        static S: OnceLock<Mutex<Option<Slurm>>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(m) = S.get() {
                let taken = match m.lock() {
                    Ok(mut g) => g.take(),
                    Err(poisoned) => poisoned.into_inner().take(),
                };
                drop(taken);
            }
        }
        let m = S.get_or_init(|| {
            let s = Slurm::start();
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(stop_shared) };
            Mutex::new(Some(s))
        });
        let guard = m.lock().unwrap_or_else(|p| p.into_inner());
        let s: *const Slurm = guard.as_ref().expect("the shared Slurm is stopped");
        // SAFETY: the Slurm lives in a static until the atexit handler takes it, after
        // every test has finished.
        unsafe { &*s }
    }

    /// The folder holding everything of this Slurm.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("running").path()
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A Slurm command (`srun`, `sbatch`, `squeue`, `scancel` …) run as the test user
    /// for test `t` (its environment, which srun and sbatch pass on to the job), with
    /// this Slurm's `SLURM_CONF`; on the two-node Slurm, in `n1`'s network namespace.
    pub fn cmd(&self, t: &Test, program: &str) -> Command {
        let mut c = match self.nodes.first() {
            Some(n1) => t.cmd_in_netns(&n1.netns_path(), program),
            None => t.cmd(program),
        };
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// A Slurm command run as root (for the fixture itself).
    pub fn root_cmd(&self, program: &str) -> Command {
        let mut c = self.in_ctld_netns(program);
        c.env("SLURM_CONF", &self.conf).env(OWNER_VAR, &self.owner);
        c
    }

    /// `program`, run as root where slurmctld listens: here, or in `n1`'s network
    /// namespace.
    fn in_ctld_netns(&self, program: &str) -> Command {
        match self.nodes.first() {
            Some(n1) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", n1.netns_path().display())).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// The nodes of the two-node Slurm (empty for the single-node one).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node-local directory of the two-node Slurm: the same path on every node, a
    /// different directory on each (mode 1777, as a node's `/tmp` or local scratch), for
    /// `sbcast`. What node `name` holds there is, from the host,
    /// [`Slurm::local_dir_of`].
    pub fn local_dir(&self) -> PathBuf {
        self.dir().join("local")
    }

    /// The host's view of node `name`'s [`Slurm::local_dir`].
    pub fn local_dir_of(&self, name: &str) -> PathBuf {
        self.dir().join(format!("local-{name}"))
    }

    /// Makes the two nodes' network namespaces, joined by a veth pair, and their
    /// node-local directories.
    fn make_nodes(&mut self) {
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        for (i, addr) in NODE_ADDRS.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let netns = format!("bundle-e2e-{pid}-{n}-slurm-{name}");
            sh(&format!("ip netns add {netns}"));
            // Pushed at once, so that drop removes it even if what follows fails.
            self.nodes.push(Node { name, netns, addr: addr.to_string() });
        }
        // Interface names have at most 15 bytes.
        let veth = format!("bs{}x{}", pid % 100_000, n % 100);
        self.veth = Some(veth.clone());
        let (n1, n2) = (&self.nodes[0], &self.nodes[1]);
        sh(&format!(
            "ip link add {veth}a type veth peer name {veth}b
             ip link set {veth}a netns {ns1}
             ip link set {veth}b netns {ns2}
             ip -n {ns1} link set lo up; ip -n {ns1} addr add {a1}/24 dev {veth}a; ip -n {ns1} link set {veth}a up
             ip -n {ns2} link set lo up; ip -n {ns2} addr add {a2}/24 dev {veth}b; ip -n {ns2} link set {veth}b up",
            ns1 = n1.netns,
            ns2 = n2.netns,
            a1 = n1.addr,
            a2 = n2.addr,
        ));
        let d = self.dir().to_path_buf();
        fs::create_dir(d.join("local")).expect("create the node-local mount point");
        for node in &self.nodes {
            let local = d.join(format!("local-{}", node.name));
            fs::create_dir(&local).expect("create a node-local directory");
            fs::set_permissions(&local, fs::Permissions::from_mode(0o1777)).expect("chmod node-local");
            // The PMIx client folder is node-local, as /tmp is on a real node: the
            // step daemons of both nodes make the same names in it.
            fs::create_dir(local.join("pmix")).expect("create the PMIx client folder");
            fs::set_permissions(local.join("pmix"), fs::Permissions::from_mode(0o755)).expect("chmod pmix");
        }
    }

    fn write_nodes_conf(&self, munge_socket: &Path) {
        let d = self.dir();
        let mut nodes = String::new();
        for node in &self.nodes {
            nodes += &format!("NodeName={} NodeAddr={} CPUs=2 State=UNKNOWN\n", node.name, node.addr);
            fs::create_dir(d.join("spool").join(&node.name)).expect("create a node's spool folder");
        }
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        nodes += &format!(
            "PartitionName=e2e Nodes={} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES\n",
            names.join(",")
        );
        let ctld = format!("{}({})", host_name(), self.nodes[0].addr);
        fs::write(&self.conf, slurm_conf(d, munge_socket, &ctld, NODES_PORTS, "spool/%n", &nodes))
            .expect("write slurm.conf");
        let pmix = self.local_dir().join("pmix");
        fs::write(d.join("mpi.conf"), format!("PMIxCliTmpDirBase={}\n", pmix.display())).expect("mpi.conf");
    }

    /// The job id of the (only) job of the test user named `name`, once it is running.
    pub fn wait_for_running_job(&self, name: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = run(self.root_cmd("squeue").args(["-h", "-t", "R", "-n", name, "-o", "%i"]));
            let id = out.stdout().trim().to_string();
            if out.status.success() && !id.is_empty() {
                return id;
            }
            assert!(Instant::now() < deadline, "job {name} is not running within {timeout:?}\n{out}\n{}", self.logs());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tail of the daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let mut files = vec!["log/slurmctld.log".to_string(), "munge/munged.log".into()];
        if self.nodes.is_empty() {
            files.insert(1, "log/slurmd.log".into());
        }
        files.extend(self.nodes.iter().map(|n| format!("log/slurmd.{}.log", n.name)));
        for f in &files {
            let text = fs::read_to_string(self.dir().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("--- {f} (last lines)\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n"));
        }
        s
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command, out: &Path) {
        let log = fs::File::create(out).expect("create a daemon's output file");
        cmd.env("SLURM_CONF", &self.conf)
            .env(OWNER_VAR, &self.owner)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}: {SETUP}"));
        self.daemons.push((name, child));
    }

    #[track_caller]
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Slurm) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready(self) {
            let exited = self
                .daemons
                .iter_mut()
                .find_map(|(name, child)| child.try_wait().ok().flatten().map(|status| (*name, status)));
            if let Some((name, status)) = exited {
                let logs = self.logs_or_outputs();
                panic!("{name} exited ({}) while waiting until {what}\n{logs}", describe_status(status));
            }
            if Instant::now() >= deadline {
                let logs = self.logs_or_outputs();
                panic!("not ready within {START_TIMEOUT:?}: {what}\n{logs}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs_or_outputs(&self) -> String {
        let mut s = self.logs();
        let mut files = vec!["munge/munged.out".to_string(), "log/slurmctld.out".into(), "log/slurmd.out".into()];
        files.extend(self.nodes.iter().map(|n| format!("log/slurmd-{}.out", n.name)));
        for f in &files {
            s += &format!("--- {f}\n{}\n", fs::read_to_string(self.dir().join(f)).unwrap_or_default());
        }
        s
    }

    /// `scontrol shutdown`, then waits for the daemons, killing what does not stop.
    fn stop(&mut self) {
        self.stop_daemons();
        for node in self.nodes.drain(..) {
            // The veth pair goes with the namespaces.
            let _ = Command::new("ip").args(["netns", "del", &node.netns]).stderr(Stdio::null()).status();
        }
        if let Some(veth) = self.veth.take() {
            // Normally gone with the namespaces already.
            let _ = Command::new("ip").args(["link", "del", &format!("{veth}a")]).stderr(Stdio::null()).status();
        }
    }

    fn stop_daemons(&mut self) {
        if self.daemons.is_empty() {
            return;
        }
        let _ = self
            .in_ctld_netns("scontrol")
            .arg("shutdown")
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        for (name, child) in &mut self.daemons {
            // munged does not hear `scontrol shutdown`.
            if *name == "munged" {
                // SAFETY: kill of our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
        }
        for (_, child) in &mut self.daemons {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.daemons.clear();
        // Whatever is left: jobs' processes and slurmstepds that outlived the daemons.
        kill_tagged(OWNER_VAR, &self.owner);
        kill_tagged("SLURM_CONF", &self.conf.to_string_lossy());
        let dir = self.dir().to_string_lossy().into_owned();
        for (pid, _) in slurm_processes_holding(&|path| path.starts_with(&dir)) {
            // SAFETY: kill by pid of a step daemon of this fixture.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        self.stop();
        drop(self.dir.take());
        drop(self.pmix_dir.take());
    }
}

/// The slurm.conf of a single-node cluster living in `d`.
/// The slurm.conf of a cluster living in `d`: `ctld` is `SlurmctldHost`, `spool`
/// `SlurmdSpoolDir` in `d` (`%n`: per node), `nodes` the node and partition lines.
fn slurm_conf(d: &Path, munge_socket: &Path, ctld: &str, ports: (u16, u16), spool: &str, nodes: &str) -> String {
    let (ctld_port, slurmd_port) = ports;
    let p = |s: &str| d.join(s).display().to_string();
    format!(
        "# Made by tests/common/slurm.rs: a cluster in {dir}
ClusterName=bundle-e2e
SlurmctldHost={ctld}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket}
CredType=cred/munge
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={ctld_pid}
SlurmdPidFile={slurmd_pid}
SlurmctldLogFile={ctld_log}
SlurmdLogFile={slurmd_log}
PlugStackConfig={plugstack}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=5
MailProg=/bin/true
{nodes}",
        dir = d.display(),
        socket = munge_socket.display(),
        state = p("state"),
        spool = p(spool),
        ctld_pid = p("slurmctld.pid"),
        slurmd_pid = p(if spool.contains("%n") { "slurmd.%n.pid" } else { "slurmd.pid" }),
        ctld_log = p("log/slurmctld.log"),
        slurmd_log = p(if spool.contains("%n") { "log/slurmd.%n.log" } else { "log/slurmd.log" }),
        plugstack = p("plugstack.conf"),
    )
}

/// This machine's host name (slurmctld must find itself in `SlurmctldHost`).
fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// Runs a root shell script of the fixture's set-up, panicking with its output.
#[track_caller]
fn sh(script: &str) {
    let out = run(Command::new("sh").args(["-ec", script]));
    assert!(out.status.success(), "setting up the Slurm nodes failed\n{out}");
}

/// uid and gid of a user from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    fs::read_to_string("/etc/passwd").ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf
}

/// A TCP port on 127.0.0.1 that nobody listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// Kills (SIGKILL) the processes whose environment has `var=value`.
fn kill_tagged(var: &str, value: &str) {
    for (pid, _) in processes_with_env(&|k, v| k == var && v == value) {
        // SAFETY: kill by pid of a process of our fixture.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Daemons (and `slurmstepd`s) of fixtures whose test process no longer exists.
fn kill_orphaned_daemons() {
    let dead = |test_pid: &str| !test_pid.parse::<u32>().is_ok_and(|o| Path::new(&format!("/proc/{o}")).exists());
    // Folders of fixtures are /var/tmp/bundle-e2e-<test pid>-<n>-slurm.
    let dead_folder = |path: &str| {
        path.strip_prefix("/var/tmp/bundle-e2e-")
            .and_then(|rest| rest.split('-').next())
            .is_some_and(|test_pid| path.contains("-slurm/") && dead(test_pid))
    };
    let mut orphans: Vec<i32> = processes_with_env(&|k, v| {
        (k == OWNER_VAR && dead(v.split(':').next().unwrap_or(""))) || (k == "SLURM_CONF" && dead_folder(v))
    })
    .into_iter()
    .map(|(pid, _)| pid)
    .collect();
    orphans.extend(slurm_processes_holding(&dead_folder).into_iter().map(|(pid, _)| pid));
    for pid in orphans {
        // SAFETY: kill by pid of a daemon of a dead test process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // Network namespaces of two-node fixtures: bundle-e2e-<test pid>-<n>-slurm-<node>.
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name.strip_prefix("bundle-e2e-").and_then(|rest| rest.split('-').next());
        if name.contains("-slurm-") && owner.is_some_and(dead) {
            let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        }
    }
}

/// Live Slurm and MUNGE processes (by name) with an open file whose path `matches`.
fn slurm_processes_holding(matches: &dyn Fn(&str) -> bool) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !(comm.starts_with("slurm") || comm.starts_with("munged")) {
            continue;
        }
        let holds = fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|target| matches(&target.to_string_lossy()));
        if holds {
            found.push((pid, comm.trim().to_string()));
        }
    }
    found
}

/// (pid, value) of live processes with a variable that `matches` (name, value).
fn processes_with_env(matches: &dyn Fn(&str, &str) -> bool) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(env) = fs::read(e.path().join("environ")) else { continue };
        for var in env.split(|&b| b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some((k, v)) = var.split_once('=') {
                if matches(k, v) {
                    found.push((pid, v.to_string()));
                    break;
                }
            }
        }
    }
    found
}

/// Writes `text` to `path` as an executable script owned by the test user.
pub fn write_script(path: &Path, text: &str) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("write the script");
    drop(f);
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod the script");
    chown_to_user(path);
}
