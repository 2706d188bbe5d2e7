#!/usr/bin/python3
"""The benchmark harness of `bundle` (run it through bench/run; see docs/performance.md).

Every row runs our runtime and its anchors in the same invocation, alternating run by
run after a warm-up, and reports medians with p10/p90 and ratios:

  stub   size of the runtime stub and whether it is static
  start  start-up of a bundle whose entrypoint is a static `true`, against the program
         bare, unshare, bwrap, ch-run (directory and squashfs), in every mode of ours
  build  `bundle build` against mksquashfs and gensquashfs on one ~200 MB tree
  read   a metadata walk and a full read of that tree, cold and warm page cache: host
         directory, kernel squashfs on a loop device, squashfuse_ll, our modes
  mpi    ping-pong latency and bandwidth and allreduce with 2 ranks, bare and bundled;
         the wall time of starting 64 ranks, with the memory of our keeper and FUSE server
  scale  start-up (fuse, extract with a filled cache, kernel, ch-run) and the keeper's and
         FUSE server's peak memory with images of 2,000 / 20,000 / 200,000 small files,
         and a cold walk and read of the largest against kernel squashfs and squashfuse_ll

Results: tables on standard output, bench/results/results[-quick].json (every sample)
and bench/results/plot[-quick].png.
"""

import argparse
import datetime
import json
import os
import platform
import pwd
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USER = "bundletest"
MIB = 1 << 20


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    return float(Path("/proc/loadavg").read_text().split()[0])


def busy_cores(seconds=5.0):
    """CPU time used by everything on the machine over `seconds`, in cores. Unlike the load
    average it does not count processes blocked in D state (a hung mount elsewhere)."""
    def sample():
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(f), f[3] + f[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return (1 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)


def stats(xs):
    """median, p10, p90 of a list of numbers (None for an empty list)."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return {"median": xs[0], "p10": xs[0], "p90": xs[0], "n": 1}
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return {"median": statistics.median(xs), "p10": q[0], "p90": q[8], "n": len(xs)}


def med(d):
    return d["median"] if d else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def fmt(x, spec=".3g"):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return format(x, spec)


def table(title, header, rows):
    """Prints a plain-text table."""
    cols = [header] + [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    print(f"\n== {title}")
    for j, r in enumerate(cols):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


class Failed(Exception):
    pass


class Sampler:
    """Watches /proc every 2 ms (in a thread) for processes whose argv[0] is `path`: the
    FUSE servers (a process with threads named fuser-N), their keepers (a server's
    parent), and the peak VmHWM of each."""

    def __init__(self, path):
        import threading
        self.path = path.encode()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.other = set()  # pids known not to be ours
        self.procs = {}  # pid -> {"ppids", "hwm_kb", "server"}

    def start(self):
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join()

    def look(self, pid):
        try:
            if pid not in self.procs:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] != self.path:
                    self.other.add(pid)
                    return
                self.procs[pid] = {"ppids": set(), "hwm_kb": 0, "server": False}
            p = self.procs[pid]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("PPid:"):
                    p["ppids"].add(int(line.split()[1]))  # all of them: a dying server is re-parented
                elif line.startswith("VmHWM:"):
                    p["hwm_kb"] = max(p["hwm_kb"], int(line.split()[1]))
            if not p["server"]:
                for t in os.listdir(f"/proc/{pid}/task"):
                    if Path(f"/proc/{pid}/task/{t}/comm").read_text().startswith("fuser"):
                        p["server"] = True
                        break
        except (OSError, ValueError):
            pass

    def run(self):
        while not self.done.is_set():
            for d in os.listdir("/proc"):
                if d.isdigit() and int(d) not in self.other:
                    self.look(int(d))
            time.sleep(0.002)

    def summary(self):
        servers = {pid: p for pid, p in self.procs.items() if p["server"]}
        keepers = {pp: self.procs[pp] for p in servers.values() for pp in p["ppids"] if pp in self.procs}
        return {"servers": len(servers), "keepers": len(keepers),
                "server_hwm_kb": max((p["hwm_kb"] for p in servers.values()), default=None),
                "keeper_hwm_kb": max((p["hwm_kb"] for p in keepers.values()), default=None),
                "stub_processes_seen": len(self.procs)}


class AnchorMounts:
    """The anchors' mounts of a bundle's image, at its offset: kernel squashfs on a
    read-only loop device, and squashfuse_ll. Both are undone at exit, whatever happens."""

    def __init__(self, bench, sif, off, isize, d):
        self.b, self.sif, self.off, self.isize = bench, sif, off, isize
        self.loop_mnt, self.sqfuse_mnt = bench.mkdir(d / "loop"), bench.mkdir(d / "squashfuse")
        self.loop = None
        self.sqfuse = None
        bench.at_exit("loop mount", self.loop_umount)
        bench.at_exit("squashfuse_ll mount", self.sqfuse_umount)

    def loop_mount(self):
        b = self.b
        self.loop = b.sh(["losetup", "-r", "-o", str(self.off), "--sizelimit", str(self.isize), "--show", "-f",
                          self.sif]).stdout.strip()
        b.sh(["mount", "-t", "squashfs", "-o", "ro", self.loop, self.loop_mnt])

    def loop_umount(self):
        b = self.b
        if os.path.ismount(self.loop_mnt):
            if b.sh(["umount", self.loop_mnt], check=False).returncode != 0:
                b.sh(["umount", "-l", self.loop_mnt], check=False)
        if self.loop:
            b.sh(["losetup", "-d", self.loop], check=False)
            self.loop = None

    def sqfuse_mount(self):
        p = subprocess.Popen(["squashfuse_ll", "-f", "-o", f"offset={self.off},allow_other", str(self.sif),
                              str(self.sqfuse_mnt)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.sqfuse = p
        end = time.time() + 10
        while not os.path.ismount(self.sqfuse_mnt):
            if p.poll() is not None or time.time() > end:
                raise Failed(f"squashfuse_ll did not mount: {p.stderr.read() if p.stderr else ''}")
            time.sleep(0.002)

    def sqfuse_umount(self):
        b = self.b
        if os.path.ismount(self.sqfuse_mnt):
            if b.sh(["umount", self.sqfuse_mnt], check=False).returncode != 0:
                b.sh(["umount", "-l", self.sqfuse_mnt], check=False)  # busy (interrupted): detach
        p = self.sqfuse
        if p:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.sqfuse = None


class Bench:
    def __init__(self, args):
        self.a = args
        self.quick = args.quick
        self.repo = Path(args.repo).resolve()
        self.cleanups = []  # (what, fn), run last-in first-out
        self.results = {"rows": {}, "errors": {}}
        self.pw = pwd.getpwnam(USER)
        self.uid, self.gid = self.pw.pw_uid, self.pw.pw_gid

    # ---- housekeeping --------------------------------------------------------------

    def at_exit(self, what, fn):
        self.cleanups.append((what, fn))

    def cleanup(self):
        t0 = time.time()
        while self.cleanups:
            what, fn = self.cleanups.pop()
            t = time.time()
            try:
                fn()
            except Exception as e:  # keep cleaning up
                log(f"cleanup of {what} failed: {e}")
            if time.time() - t > 2:
                log(f"cleanup of {what} took {time.time() - t:.0f} s")
        log(f"cleaned up in {time.time() - t0:.1f} s")

    def sh(self, cmd, user=False, env=None, timeout=600, check=True, cwd="/", capture=True, **kw):
        """Runs a command (as bundletest with user=True); returns the CompletedProcess."""
        cmd = [str(c) for c in cmd]
        if env is None:
            env = self.user_env() if user else self.root_env()
        ids = {"user": self.uid, "group": self.gid, "extra_groups": []} if user else {}
        p = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, text=True,
                           stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.PIPE if capture else None, **ids, **kw)
        if check and p.returncode != 0:
            err = (p.stderr or "").strip().splitlines()[-5:] if capture else []
            raise Failed(f"{' '.join(cmd[:6])} exited {p.returncode}: {' | '.join(err)}")
        return p

    def user_env(self, extra=None):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": self.pw.pw_dir, "USER": USER,
               "LOGNAME": USER, "LANG": "C.UTF-8"}
        env.update(extra or {})
        return env

    def root_env(self, extra=None):
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8"}
        env.update(extra or {})
        return env

    def mkdir(self, p, user=False):
        p = Path(p)
        p.mkdir(parents=True, exist_ok=True)
        os.chmod(p, 0o755)
        if user:
            os.chown(p, self.uid, self.gid)
        return p

    def drop_caches(self):
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")

    def our_processes(self):
        """Processes running one of our bundles (keepers, FUSE servers, ranks that have
        not exec'd yet): argv[0] is a .sif file under our work directory."""
        out = []
        prefix = str(self.work) + "/"
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                argv0 = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if argv0.startswith(prefix) and argv0.endswith(".sif"):
                out.append(int(d))
        return out

    def kill_keepers(self):
        """Keepers ignore SIGTERM (it is meant for the application): SIGKILL, by pid. The
        FUSE server dies with its keeper; the namespaces and mounts go with them."""
        for _ in range(50):
            pids = self.our_processes()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def wait_keepers_gone(self, timeout):
        end = time.time() + timeout
        while self.our_processes() and time.time() < end:
            time.sleep(0.1)
        self.kill_keepers()

    # ---- set-up --------------------------------------------------------------------

    def setup(self):
        self.work = Path(tempfile.mkdtemp(prefix="bundle-bench.", dir="/var/tmp"))
        os.chmod(self.work, 0o755)
        if not self.a.keep:
            self.at_exit("work directory", lambda: shutil.rmtree(self.work, ignore_errors=True))
        else:
            log(f"keeping {self.work}")
        self.at_exit("bundle processes", self.kill_keepers)
        # /dev/fuse: 0666 for the run (fuse mode as an ordinary user), restored after.
        mode = os.stat("/dev/fuse").st_mode & 0o7777
        if mode != 0o666:
            os.chmod("/dev/fuse", 0o666)
            self.at_exit("/dev/fuse mode", lambda: os.chmod("/dev/fuse", mode))
        self.results["meta"] = {"dev_fuse_mode_before": oct(mode)}
        self.bin = self.mkdir(self.work / "bin")

    def wait_for_quiet(self):
        """Waits (up to --max-wait) until the 1-minute load average, or the CPU time
        actually used (a process stuck in D state raises the load without using a core),
        is below --max-load."""
        if self.quick or self.a.max_wait <= 0:
            return
        start = time.time()
        while time.time() - start < self.a.max_wait:
            load, busy = loadavg(), busy_cores()
            if load < self.a.max_load or busy < self.a.max_load:
                break
            log(f"load {load:.2f}, {busy:.2f} cores busy (>= {self.a.max_load}): waiting "
                f"({int(time.time() - start)} s of {self.a.max_wait})")
            time.sleep(15)
        self.results["meta"]["waited_for_load_s"] = round(time.time() - start)
        self.results["meta"]["busy_cores_at_start"] = round(busy_cores(), 2)
        self.results["meta"]["d_state_processes_at_start"] = [
            l for l in subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout.splitlines()
            if l.strip().startswith("D")]

    def build_binaries(self):
        bundle = self.repo / "target/release/bundle"
        stub = self.repo / "target/x86_64-unknown-linux-musl/stub/bundle-runtime"
        if not self.a.no_build:
            log("cargo build (bundle, stub)")
            env = dict(os.environ)
            self.sh(["cargo", "build", "--release", "-p", "bundler"], cwd=self.repo, env=env, timeout=3600)
            self.sh(["cargo", "build", "--profile", "stub", "--target", "x86_64-unknown-linux-musl", "-p",
                     "runtime-stub"], cwd=self.repo, env=env, timeout=3600)
        self.bundle = Path(self.a.bundle) if self.a.bundle else bundle
        self.stub = Path(self.a.stub) if self.a.stub else stub
        for p in (self.bundle, self.stub):
            if not p.exists():
                raise Failed(f"{p} is missing (build it, or give --bundle/--stub)")
        src = self.repo / "bench/src"
        log("compiling the bench programs")
        self.sh(["gcc", "-static", "-O2", "-o", self.bin / "true", src / "true.c"])
        self.sh(["gcc", "-nostdlib", "-static", "-Os", "-o", self.bin / "tiny", src / "tiny.c"])
        self.sh(["gcc", "-static", "-O2", "-o", self.bin / "reader", src / "reader.c"])
        self.sh(["gcc", "-O2", "-o", self.bin / "runner", src / "runner.c"])
        self.sh(["mpicc", "-O2", "-o", self.bin / "mpibench", src / "mpibench.c"])

    def build_bundle(self, out, *args):
        self.sh([self.bundle, "build", *args, "--stub", self.stub, "-o", out], timeout=1800)
        os.chmod(out, 0o755)
        return out

    @staticmethod
    def trailer(sif):
        with open(sif, "rb") as f:
            f.seek(-128, 2)
            t = f.read(128)
        if t[:8] != b"BUNDLE\0\x01":
            raise Failed(f"{sif}: no bundle trailer")
        offset, size = struct.unpack_from("<QQ", t, 16)
        return offset, size

    @staticmethod
    def unchecked_copy(sif, out):
        """The same bundle without the per-block check (issue 10): its copy with version 1
        in the trailer, which a version-1 reader (and the runtime, for such a file) takes
        as it is, ignoring the chunk table. Stub, image and metadata are the same bytes."""
        b = bytearray(Path(sif).read_bytes())
        at = len(b) - 128 + 8
        if struct.unpack_from("<I", b, at)[0] < 2:
            raise Failed(f"{sif}: a version-1 bundle already")
        b[at:at + 4] = struct.pack("<I", 1)
        Path(out).write_bytes(b)
        os.chmod(out, 0o755)
        return out

    def meta(self):
        def first_line(cmd):
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, env=self.root_env())
                return ((p.stdout or p.stderr).strip().splitlines() or [""])[0]
            except Exception as e:
                return f"? ({e})"

        rev = first_line(["git", "-C", str(self.repo), "describe", "--always", "--dirty"])
        m = self.results["meta"]
        m.update({
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "quick": self.quick,
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                               if l.startswith("model name")), "?"),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "load_at_start": Path("/proc/loadavg").read_text().strip(),
            "bundle_git": rev,
            "versions": {
                "mksquashfs": first_line(["mksquashfs", "-version"]),
                "gensquashfs": first_line(["gensquashfs", "--version"]),
                "squashfuse_ll": first_line(["dpkg-query", "-W", "-f", "squashfuse ${Version}", "squashfuse"]),
                "ch-run": first_line(["dpkg-query", "-W", "-f", "charliecloud-runtime ${Version}",
                                      "charliecloud-runtime"]),
                "bwrap": first_line(["bwrap", "--version"]),
                "mpirun": first_line(["mpirun", "--version"]),
            },
        })

    # ---- rows ----------------------------------------------------------------------

    def runner(self, d, variants, rounds, warmup):
        """Runs bench/src/runner.c over `variants` [(name, as_root, extra env, argv, pre-argv)];
        returns {name: {"ms": [...], "failures": N, median, p10, p90}}."""
        errlog = d / "stderr.log"
        conf = [f"rounds {rounds}", f"warmup {warmup}"]
        for name, as_root, extra, argv, pre in variants:
            env = self.root_env(extra) if as_root else self.user_env(extra)
            conf += [f"variant {name.replace(' ', '_').replace(',', '@')}", f"uid {0 if as_root else self.uid}",
                     f"gid {0 if as_root else self.gid}", "cwd /tmp", f"log {errlog}"]
            conf += [f"env {k}={v}" for k, v in env.items()]
            conf += [f"arg {a}" for a in argv]
            conf += [f"pre {a}" for a in pre or []]
        (d / "runner.conf").write_text("\n".join(conf) + "\n")
        p = self.sh([self.bin / "runner", d / "runner.conf"], timeout=3600)
        if p.stderr.strip():
            log("runner: " + p.stderr.strip().replace("\n", "\n    "))
        self.kill_keepers()
        by = {}
        for line in p.stdout.splitlines():
            name, fails, *ts = line.split()
            by[name.replace("_", " ").replace("@", ",")] = {"failures": int(fails), "us": [float(t) for t in ts]}
        res = {}
        for name, *_ in variants:
            s = by.get(name, {"failures": rounds, "us": []})
            ms = [t / 1000 for t in s["us"]] if s["failures"] < len(s["us"]) else []
            res[name] = {"ms": ms, "failures": s["failures"], **(stats(ms) or {})}
        return res

    def row_stub(self):
        size = self.stub.stat().st_size
        seg = self.sh(["readelf", "-lW", self.stub]).stdout
        dyn = self.sh(["readelf", "-dW", self.stub], check=False).stdout
        static = "INTERP" not in seg and "NEEDED" not in dyn
        desc = self.sh(["file", "-b", self.stub]).stdout.strip()
        r = {"bytes": size, "static": static, "file": desc}
        self.results["rows"]["stub"] = r
        table("stub", ["stub", "bytes", "MiB", "static"], [[str(self.stub.name), str(size), size / MIB,
                                                            "yes" if static else "NO"]])

    def row_start(self):
        d = self.mkdir(self.work / "start")
        udir = self.mkdir(d / "user", user=True)
        root = self.mkdir(d / "root/bin")
        shutil.copy2(self.bin / "true", root / "x")
        sif = self.build_bundle(d / "x.sif", "--dir", d / "root", "-e", "/bin/x")
        # The same, with an 8 KB program: splits start-up into set-up and first read.
        self.mkdir(d / "tiny/bin")
        shutil.copy2(self.bin / "tiny", d / "tiny/bin/x")
        tiny_sif = self.build_bundle(d / "tiny.sif", "--dir", d / "tiny", "-e", "/bin/x")
        unchecked = self.unchecked_copy(sif, d / "x-unchecked.sif")
        tree = d / "dir"
        self.sh([self.bundle, "extract", sif, tree])  # the bundle's very image content
        sqfs = d / "x.sqfs"
        self.sh(["mksquashfs", tree, sqfs, "-comp", "zstd", "-Xcompression-level", "15", "-b", "131072",
                 "-noappend", "-all-root", "-quiet", "-no-progress"])
        true = self.bin / "true"
        cache1, cache2, cache3 = udir / "cache-first", udir / "cache-cached", udir / "cache-unchecked"
        cold = {"BUNDLE_SHARE": "off", "BUNDLE_LINGER": "0"}
        warm = {"BUNDLE_SHARE": f"bench-warm-{os.getpid()}", "BUNDLE_LINGER": "600"}
        V = [  # name, as root?, extra env, argv, pre-command
            ("bare", False, {}, [true], None),
            ("unshare -U -m", False, {}, ["/usr/bin/unshare", "--user", "--map-current-user", "--mount", true], None),
            ("bwrap /", False, {}, ["/usr/bin/bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", true],
             None),
            ("bwrap dir", False, {}, ["/usr/bin/bwrap", "--ro-bind", tree, "/", "--dev", "/dev", "--proc", "/proc",
                                      "/bin/x"], None),
            ("ch-run dir", False, {}, ["/usr/bin/ch-run", tree, "--", "/bin/x"], None),
            ("ch-run sqfs", False, {}, ["/usr/bin/ch-run", sqfs, "--", "/bin/x"], None),
            ("fuse cold", False, {"BUNDLE_MODE": "fuse", **cold}, [sif], None),
            ("fuse warm", False, {"BUNDLE_MODE": "fuse", **warm}, [sif], None),
            ("extract first", False, {"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": cache1, **cold}, [sif],
             ["/bin/rm", "-rf", cache1]),
            ("extract cached", False, {"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": cache2, **cold}, [sif], None),
            ("kernel cold (root)", True, {"BUNDLE_MODE": "kernel", **cold}, [sif], None),
            ("kernel warm (root)", True, {"BUNDLE_MODE": "kernel", **warm}, [sif], None),
            # diagnostics: the same with an 8 KB program instead of the 760 KB static true
            ("bare, 8 KB app", False, {}, [self.bin / "tiny"], None),
            ("fuse cold, 8 KB app", False, {"BUNDLE_MODE": "fuse", **cold}, [tiny_sif], None),
            ("kernel cold, 8 KB app (root)", True, {"BUNDLE_MODE": "kernel", **cold}, [tiny_sif], None),
            # the same bundle without the per-block check (issue 10)
            ("fuse cold, no chunk check", False, {"BUNDLE_MODE": "fuse", **cold}, [unchecked], None),
            ("extract first, no chunk check", False, {"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": cache3, **cold},
             [unchecked], ["/bin/rm", "-rf", cache3]),
        ]
        rounds, warmup = (3, 1) if self.quick else (self.a.start_rounds, 5)
        log(f"start-up: {len(V)} variants x {rounds} rounds (+{warmup} warm-up), alternating")
        res = self.runner(d, V, rounds, warmup)
        self.results["rows"]["start"] = {"rounds": rounds, "warmup": warmup, "variants": res,
                                         "load_after": loadavg()}
        bare = res["bare"].get("median")
        rows = []
        for name, *_ in V:
            r = res[name]
            m = r.get("median")
            rows.append([name, m, r.get("p10"), r.get("p90"), ratio(m, bare),
                         (m - bare) if m is not None and bare is not None else None, str(r["failures"])])
        table(f"start-up of a static `true` (ms, {rounds} alternating rounds)",
              ["variant", "median", "p10", "p90", "x bare", "+ms vs bare", "failed"], rows)
        rows = []
        for checked in ("fuse cold", "extract first"):
            a, b = res[checked].get("median"), res[f"{checked}, no chunk check"].get("median")
            rows.append([checked, a, b, (a - b) if a is not None and b is not None else None])
        table("cost of the per-block check at start-up (ms, medians; bar: <= 0.3 ms)",
              ["variant", "checked", "unchecked", "+ms"], rows)

    # -- the tree for build and read

    def make_tree(self):
        if getattr(self, "tree", None):
            return
        mb = self.a.tree_mb or (20 if self.quick else 200)
        tree = self.work / "tree"
        data = tree / "data"
        self.mkdir(tree / "bin")
        shutil.copy2(self.bin / "reader", tree / "bin/reader")
        sources = [("/usr/lib/x86_64-linux-gnu", .55), ("/usr/share/perl", .10), ("/usr/share/vim", .10),
                   ("/usr/share/i18n", .08), ("/usr/share/zoneinfo", .02), ("/usr/share/man", .15)]
        total_files = total = 0
        for src, share in sources:
            budget, used = share * mb * 1e6, 0
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames.sort()
                rel = Path(dirpath).relative_to("/")
                for f in sorted(filenames):
                    if used >= budget:
                        break
                    s, t = Path(dirpath) / f, data / rel / f
                    try:
                        st = os.lstat(s)
                        t.parent.mkdir(parents=True, exist_ok=True)
                        if os.path.islink(s):
                            os.symlink(os.readlink(s), t)
                        elif os.path.isfile(s) and st.st_size <= 16 * MIB and os.access(s, os.R_OK):
                            shutil.copy2(s, t)
                            used += st.st_size
                        else:
                            continue
                        total_files += 1
                    except OSError:
                        continue
                if used >= budget:
                    break
            total += used
        for dirpath, dirnames, _ in os.walk(data):
            for x in dirnames:
                os.chmod(Path(dirpath) / x, 0o755)
        self.tree = tree
        self.tree_info = {"bytes": int(total), "entries": total_files, "target_mb": mb}
        log(f"tree: {total / 1e6:.0f} MB in {total_files} files and links")

    def row_build(self):
        self.make_tree()
        d = self.mkdir(self.work / "build")
        self.sh([self.bin / "reader", "read", self.tree])  # warm the page cache for every tool
        outs = {"bundle build": d / "b.sif", "mksquashfs": d / "m.sqfs", "gensquashfs": d / "g.sqfs"}
        cmds = {
            "bundle build": [self.bundle, "build", "--dir", self.tree, "-e", "/bin/reader", "--no-closure",
                             "--level", "15", "--block-size", "131072", "--threads", "2", "--stub", self.stub,
                             "-o", outs["bundle build"]],
            "mksquashfs": ["mksquashfs", self.tree, outs["mksquashfs"], "-comp", "zstd", "-Xcompression-level",
                           "15", "-b", "131072", "-processors", "2", "-noappend", "-all-root", "-quiet",
                           "-no-progress"],
            "gensquashfs": ["gensquashfs", "--pack-dir", self.tree, "-c", "zstd", "-X", "level=15", "-b", "131072",
                            "-j", "2", "--all-root", "-f", "-q", outs["gensquashfs"]],
        }
        rounds = 1 if self.quick else self.a.build_rounds
        names = list(cmds)
        times = {n: [] for n in names}
        sizes = {}
        log(f"build: {len(names)} tools x {rounds} rounds, alternating")
        for r in range(rounds):
            for k in range(len(names)):
                n = names[(k + r) % len(names)]
                outs[n].unlink(missing_ok=True)
                t0 = time.perf_counter()
                self.sh(cmds[n], timeout=1800)
                times[n].append(time.perf_counter() - t0)
                size = outs[n].stat().st_size
                sizes[n] = {"file": size}
                if n == "bundle build":
                    off, isize = self.trailer(outs[n])
                    sizes[n] = {"file": size, "image": isize, "offset": off}
                else:
                    sizes[n]["image"] = size
        os.chmod(outs["bundle build"], 0o755)
        self.read_sif = outs["bundle build"]
        res = {n: {"s": times[n], **stats(times[n]), **sizes[n]} for n in names}
        self.results["rows"]["build"] = {"rounds": rounds, "tree": self.tree_info, "tools": res,
                                         "load_after": loadavg()}
        base = res["mksquashfs"]
        rows = [[n, res[n]["median"], res[n]["p10"], res[n]["p90"], res[n]["image"] / 1e6,
                 ratio(res[n]["median"], base["median"]), ratio(res[n]["image"], base["image"])] for n in names]
        table(f"build of the {self.tree_info['bytes'] / 1e6:.0f} MB tree (zstd 15, 128 KiB, 2 threads; "
              f"{rounds} rounds)", ["tool", "median s", "p10", "p90", "image MB", "x time", "x size"], rows)
        b = res["bundle build"]
        print(f"  (bundle build's whole file: {b['file'] / 1e6:.2f} MB = stub and padding "
              f"{b['offset'] / 1e6:.2f} MB + image + metadata and trailer)")

    # -- read

    def row_read(self):
        self.make_tree()
        d = self.mkdir(self.work / "read")
        udir = self.mkdir(d / "user", user=True)
        sif = getattr(self, "read_sif", None)
        if sif is None:
            sif = self.build_bundle(d / "r.sif", "--dir", self.tree, "-e", "/bin/reader", "--no-closure",
                                    "--threads", "2")
        off, isize = self.trailer(sif)
        unchecked = self.unchecked_copy(sif, d / "r-unchecked.sif")
        reader = self.bin / "reader"
        # Start-up with this large image (its tables are read at every fresh mount).
        cold_env = {"BUNDLE_SHARE": "off", "BUNDLE_LINGER": "0"}
        LV = [("bare reader", False, {}, [reader, "walk", self.tree / "bin"], None),
              ("fuse, fresh mount", False, {"BUNDLE_MODE": "fuse", **cold_env}, [sif, "walk", "/bin"], None),
              ("kernel (root), fresh mount", True, {"BUNDLE_MODE": "kernel", **cold_env}, [sif, "walk", "/bin"], None)]
        lrounds = 2 if self.quick else 20
        log(f"read: start-up with the large image, {lrounds} rounds")
        large = self.runner(self.mkdir(d / "start"), LV, lrounds, 1)
        table(f"start-up with the {self.tree_info['entries']}-entry image (ms, page cache warm, {lrounds} rounds)",
              ["variant", "median", "p10", "p90", "failed"],
              [[n, large[n].get("median"), large[n].get("p10"), large[n].get("p90"), str(large[n]["failures"])]
               for n, *_ in LV])
        am = AnchorMounts(self, sif, off, isize, d)
        loop_mnt, sqfuse_mnt = am.loop_mnt, am.sqfuse_mnt
        loop_mount, loop_umount, sqfuse_mount, sqfuse_umount = am.loop_mount, am.loop_umount, am.sqfuse_mount, \
            am.sqfuse_umount
        cache = udir / "cache"
        cold = {"BUNDLE_SHARE": "off", "BUNDLE_LINGER": "0"}
        warm = {"BUNDLE_SHARE": f"bench-read-{os.getpid()}", "BUNDLE_LINGER": "600"}
        # name: (mount, umount, argv-maker(op), as root?, env for cold, env for warm)
        S = {
            "host dir": (None, None, lambda op: [reader, op, self.tree / "data"], False, {}, {}),
            "kernel squashfs (loop)": (loop_mount, loop_umount, lambda op: [reader, op, loop_mnt / "data"], False,
                                       {}, {}),
            "squashfuse_ll": (sqfuse_mount, sqfuse_umount, lambda op: [reader, op, sqfuse_mnt / "data"], False, {},
                              {}),
            "bundle fuse": (None, None, lambda op: [sif, op, "/data"], False, {"BUNDLE_MODE": "fuse", **cold},
                            {"BUNDLE_MODE": "fuse", **warm}),
            "bundle fuse, no chunk check": (None, None, lambda op: [unchecked, op, "/data"], False,
                                            {"BUNDLE_MODE": "fuse", **cold},
                                            {"BUNDLE_MODE": "fuse", "BUNDLE_SHARE": f"bench-read-u-{os.getpid()}",
                                             "BUNDLE_LINGER": "600"}),
            "bundle extract": (None, None, lambda op: [sif, op, "/data"], False,
                               {"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": str(cache), **cold},
                               {"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": str(cache), **warm}),
            "bundle kernel (root)": (None, None, lambda op: [sif, op, "/data"], True,
                                     {"BUNDLE_MODE": "kernel", **cold}, {"BUNDLE_MODE": "kernel", **warm}),
        }
        names = list(S)

        def run_reader(name, op, env_extra):
            _, _, argv, as_root, _, _ = S[name]
            env = (self.root_env if as_root else self.user_env)(env_extra)
            p = self.sh(argv(op), user=not as_root, env=env, timeout=900, cwd="/tmp")
            line = p.stdout.strip().splitlines()[-1]
            kv = dict(x.split("=", 1) for x in line.split())
            return {k: float(v) for k, v in kv.items()}

        # extract mode's cache is made once, untimed: the row measures reading it.
        log("read: unpacking the image into extract mode's cache")
        run_reader("bundle extract", "walk", {"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": str(cache), **cold})
        res = {n: {} for n in names}
        cold_rounds = 1 if self.quick else self.a.read_rounds
        warm_rounds = 1 if self.quick else self.a.read_rounds + 2
        log(f"read, cold: {len(names)} sources x 2 ops x {cold_rounds} rounds (drop_caches, fresh mount)")
        for op in ("walk", "read"):
            for n in names:
                res[n][f"cold {op}"] = []
            for r in range(cold_rounds):
                for k in range(len(names)):
                    n = names[(k + r) % len(names)]
                    mount, umount, _, _, env_cold, _ = S[n]
                    self.drop_caches()
                    t0 = time.perf_counter()
                    if mount:
                        mount()
                    out = run_reader(n, op, env_cold)
                    wall = time.perf_counter() - t0
                    if umount:
                        umount()
                    res[n][f"cold {op}"].append({"wall": wall, **out})
                self.wait_keepers_gone(5)
        log(f"read, warm: {len(names)} sources x 2 ops x {warm_rounds} rounds (mounted, cached)")
        loop_mount()
        sqfuse_mount()
        for op in ("walk", "read"):
            for n in names:
                run_reader(n, op, S[n][5])  # warm-up: fills the page cache, starts the keepers
                res[n][f"warm {op}"] = []
            for r in range(warm_rounds):
                for k in range(len(names)):
                    n = names[(k + r) % len(names)]
                    out = run_reader(n, op, S[n][5])
                    res[n][f"warm {op}"].append({"wall": out["seconds"], **out})
        # The FUSE server's memory after it served the whole tree twice.
        mem = self.stub_memory(sif)
        loop_umount()
        sqfuse_umount()
        self.kill_keepers()
        # Summaries: walk in files/s, read in MB/s. Cold counts the wall time from the
        # mount (or the bundle's start) to the reader's exit; warm the reader's own time.
        out = {}
        ref = None
        for n in names:
            o = out[n] = {"samples": res[n]}
            for key, runs in res[n].items():
                if not runs:
                    continue
                if key.endswith("walk"):
                    o[key + " files/s"] = stats([x["files"] / x["wall"] for x in runs])
                else:
                    o[key + " MB/s"] = stats([x["bytes"] / 1e6 / x["wall"] for x in runs])
                sig = (runs[0]["files"], runs[0]["bytes"] if key.endswith("read") else 0)
                ref = ref or {}
                if key in ref and ref[key] != sig:
                    log(f"warning: {n} {key} saw {sig}, the first source saw {ref[key]}")
                ref.setdefault(key, sig)
        first = res[names[0]]["cold read"][0]
        self.results["rows"]["read"] = {"tree": self.tree_info, "files": first["files"], "bytes": first["bytes"],
                                        "cold_rounds": cold_rounds, "warm_rounds": warm_rounds, "sources": out,
                                        "fuse_server_memory": mem, "large_image_start": large,
                                        "load_after": loadavg()}
        cols = ["cold walk files/s", "cold read MB/s", "warm walk files/s", "warm read MB/s"]
        rows = [[n] + [med(out[n].get(c)) for c in cols] for n in names]
        table(f"reading {first['files']:.0f} files, {first['bytes'] / 1e6:.0f} MB (medians; cold: "
              f"{cold_rounds} rounds incl. mount/start, warm: {warm_rounds} rounds)", ["source"] + cols, rows)
        k, sq = out["kernel squashfs (loop)"], out["squashfuse_ll"]
        rows = []
        for n in names:
            rows.append([n] + [ratio(med(out[n].get(c)), med(k.get(c))) for c in cols[:2]] +
                        [ratio(med(out[n].get(c)), med(sq.get(c))) for c in cols[:2]])
        table("read ratios (cold)", ["source", "walk x kernel", "read x kernel", "walk x squashfuse_ll",
                                     "read x squashfuse_ll"], rows)
        u, c = out["bundle fuse, no chunk check"], out["bundle fuse"]
        table("cost of the per-block check when reading (fuse mode; bar: checked >= 0.95x unchecked)",
              ["measure", "checked", "unchecked", "x unchecked"],
              [[col, med(c.get(col)), med(u.get(col)), ratio(med(c.get(col)), med(u.get(col)))] for col in cols])
        if mem:
            print("  memory of our processes after the warm rounds: " +
                  ", ".join(f"{m['mode']} {m['role']} VmHWM {m['hwm_kb'] / 1024:.1f} MiB" for m in mem))

    def stub_memory(self, sif):
        """VmHWM of the processes running `sif` (keepers and FUSE servers): a FUSE server
        is a child of a keeper."""
        procs = {}
        for pid in self.our_processes():
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                if argv0 != str(sif):
                    continue
                st = Path(f"/proc/{pid}/status").read_text()
                f = dict(l.split(":", 1) for l in st.splitlines() if ":" in l)
                env = dict(x.split("=", 1) for x in Path(f"/proc/{pid}/environ").read_bytes().decode(
                    errors="replace").split("\0") if "=" in x)
                procs[pid] = {"ppid": int(f["PPid"]), "hwm_kb": int(f.get("VmHWM", "0 kB").split()[0]),
                              "mode": env.get("BUNDLE_MODE", "auto"),
                              "rss_kb": int(f.get("VmRSS", "0 kB").split()[0]),
                              "threads": int(f.get("Threads", "1"))}
            except (OSError, KeyError, ValueError):
                continue
        out = []
        for pid, p in sorted(procs.items()):
            role = "FUSE server" if p["ppid"] in procs else "keeper"
            out.append({"pid": pid, "role": role, **p})
        return out

    # -- scale

    @staticmethod
    def size_name(n):
        return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)

    def scale_tree(self, n):
        """A tree of `n` small files (directories of at most 1,000), the static `true` and
        `reader`, and what ch-run needs in its image (/dev, /proc, /sys, /tmp, /home,
        /etc/{passwd,group,hosts,resolv.conf})."""
        t = self.scale_trees / f"tree-{n}"
        for x in ("bin", "dev", "proc", "sys", "tmp", "home", "etc", "data"):
            self.mkdir(t / x)
        os.chmod(t / "tmp", 0o1777)
        shutil.copy2(self.bin / "true", t / "bin/true")
        shutil.copy2(self.bin / "reader", t / "bin/reader")
        for f, text in (("passwd", f"root:x:0:0::/root:/bin/sh\n{USER}:x:{self.uid}:{self.gid}::/home:/bin/sh\n"),
                        ("group", f"root:x:0:\n{USER}:x:{self.gid}:\n"), ("hosts", "127.0.0.1 localhost\n"),
                        ("resolv.conf", "")):
            (t / "etc" / f).write_text(text)
        per = min(1000, n)
        for k in range(n // per):
            dd = t / "data" / f"d{k:04d}"
            dd.mkdir()
            for i in range(per):
                with open(dd / f"f{i:05d}", "w") as fh:
                    fh.write(f"{k} {i}\n")
        return t

    def row_scale(self):
        """Start-up and memory against the number of entries in the image (issue 9), and a
        cold walk and read of the largest tree against kernel squashfs and squashfuse_ll."""
        sizes = [int(x) for x in (self.a.scale_sizes or ("200,2000" if self.quick else "2000,20000,200000")).split(",")]
        d = self.mkdir(self.work / "scale")
        udir = self.mkdir(d / "user", user=True)
        # The trees live on a tmpfs: deleting 200,000 files from disk took up to 13 minutes
        # here on a busy machine, an unmount takes none. (The images and extract caches
        # stay on disk: the cold rows read them after drop_caches.)
        self.scale_trees = self.mkdir(d / "trees")
        self.sh(["mount", "-t", "tmpfs", "-o", "mode=0755,size=4g", "tmpfs", self.scale_trees])

        def umount_trees():
            if os.path.ismount(self.scale_trees):
                if self.sh(["umount", self.scale_trees], check=False).returncode != 0:
                    self.sh(["umount", "-l", self.scale_trees], check=False)
        self.at_exit("scale trees tmpfs", umount_trees)
        info = {}
        for n in sizes:
            t0 = time.perf_counter()
            tree = self.scale_tree(n)
            t1 = time.perf_counter()
            sif = self.build_bundle(d / f"s{n}.sif", "--dir", tree, "-e", "/bin/true", "--no-closure", "--level", "3")
            t2 = time.perf_counter()
            sqfs = d / f"s{n}.sqfs"
            # -no-duplicates: every file differs, but they have only a few sizes, and
            # mksquashfs compares files of one size with each other (99 s at 200,000 files,
            # against 18 s without the search); the image is the same.
            self.sh(["mksquashfs", tree, sqfs, "-comp", "zstd", "-Xcompression-level", "3", "-noappend", "-all-root",
                     "-no-duplicates", "-quiet", "-no-progress"], timeout=1800)
            t3 = time.perf_counter()
            cache = udir / f"cache-{n}"
            # Extract mode's cache, filled once, untimed: the row measures starting from it.
            self.sh([sif], user=True, env=self.user_env({"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": str(cache),
                                                          "BUNDLE_SHARE": "off", "BUNDLE_LINGER": "0"}),
                    cwd="/tmp", timeout=1800)
            t4 = time.perf_counter()
            info[n] = {"tree": tree, "sif": sif, "sqfs": sqfs, "cache": cache,
                       "unchecked": self.unchecked_copy(sif, d / f"s{n}-unchecked.sif"),
                       "entries": sum(1 for _ in os.walk(tree)) + sum(len(f) for _, _, f in os.walk(tree)),
                       "make_tree_s": t1 - t0, "bundle_build_s": t2 - t1, "mksquashfs_s": t3 - t2,
                       "fill_cache_s": t4 - t3, "image_bytes": self.trailer(sif)[1], "sqfs_bytes": sqfs.stat().st_size}
            log(f"scale: {n} files ({info[n]['entries']} entries): tree {t1 - t0:.1f} s, bundle build {t2 - t1:.1f} s, "
                f"mksquashfs {t3 - t2:.1f} s, extract cache {t4 - t3:.1f} s")
        self.kill_keepers()
        cold = {"BUNDLE_SHARE": "off", "BUNDLE_LINGER": "0"}
        kinds = ["fuse cold", "fuse cold, no chunk check", "extract cached", "kernel cold (root)", "ch-run sqfs"]
        V = []
        for n in sizes:
            s, sif = self.size_name(n), info[n]["sif"]
            V += [(f"fuse cold {s}", False, {"BUNDLE_MODE": "fuse", **cold}, [sif], None),
                  (f"fuse cold, no chunk check {s}", False, {"BUNDLE_MODE": "fuse", **cold}, [info[n]["unchecked"]],
                   None),
                  (f"extract cached {s}", False, {"BUNDLE_MODE": "extract", "BUNDLE_CACHE_DIR": info[n]["cache"],
                                                  **cold}, [sif], None),
                  (f"kernel cold (root) {s}", True, {"BUNDLE_MODE": "kernel", **cold}, [sif], None),
                  (f"ch-run sqfs {s}", False, {}, ["/usr/bin/ch-run", info[n]["sqfs"], "--", "/bin/true"], None)]
        rounds, warmup = (3, 1) if self.quick else (self.a.scale_rounds, 2)
        loads = {"start": loadavg()}
        log(f"scale, start-up: {len(V)} variants x {rounds} rounds (+{warmup} warm-up), alternating; load {loads['start']}")
        res = self.runner(self.mkdir(d / "start"), V, rounds, warmup)
        loads["memory"] = loadavg()
        # Peak memory of the keeper and the FUSE server (fuse mode, a fresh container): the
        # entrypoint sleeps 300 ms, so that /proc, sampled every 2 ms, sees both after they
        # have read the image; VmHWM is their peak since they were forked.
        mem = {}
        for n in sizes:
            runs = []
            for _ in range(1 if self.quick else 2):
                sampler = Sampler(str(info[n]["sif"]))
                sampler.start()
                try:
                    self.sh([info[n]["sif"], "300"], user=True, env=self.user_env({"BUNDLE_MODE": "fuse", **cold}),
                            cwd="/tmp", timeout=600)
                finally:
                    sampler.stop()
                runs.append(sampler.summary())
                self.wait_keepers_gone(5)
            kb = lambda k: max((r[k] for r in runs if r[k] is not None), default=None)
            mem[n] = {"runs": runs, "keeper_hwm_kb": kb("keeper_hwm_kb"), "server_hwm_kb": kb("server_hwm_kb")}
        # Cold walk and read of the largest tree: our FUSE mount against kernel squashfs
        # (loop device) and squashfuse_ll, both over the bundle's very image.
        big = sizes[-1]
        sif = info[big]["sif"]
        off, isize = self.trailer(sif)
        am = AnchorMounts(self, sif, off, isize, d)
        reader = self.bin / "reader"
        unchecked = info[big]["unchecked"]
        S = {"bundle fuse": (None, None, False, lambda op: [sif, "--bundle-exec", "/bin/reader", op, "/data"]),
             "bundle fuse, no chunk check": (None, None, False,
                                             lambda op: [unchecked, "--bundle-exec", "/bin/reader", op, "/data"]),
             "kernel squashfs (loop)": (am.loop_mount, am.loop_umount, False,
                                        lambda op: [reader, op, am.loop_mnt / "data"]),
             "squashfuse_ll": (am.sqfuse_mount, am.sqfuse_umount, False,
                               lambda op: [reader, op, am.sqfuse_mnt / "data"])}
        names = list(S)
        read_rounds = 1 if self.quick else self.a.scale_read_rounds
        loads["read"] = loadavg()
        log(f"scale, cold read of the {self.size_name(big)} tree: {len(names)} sources x 2 ops x {read_rounds} rounds; "
            f"load {loads['read']}")
        reads = {nm: {"walk": [], "read": []} for nm in names}
        for op in ("walk", "read"):
            for r in range(read_rounds):
                for k in range(len(names)):
                    nm = names[(k + r) % len(names)]
                    mount, umount, as_root, argv = S[nm]
                    self.drop_caches()
                    t0 = time.perf_counter()
                    if mount:
                        mount()
                    env = {"BUNDLE_MODE": "fuse", **cold} if nm.startswith("bundle fuse") else {}
                    p = self.sh(argv(op), user=not as_root, env=self.user_env(env), timeout=1800, cwd="/tmp")
                    wall = time.perf_counter() - t0
                    if umount:
                        umount()
                    kv = dict(x.split("=", 1) for x in p.stdout.strip().splitlines()[-1].split())
                    reads[nm][op].append({"wall": wall, **{k: float(v) for k, v in kv.items()}})
                self.wait_keepers_gone(5)
        self.kill_keepers()
        for nm in names:
            for op in ("walk", "read"):
                runs = reads[nm][op]
                if runs and any(x["files"] != runs[0]["files"] or x.get("errors", 0) for x in runs):
                    log(f"warning: scale {nm} {op}: files or errors differ between runs: {runs}")
        rd = {nm: {op: {"runs": reads[nm][op], "wall_s": stats([x["wall"] for x in reads[nm][op]]),
                        "files_per_s": stats([x["files"] / x["wall"] for x in reads[nm][op]])}
                   for op in ("walk", "read")} for nm in names}
        for nm in names[1:]:
            for op in ("walk", "read"):
                a, b = reads[names[0]][op], reads[nm][op]
                if a and b and a[0]["files"] != b[0]["files"]:
                    log(f"warning: scale {op}: {names[0]} saw {a[0]['files']:.0f} files, {nm} {b[0]['files']:.0f}")
        self.results["rows"]["scale"] = {
            "sizes": sizes, "rounds": rounds, "warmup": warmup, "read_rounds": read_rounds,
            "info": {str(n): {k: (str(v) if isinstance(v, Path) else v) for k, v in i.items()} for n, i in info.items()},
            "start": res, "memory": {str(n): m for n, m in mem.items()}, "read": rd, "read_size": big,
            "loads_before": loads, "load_after": loadavg()}
        # Tables
        rows = []
        for n in sizes:
            s = self.size_name(n)
            for kind in kinds:
                r = res[f"{kind} {s}"]
                m = r.get("median")
                rows.append([f"{kind} {s}", m, r.get("p10"), r.get("p90"),
                             ratio(m, res[f"{kind} {self.size_name(sizes[0])}"].get("median")),
                             ratio(m, res[f"ch-run sqfs {s}"].get("median")), str(r["failures"])])
        table(f"start-up against image size: a static `true` in trees of {', '.join(map(str, sizes))} small files "
              f"(ms, {rounds} alternating rounds, fresh container every run; 1-min load {loads['start']:.2f} before)",
              ["variant", "median", "p10", "p90", f"x at {self.size_name(sizes[0])}", "x ch-run", "failed"], rows)
        print("  images: " + "; ".join(
            f"{self.size_name(n)}: {info[n]['entries']} entries, bundle image {info[n]['image_bytes'] / 1e6:.2f} MB "
            f"(build {info[n]['bundle_build_s']:.1f} s), mksquashfs {info[n]['sqfs_bytes'] / 1e6:.2f} MB "
            f"({info[n]['mksquashfs_s']:.1f} s)" for n in sizes))
        table("peak memory in fuse mode (VmHWM, MiB; the entrypoint sleeps 300 ms)",
              ["image", "keeper", "FUSE server", "keepers seen", "servers seen"],
              [[self.size_name(n), fmt(mem[n]["keeper_hwm_kb"] and mem[n]["keeper_hwm_kb"] / 1024),
                fmt(mem[n]["server_hwm_kb"] and mem[n]["server_hwm_kb"] / 1024),
                ",".join(str(r["keepers"]) for r in mem[n]["runs"]),
                ",".join(str(r["servers"]) for r in mem[n]["runs"])] for n in sizes])
        rows = []
        for n in sizes:
            s = self.size_name(n)
            a, b = res[f"fuse cold {s}"].get("median"), res[f"fuse cold, no chunk check {s}"].get("median")
            rows.append([s, a, b, (a - b) if a is not None and b is not None else None])
        table("cost of the per-block check at start-up against image size (fuse cold, ms, medians; bar: <= 0.3 ms)",
              ["image", "checked", "unchecked", "+ms"], rows)
        k, sq = rd["kernel squashfs (loop)"], rd["squashfuse_ll"]
        first = (reads[names[0]]["read"] or [{}])[0]
        table(f"cold walk and read of the {self.size_name(big)} tree ({first.get('files', 0):.0f} files, "
              f"{first.get('bytes', 0) / 1e6:.1f} MB; drop_caches and a fresh mount or container every run, "
              f"wall time from the mount or start; {read_rounds} rounds; 1-min load {loads['read']:.2f} before, "
              f"{self.results['rows']['scale']['load_after']:.2f} after)",
              ["source", "walk s", "read s", "read files/s", "read x kernel", "read x squashfuse_ll"],
              [[nm, med(rd[nm]["walk"]["wall_s"]), med(rd[nm]["read"]["wall_s"]), med(rd[nm]["read"]["files_per_s"]),
                ratio(med(rd[nm]["read"]["files_per_s"]), med(k["read"]["files_per_s"])),
                ratio(med(rd[nm]["read"]["files_per_s"]), med(sq["read"]["files_per_s"]))] for nm in names])
        c, u = rd["bundle fuse"]["read"]["files_per_s"], rd["bundle fuse, no chunk check"]["read"]["files_per_s"]
        print(f"  per-block check: cold read at {fmt(ratio(med(c), med(u)))}x the unchecked read's files/s "
              "(bar: >= 0.95)")

    # -- MPI

    def mpirun(self, args, timeout):
        """mpirun as bundletest, in its own process group; a hang is killed and retried once."""
        for attempt in range(2):
            p = subprocess.Popen(["mpirun", *map(str, args)], env=self.user_env(), cwd="/tmp", text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=self.uid, group=self.gid,
                                 extra_groups=[], start_new_session=True)
            t0 = time.perf_counter()
            try:
                out, err = p.communicate(timeout=timeout)
                wall = time.perf_counter() - t0
                if p.returncode != 0:
                    raise Failed(f"mpirun {' '.join(map(str, args[:4]))} exited {p.returncode}: {err.strip()[-300:]}")
                return wall, out, attempt
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
                log(f"mpirun {' '.join(map(str, args))} hung for {timeout} s: killed, retrying")
        raise Failed(f"mpirun {' '.join(map(str, args))} hung twice")

    def row_mpi(self):
        d = self.mkdir(self.work / "mpi")
        exe = self.bin / "mpibench"
        try:
            sif = self.build_bundle(d / "mpibench.sif", "--file", f"{exe}=/usr/local/bin/mpibench", "-e",
                                    "/usr/local/bin/mpibench")
            how = "bundle build --file (closure added by bundle)"
        except Failed as e:
            log(f"closure build failed ({e}); using a file list from ldd and Open MPI's directories")
            sif, how = self.mpi_bundle_by_hand(d, exe), "file list from ldd + Open MPI dirs, --no-closure"
        scale = 10 if self.quick else 1
        rounds = 1 if self.quick else self.a.mpi_rounds
        log(f"mpi: ping-pong/bandwidth/allreduce, bare vs bundle, {rounds} alternating rounds")
        runs = {"bare": [], "bundle": []}
        hangs = 0
        self.mpirun(["-n", "2", exe, 10], 120)  # warm-up
        self.mpirun(["-n", "2", sif, 10], 120)
        for r in range(rounds):
            order = [("bare", exe), ("bundle", sif)]
            for name, prog in order if r % 2 == 0 else order[::-1]:
                _, out, h = self.mpirun(["-n", "2", prog, scale], 300)
                hangs += h
                line = [l for l in out.splitlines() if l.startswith("lat_us=")][-1]
                runs[name].append({k: float(v) for k, v in (x.split("=") for x in line.split())})
        self.wait_keepers_gone(10)
        metrics = ["lat_us", "bw_MBps", "allreduce8_us", "allreduce1M_us"]
        summ = {n: {m: stats([x[m] for x in runs[n]]) for m in metrics} for n in runs}
        # 64 ranks of a `true` that sleeps 50 ms (see true.c), bare vs bundle (fuse mode).
        ranks = 64
        sleep_ms = 50
        wall = {"bare": [], "bundle": []}
        mem_rounds = []
        r64 = 1 if self.quick else self.a.mpi_rounds
        log(f"mpi: {ranks} ranks, bare vs bundle, {r64} alternating rounds")
        xsif = self.work / "start/x.sif"
        if not xsif.exists():
            self.mkdir(d / "root/bin")
            shutil.copy2(self.bin / "true", d / "root/bin/x")
            xsif = self.build_bundle(d / "x.sif", "--dir", d / "root", "-e", "/bin/x")
        args = ["-n", ranks, "--oversubscribe"]
        self.mpirun(args + [self.bin / "true", sleep_ms], 120)  # warm-up
        self.mpirun(args + [xsif, sleep_ms], 120)
        self.wait_keepers_gone(10)
        for r in range(r64):
            order = [("bare", self.bin / "true"), ("bundle", xsif)]
            for name, prog in order if r % 2 == 0 else order[::-1]:
                w, _, h = self.mpirun(args + [prog, sleep_ms], 120)
                hangs += h
                wall[name].append(w)
        # Separate, untimed runs with /proc sampled every 2 ms: how many FUSE servers and
        # keepers a job makes and their peak memory. (The keeper leaves as soon as the
        # job's launchers are gone, so they must be watched while the job runs.)
        mem_rounds = []
        for _ in range(1 if self.quick else 3):
            self.wait_keepers_gone(10)
            sampler = Sampler(str(xsif))
            sampler.start()
            try:
                self.mpirun(args + [xsif, sleep_ms], 120)
            finally:
                sampler.stop()
            mem_rounds.append(sampler.summary())
        servers = [m["servers"] for m in mem_rounds]
        keepers = [m["keepers"] for m in mem_rounds]
        hwm = lambda role: max((m[role] for m in mem_rounds if m[role] is not None), default=None)
        hwm_roles = {"FUSE server": "server_hwm_kb", "keeper": "keeper_hwm_kb"}
        hwm_of = lambda role: hwm(hwm_roles[role])
        w64 = {n: {"s": wall[n], **stats(wall[n])} for n in wall}
        net = {n: stats([x - sleep_ms / 1000 for x in wall[n]]) for n in wall}
        self.results["rows"]["mpi"] = {
            "bundle_made_by": how, "rounds": rounds, "scale": scale, "pingpong": {"runs": runs, "summary": summ},
            "ranks64": {"ranks": ranks, "sleep_ms": sleep_ms, "wall": w64, "wall_minus_sleep": net,
                        "fuse_servers": servers, "keepers": keepers, "processes": mem_rounds,
                        "server_hwm_kb": hwm_of("FUSE server"), "keeper_hwm_kb": hwm_of("keeper")},
            "hangs_retried": hangs, "load_after": loadavg()}
        rows = [[m, med(summ["bare"][m]), med(summ["bundle"][m]), ratio(med(summ["bundle"][m]),
                                                                          med(summ["bare"][m]))] for m in metrics]
        table(f"MPI, 2 ranks ({rounds} alternating rounds, medians; bundle: {how})",
              ["metric", "bare", "bundle", "bundle/bare"], rows)
        rows = [[f"{ranks} ranks wall s", med(w64["bare"]), med(w64["bundle"]),
                 ratio(med(w64["bundle"]), med(w64["bare"]))],
                [f"  minus the {sleep_ms} ms sleep", med(net["bare"]), med(net["bundle"]),
                 ratio(med(net["bundle"]), med(net["bare"]))]]
        table(f"{ranks} ranks of a static `true` (mpirun --oversubscribe, {r64} rounds)",
              ["", "bare", "bundle", "bundle/bare"], rows)
        sv, kp = hwm_of("FUSE server"), hwm_of("keeper")
        print(f"  sampled jobs: FUSE servers per job {servers}, keepers per job {keepers}; peak VmHWM: FUSE "
              f"server {fmt(sv and sv / 1024)} MiB, keeper {fmt(kp and kp / 1024)} MiB; mpirun hangs retried: {hangs}")

    def mpi_bundle_by_hand(self, d, exe):
        """The MPI program with its closure, listed by hand: ldd of the program and of
        every Open MPI/PMIx component, plus their help and configuration files."""
        dirs = ["/usr/lib/x86_64-linux-gnu/openmpi", "/usr/lib/x86_64-linux-gnu/pmix2", "/usr/share/openmpi",
                "/usr/share/pmix", "/etc/openmpi"]
        files = set()
        elfs = [str(exe)]
        for dd in dirs:
            for dirpath, _, fnames in os.walk(dd):
                for f in fnames:
                    p = os.path.join(dirpath, f)
                    files.add(p)
                    if ".so" in f:
                        elfs.append(p)
        for e in elfs:
            out = self.sh(["ldd", e], check=False).stdout
            for line in out.splitlines():
                parts = line.split()
                for x in parts:
                    if x.startswith("/"):
                        files.add(x)
        files.discard(str(exe))
        lst = d / "files.list"
        lst.write_text("\n".join(sorted(files)) + "\n")
        return self.build_bundle(d / "mpibench.sif", "--files", lst, "--file", f"{exe}=/usr/local/bin/mpibench",
                                 "-e", "/usr/local/bin/mpibench", "--no-closure")

    # ---- bars, output ----------------------------------------------------------------

    def bars(self):
        R = self.results["rows"]
        out = []

        def bar(name, value, target, ok, unit=""):
            out.append({"bar": name, "value": value, "target": target, "unit": unit,
                        "met": None if value is None else bool(ok(value))})

        if "start" in R:
            v = R["start"]["variants"]
            b, w, c = v["bare"].get("median"), v["fuse warm"].get("median"), v["fuse cold"].get("median")
            bar("warm start - bare", None if None in (w, b) else w - b, "<= 1 ms", lambda x: x <= 1.0, "ms")
            bar("cold fuse start / ch-run (squashfs)", ratio(c, v["ch-run sqfs"].get("median")), "<= 0.3",
                lambda x: x <= 0.3)
            bar("cold fuse start / ch-run (directory)", ratio(c, v["ch-run dir"].get("median")), "<= 0.3",
                lambda x: x <= 0.3)
            bar("cold fuse start / cold kernel start (issue 9)", ratio(c, v["kernel cold (root)"].get("median")),
                "<= 1.2", lambda x: x <= 1.2)
            u = v.get("fuse cold, no chunk check", {}).get("median")
            bar("per-block check: cold fuse start, checked - unchecked (issue 10)", None if None in (c, u) else c - u,
                "<= 0.3 ms", lambda x: x <= 0.3, "ms")
        if "mpi" in R:
            m = R["mpi"]
            r64 = m["ranks64"]
            bar("64 ranks wall / bare", ratio(med(r64["wall"]["bundle"]), med(r64["wall"]["bare"])), "<= 1.2",
                lambda x: x <= 1.2)
            bar("64 ranks wall / bare (minus the 50 ms sleep)",
                ratio(med(r64["wall_minus_sleep"]["bundle"]), med(r64["wall_minus_sleep"]["bare"])), "<= 1.2",
                lambda x: x <= 1.2)
            bar("FUSE servers for the node (max over jobs)", max(r64["fuse_servers"], default=None), "== 1",
                lambda x: x == 1)
            hw = r64["server_hwm_kb"]
            bar("FUSE server peak RSS (64 ranks)", hw and hw / 1024, "<= 32 MiB", lambda x: x <= 32, "MiB")
            s = m["pingpong"]["summary"]
            bar("MPI latency 8 B / bare", ratio(med(s["bundle"]["lat_us"]), med(s["bare"]["lat_us"])), "<= 1.05",
                lambda x: x <= 1.05)
            bar("MPI bandwidth 1 MiB / bare", ratio(med(s["bundle"]["bw_MBps"]), med(s["bare"]["bw_MBps"])),
                ">= 0.95", lambda x: x >= 0.95)
        if "read" in R:
            s = R["read"]["sources"]
            f = med(s["bundle fuse"].get("cold read MB/s"))
            bar("fuse cold read / squashfuse_ll", ratio(f, med(s["squashfuse_ll"].get("cold read MB/s"))), ">= 1.0",
                lambda x: x >= 1.0)
            bar("fuse cold read / kernel squashfs",
                ratio(f, med(s["kernel squashfs (loop)"].get("cold read MB/s"))), ">= 0.8", lambda x: x >= 0.8)
            u = med(s.get("bundle fuse, no chunk check", {}).get("cold read MB/s"))
            bar("per-block check: fuse cold read, checked / unchecked (issue 10)", ratio(f, u), ">= 0.95",
                lambda x: x >= 0.95)
            mem = R["read"].get("fuse_server_memory") or []
            hw = max((p["hwm_kb"] for p in mem if p["role"] == "FUSE server"), default=None)
            bar("FUSE server peak RSS (after reading the tree)", hw and hw / 1024, "<= 32 MiB", lambda x: x <= 32,
                "MiB")
        if "build" in R:
            t = R["build"]["tools"]
            bar("build time / mksquashfs", ratio(t["bundle build"]["median"], t["mksquashfs"]["median"]), "<= 1.0",
                lambda x: x <= 1.0)
            bar("image size / mksquashfs", ratio(t["bundle build"]["image"], t["mksquashfs"]["image"]), "<= 1.01",
                lambda x: x <= 1.01)
        if "scale" in R:
            sc = R["scale"]
            sz = [self.size_name(n) for n in sc["sizes"]]
            lo, hi = sz[0], sz[-1]
            st = lambda v: sc["start"].get(v, {}).get("median")
            bar(f"scale: cold fuse start at {hi} / at {lo}", ratio(st(f"fuse cold {hi}"), st(f"fuse cold {lo}")),
                "<= 1.1", lambda x: x <= 1.1)
            bar(f"scale: cold fuse start at {hi} / ch-run (squashfs) at {hi}",
                ratio(st(f"fuse cold {hi}"), st(f"ch-run sqfs {hi}")), "<= 0.8", lambda x: x <= 0.8)
            bar(f"scale: extract start, cache filled, at {hi} / at {lo}",
                ratio(st(f"extract cached {hi}"), st(f"extract cached {lo}")), "<= 1.1", lambda x: x <= 1.1)
            m = sc["memory"][str(sc["sizes"][-1])]
            for role, key in (("keeper", "keeper_hwm_kb"), ("FUSE server", "server_hwm_kb")):
                bar(f"scale: {role} peak RSS at {hi}", m[key] and m[key] / 1024, "<= 16 MiB", lambda x: x <= 16,
                    "MiB")
            rd = sc["read"]
            f = med(rd["bundle fuse"]["read"]["files_per_s"])
            bar(f"scale: cold read of the {hi} tree / squashfuse_ll",
                ratio(f, med(rd["squashfuse_ll"]["read"]["files_per_s"])), ">= 1.5", lambda x: x >= 1.5)
            bar(f"scale: cold read of the {hi} tree / kernel squashfs",
                ratio(f, med(rd["kernel squashfs (loop)"]["read"]["files_per_s"])), ">= 1.0", lambda x: x >= 1.0)
        if "stub" in R:
            bar("stub size", R["stub"]["bytes"] / MIB, "<= 1 MiB", lambda x: x <= 1.0, "MiB")
            bar("stub static", 1 if R["stub"]["static"] else 0, "static", lambda x: x == 1)
        self.results["bars"] = out
        rows = [[b["bar"], fmt(b["value"], ".3f") + (f" {b['unit']}" if b["unit"] and b["value"] is not None else ""),
                 b["target"], {True: "met", False: "MISSED", None: "no number"}[b["met"]]] for b in out]
        table("bars of issues 5, 9 and 10", ["bar", "measured", "target", ""], rows)

    def plot(self, path):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log("no matplotlib: no plot")
            return
        R = self.results["rows"]
        nrows = 3 if "scale" in R else 2
        fig, axes = plt.subplots(nrows, 3, figsize=(17, 4.75 * nrows))
        m = self.results["meta"]
        fig.suptitle(f"bundle benchmarks, {m['date'][:16]}, {m['cpus']} cores, kernel {m['kernel']}, "
                     f"load at start {m['load_at_start'].split()[0]} ({m.get('busy_cores_at_start', '?')} cores busy)"
                     + (" (QUICK: smoke only)" if self.quick else ""))
        ax = axes[0][0]
        if "start" in R:
            v = R["start"]["variants"]
            names = [n for n in v if v[n].get("median") is not None]
            meds = [v[n]["median"] for n in names]
            lo = [v[n]["median"] - v[n]["p10"] for n in names]
            hi = [v[n]["p90"] - v[n]["median"] for n in names]
            colors = ["tab:blue" if n.split()[0] in ("fuse", "extract", "kernel") else "tab:gray" for n in names]
            ax.barh(names, meds, xerr=[lo, hi], color=colors)
            ax.set_xscale("log")
            ax.invert_yaxis()
            ax.set_xlabel("ms (median, p10-p90), log scale")
            ax.set_title("start-up of a static true (blue: bundle)")
        for ax, key, unit in ((axes[0][1], "read MB/s", "MB/s"), (axes[0][2], "walk files/s", "files/s")):
            if "read" not in R:
                continue
            s = R["read"]["sources"]
            names = list(s)
            import numpy as np
            x = np.arange(len(names))
            for i, phase in enumerate(("cold", "warm")):
                vals = [med(s[n].get(f"{phase} {key}")) or 0 for n in names]
                ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=phase)
            ax.set_xticks(x, [n.replace(" (", "\n(") for n in names], rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(unit)
            ax.set_yscale("log")
            ax.legend()
            ax.set_title(f"{key.split()[0]} of the tree ({unit}, higher is better)")
        ax = axes[1][0]
        if "build" in R:
            t = R["build"]["tools"]
            names = list(t)
            base = t["mksquashfs"]
            import numpy as np
            x = np.arange(len(names))
            ax.bar(x - 0.2, [t[n]["median"] / base["median"] for n in names], 0.4, label="time")
            ax.bar(x + 0.2, [t[n]["image"] / base["image"] for n in names], 0.4, label="image size")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks(x, names)
            ax.set_ylabel("x mksquashfs")
            ax.legend()
            ax.set_title("build (lower is better)")
        ax = axes[1][1]
        if "mpi" in R:
            s = R["mpi"]["pingpong"]["summary"]
            r64 = R["mpi"]["ranks64"]
            labels, vals = [], []
            for k, lab in (("lat_us", "latency 8 B"), ("bw_MBps", "bandwidth 1 MiB"),
                           ("allreduce8_us", "allreduce 8 B"), ("allreduce1M_us", "allreduce 1 MiB")):
                labels.append(lab)
                vals.append(ratio(med(s["bundle"][k]), med(s["bare"][k])) or 0)
            labels.append("64 ranks wall")
            vals.append(ratio(med(r64["wall"]["bundle"]), med(r64["wall"]["bare"])) or 0)
            ax.bar(labels, vals, color="tab:purple")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_ylabel("bundle / bare")
            ax.tick_params(axis="x", rotation=20)
            ax.set_title("MPI inside a bundle (1 = bare)")
        ax = axes[1][2]
        bars = [b for b in self.results.get("bars", []) if b["value"] is not None]
        if bars:
            ax.barh(range(len(bars)), [1 for _ in bars], color=["tab:green" if b["met"] else "tab:red" for b in bars])
            for i, b in enumerate(bars):
                ax.text(0.02, i, f"{b['bar']}: {b['value']:.3g} {b['unit']} (target {b['target']})", va="center",
                        fontsize=7.5, color="white")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(0, 1)
            ax.invert_yaxis()
            ax.set_title("bars of issues 5 and 9 (green: met, red: missed)")
        if "scale" in R:
            sc = R["scale"]
            sizes = sc["sizes"]
            ax = axes[2][0]
            for kind in ("fuse cold", "extract cached", "kernel cold (root)", "ch-run sqfs"):
                ys = [sc["start"].get(f"{kind} {self.size_name(n)}", {}).get("median") for n in sizes]
                ax.plot(sizes, [y if y is not None else float("nan") for y in ys], marker="o", label=kind)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("files in the image")
            ax.set_ylabel("ms (median)")
            ax.legend(fontsize=8)
            ax.set_title("scale: start-up of a static true against image size")
            ax = axes[2][1]
            import numpy as np
            x = np.arange(len(sizes))
            for i, (key, lab) in enumerate((("keeper_hwm_kb", "keeper"), ("server_hwm_kb", "FUSE server"))):
                ax.bar(x + (i - 0.5) * 0.4, [(sc["memory"][str(n)][key] or 0) / 1024 for n in sizes], 0.4, label=lab)
            ax.axhline(16, color="k", lw=0.8, ls="--")
            ax.set_xticks(x, [self.size_name(n) for n in sizes])
            ax.set_ylabel("VmHWM MiB")
            ax.legend(fontsize=8)
            ax.set_title("scale: peak memory in fuse mode (dashed: the 16 MiB bar)")
            ax = axes[2][2]
            rd = sc["read"]
            names = list(rd)
            x = np.arange(len(names))
            for i, op in enumerate(("walk", "read")):
                ax.bar(x + (i - 0.5) * 0.4, [med(rd[n][op]["files_per_s"]) or 0 for n in names], 0.4, label=op)
            ax.set_xticks(x, names, fontsize=8)
            ax.set_ylabel("files/s")
            ax.legend(fontsize=8)
            ax.set_title(f"scale: cold walk and read of the {self.size_name(sc['read_size'])} tree (higher is better)")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        log(f"plot: {path}")

    def main(self):
        rows = self.a.rows.split(",")
        unknown = set(rows) - {"stub", "start", "build", "read", "mpi", "scale"}
        if unknown:
            raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}")
        t_start = time.time()
        self.setup()
        self.build_binaries()
        self.wait_for_quiet()
        self.meta()
        log(f"load at start: {self.results['meta']['load_at_start']}")
        for row in ("stub", "start", "build", "read", "mpi", "scale"):
            if row not in rows:
                continue
            try:
                self.results["rows"].setdefault("loads", {})[row] = loadavg()
                getattr(self, f"row_{row}")()
            except (Failed, subprocess.TimeoutExpired, OSError, KeyError, IndexError, ValueError) as e:
                log(f"row {row} failed: {e}")
                self.results["errors"][row] = str(e)
                self.kill_keepers()
        self.results["meta"]["load_at_end"] = Path("/proc/loadavg").read_text().strip()
        self.results["meta"]["duration_s"] = round(time.time() - t_start)
        self.bars()
        out = Path(self.a.out)
        out.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if self.quick else ""
        (out / f"results{suffix}.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        log(f"results: {out / f'results{suffix}.json'}")
        self.plot(out / f"plot{suffix}.png")
        print(f"\nload average at start: {self.results['meta']['load_at_start']}; at end: "
              f"{self.results['meta']['load_at_end']}; {self.results['meta']['duration_s']} s")
        missing = [b["bar"] for b in self.results["bars"] if b["value"] is None]
        if self.results["errors"] or missing:
            log(f"rows failed: {list(self.results['errors'])}; bars without a number: {missing}")
            return 1
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every row once on small inputs (smoke test)")
    ap.add_argument("--rows", default="stub,start,build,read,mpi,scale", help="comma list of rows to run")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--bundle", help="the bundle CLI to use (default target/release/bundle)")
    ap.add_argument("--stub", help="the runtime stub to use (default the musl stub build)")
    ap.add_argument("--tree-mb", type=int, default=0, help="size of the read/build tree (default 200, quick 20)")
    ap.add_argument("--start-rounds", type=int, default=200)
    ap.add_argument("--read-rounds", type=int, default=5)
    ap.add_argument("--build-rounds", type=int, default=3)
    ap.add_argument("--mpi-rounds", type=int, default=5)
    ap.add_argument("--scale-sizes", help="files in the scale row's trees (default 2000,20000,200000; quick 200,2000)")
    ap.add_argument("--scale-rounds", type=int, default=15, help="start-up rounds of the scale row")
    ap.add_argument("--scale-read-rounds", type=int, default=3, help="cold read rounds of the scale row")
    ap.add_argument("--max-load", type=float, default=0.7, help="wait until the 1-min load is below this")
    ap.add_argument("--max-wait", type=int, default=1200, help="wait at most this many seconds for it (0: never)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (for debugging)")
    ap.add_argument("--replot", action="store_true", help="only redraw the plot and the bars from the results JSON")
    a = ap.parse_args()
    a.out = a.out or str(Path(a.repo) / "bench/results")
    if a.replot:
        b = Bench.__new__(Bench)
        b.a, b.quick = a, a.quick
        path = Path(a.out) / f"results{'-quick' if a.quick else ''}.json"
        b.results = json.loads(path.read_text())
        b.bars()
        b.plot(path.with_name(path.name.replace("results", "plot").replace(".json", ".png")))
        return
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root, through bench/run")
    b = Bench(a)

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    code = 1
    try:
        code = b.main()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}): cleaning up")
        code = 130
    except Failed as e:
        log(f"error: {e}")
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        b.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
