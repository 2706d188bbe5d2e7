//! Issue 12, end to end: writable overlays, CDI devices, `--bundle-nv`, host libraries
//! and the host MPI. Every bundle runs as the unprivileged test user (kernel mode as
//! root). The fakes — CDI specs, character devices, NVIDIA-named libraries, an
//! `ld.so.cache` — are made here as root and removed: a spec directory or a cache is
//! bound over the host's `/etc/cdi` or `/etc/ld.so.cache` only inside a private mount
//! namespace made for one command (`unshare -m`, then `setpriv` down to the user).

use e2e::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// busybox and the probe, entrypoint `/bin/probe`.
fn app() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| probe_bundle(shared_dir(), "app", &[]))
}

fn start(name: &str, mode: Mode) -> Test {
    require_root("the device tests' fakes");
    if mode != Mode::Extract {
        require_fuse();
    }
    Test::new(&format!("{name}-{}", mode.name()))
}

/// `sh -c SCRIPT` in the bundle.
fn sh(script: &str) -> Vec<String> {
    ["--bundle-exec", "/bin/sh", "-c", script].iter().map(|s| s.to_string()).collect()
}

/// Who runs a command: the test user (fuse and extract mode) or root (kernel mode).
#[derive(Clone, Copy, PartialEq)]
enum As {
    User(Mode),
    Kernel,
}

/// `program` in a mount namespace of its own where each `(src, dst)` is first bound
/// over the host's `dst`, then run as the test user in `mode` (or as root in kernel
/// mode), with the test's environment.
fn cmd_with(t: &Test, who: As, binds: &[(&Path, &Path)], program: &Path) -> Command {
    let u = user();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"]).arg(
        r#"n=$1; shift
while [ "$n" -gt 0 ]; do mount --bind "$1" "$2" || exit 99; shift 2; n=$((n - 1)); done
u=$1 g=$2; shift 2
if [ "$u" = root ]; then exec "$@"; fi
exec setpriv --reuid="$u" --regid="$g" --clear-groups -- "$@""#,
    );
    c.arg("sh").arg(binds.len().to_string());
    for (src, dst) in binds {
        c.arg(src).arg(dst);
    }
    t.user_env(&mut c);
    match who {
        As::User(mode) => {
            c.arg(u.uid.to_string()).arg(u.gid.to_string());
            set_mode(&mut c, mode);
        }
        As::Kernel => {
            c.args(["root", "root"]).env("HOME", "/root").env("BUNDLE_MODE", "kernel");
        }
    }
    c.arg(program);
    c
}

/// Runs `args` of `bundle` as `who`, with the variables `env`, and with `binds`.
fn run_as(t: &Test, who: As, bundle: &Path, env: &[(&str, &str)], args: &[String]) -> Out {
    run_bound(t, who, &[], bundle, env, args)
}

fn run_bound(t: &Test, who: As, binds: &[(&Path, &Path)], bundle: &Path, env: &[(&str, &str)], args: &[String]) -> Out {
    let mut c = cmd_with(t, who, binds, bundle);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run(c)
}

// ---------------------------------------------------------------------------------------
// Writable overlays

macro_rules! in_every_mode {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn fuse() {
                super::$name(super::As::User(e2e::Mode::Fuse))
            }
            #[test]
            fn extract() {
                super::$name(super::As::User(e2e::Mode::Extract))
            }
            #[test]
            fn kernel() {
                super::$name(super::As::Kernel)
            }
        }
    )*};
}

in_every_mode!(writable_tmpfs_writes_are_gone_after_exit, overlay_dir_writes_persist);

fn test_for(name: &str, who: As) -> Test {
    match who {
        As::User(mode) => start(name, mode),
        As::Kernel => start(&format!("{name}-kernel"), Mode::Extract),
    }
}

fn writable_tmpfs_writes_are_gone_after_exit(who: As) {
    let t = test_for("tmpfs", who);
    let wrote = run_as(&t, who, app(), &[], &{
        let mut a = vec!["--bundle-writable-tmpfs".to_string()];
        a.extend(sh("echo written > /bin/new && busybox rm /bin/ls && cat /bin/new && probe exists /bin/ls"));
        a
    });
    assert_eq!(wrote.code(), Some(1), "{wrote}");
    assert_eq!(wrote.stdout(), "written\nno\n", "{wrote}");
    // The variable works as the flag does; the writes of the last run are gone.
    let again =
        run_as(&t, who, app(), &[("BUNDLE_WRITABLE_TMPFS", "1")], &sh("probe exists /bin/new; probe exists /bin/ls"));
    again.assert_success().assert_stdout("no\nyes\n");
    // Without it the image is read-only.
    let ro = run_as(&t, who, app(), &[], &sh("echo x > /bin/new || echo refused"));
    assert!(ro.stdout().contains("refused"), "{ro}");
}

fn overlay_dir_writes_persist(who: As) {
    let t = test_for("overlay", who);
    let dir = match who {
        As::Kernel => {
            let d = t.dir.join("overlay-root");
            fs::create_dir(&d).unwrap();
            d
        }
        As::User(_) => t.dir.user_dir("overlay"),
    };
    let with_dir = |script: &str| {
        let mut a = vec!["--bundle-overlay".to_string(), dir.display().to_string()];
        a.extend(sh(script));
        a
    };
    run_as(&t, who, app(), &[], &with_dir("echo first >> /etc/state && busybox rm /bin/ls")).assert_success();
    // Next run, through the variable: the writes are there, and so is the deletion.
    let again = run_as(
        &t,
        who,
        app(),
        &[("BUNDLE_OVERLAY", dir.to_str().unwrap())],
        &sh("echo second >> /etc/state; cat /etc/state; probe exists /bin/ls"),
    );
    assert_eq!(again.stdout(), "first\nsecond\nno\n", "{again}");
    // On the host, in DIR/upper, the caller's; nothing of the runtime's own mount points.
    let state = dir.join("upper/etc/state");
    assert_eq!(fs::read_to_string(&state).unwrap(), "first\nsecond\n");
    let owner = if who == As::Kernel { 0 } else { user().uid };
    assert_eq!(fs::metadata(&state).unwrap().uid(), owner);
    let top: Vec<String> =
        fs::read_dir(dir.join("upper")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    let mut top = top;
    top.sort();
    assert_eq!(top, ["bin", "etc"], "only what the application changed");
    // An overlay directory that is not the caller's is refused before anything starts.
    if who != As::Kernel {
        let foreign = t.dir.join("foreign");
        fs::create_dir(&foreign).unwrap();
        let args = vec!["--bundle-overlay".to_string(), foreign.display().to_string()];
        run_as(&t, who, app(), &[], &args).assert_bundle_error(&format!("{}", foreign.display()));
    }
}

/// Eight ranks of one job share one container, so one overlay: each writes its file
/// and waits until it sees all eight.
fn ranks_share_the_overlay(who: As, persistent: bool) {
    let t = test_for(if persistent { "ranks-overlay" } else { "ranks-tmpfs" }, who);
    let dir = t.dir.user_dir("overlay");
    if who == As::Kernel {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    }
    let script = "busybox mkdir -p /ranks && echo > /ranks/$RANK; i=0; \
                  while [ $(busybox ls /ranks | busybox wc -l) -lt 8 ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
                  busybox ls /ranks | busybox wc -l";
    let ranks: Vec<Running> = (0..8)
        .map(|r| {
            let mut c = cmd_with(&t, who, &[], app());
            c.args(sh(script));
            c.env("RANK", r.to_string()).env("BUNDLE_SHARE", &t.id).env("BUNDLE_LINGER", "1");
            if persistent {
                c.env("BUNDLE_OVERLAY", &dir);
            } else {
                c.env("BUNDLE_WRITABLE_TMPFS", "1");
            }
            Running::spawn(&mut c)
        })
        .collect();
    for r in ranks {
        let out = r.finish(Duration::from_secs(60));
        out.assert_success();
        assert_eq!(out.stdout().trim(), "8", "every rank sees every rank's write\n{out}");
    }
    if persistent {
        assert_eq!(fs::read_dir(dir.join("upper/ranks")).unwrap().count(), 8);
    }
}

#[test]
fn ranks_share_the_tmpfs_overlay_fuse() {
    ranks_share_the_overlay(As::User(Mode::Fuse), false)
}

#[test]
fn ranks_share_the_tmpfs_overlay_extract() {
    ranks_share_the_overlay(As::User(Mode::Extract), false)
}

#[test]
fn ranks_share_the_tmpfs_overlay_kernel() {
    ranks_share_the_overlay(As::Kernel, false)
}

#[test]
fn ranks_share_the_persistent_overlay_kernel() {
    ranks_share_the_overlay(As::Kernel, true)
}

#[test]
fn ranks_share_the_persistent_overlay_fuse() {
    ranks_share_the_overlay(As::User(Mode::Fuse), true)
}

#[test]
fn tmpfs_and_overlay_exclude_each_other() {
    let t = start("both", Mode::Extract);
    let args = vec!["--bundle-writable-tmpfs".to_string(), "--bundle-overlay".into(), t.work.display().to_string()];
    run_as(&t, As::User(Mode::Extract), app(), &[], &args).assert_bundle_error("choose one");
}

#[test]
fn host_mode_refuses_what_only_a_container_gives() {
    let t = start("host-mode", Mode::Extract);
    for (flag, env) in [
        ("--bundle-writable-tmpfs", ("BUNDLE_X", "")),
        ("--bundle-nv", ("BUNDLE_X", "")),
        ("--bundle-host-mpi", ("BUNDLE_X", "")),
        ("--bundle-overlay", ("BUNDLE_OVERLAY", "/tmp")),
    ] {
        let mut c = t.cmd(app());
        c.env("BUNDLE_MODE", "host").env(env.0, env.1);
        if flag != "--bundle-overlay" {
            c.arg(flag);
        }
        c.arg("args");
        run(c).assert_bundle_error(&format!("{flag} needs a container, and this host can make none"));
    }
}

// ---------------------------------------------------------------------------------------
// Fakes

/// A character device the setup makes in the host's `/dev` (1:3, what `/dev/null` is,
/// so that it is harmless), removed on drop.
struct DeviceNode(PathBuf);

impl DeviceNode {
    fn new(path: &Path) -> DeviceNode {
        assert!(fs::symlink_metadata(path).is_err(), "{} exists on this host: not a fake to remove", path.display());
        run(Command::new("mknod").args(["-m", "0666"]).arg(path).args(["c", "1", "3"])).assert_success();
        DeviceNode(path.to_path_buf())
    }

    fn unique(name: &str) -> DeviceNode {
        DeviceNode::new(&PathBuf::from(format!("/dev/bundle-e2e-{}-{name}", std::process::id())))
    }
}

impl Drop for DeviceNode {
    fn drop(&mut self) {
        fs::remove_file(&self.0).unwrap_or_else(|e| panic!("remove {}: {e}", self.0.display()));
    }
}

/// The host's `/etc/cdi`, made (empty) for this test run when the host has none, so that
/// a spec directory can be bound over it; removed at exit.
fn etc_cdi() -> &'static Path {
    static MADE: OnceLock<bool> = OnceLock::new();
    extern "C" fn remove() {
        if MADE.get() == Some(&true) {
            let _ = fs::remove_dir("/etc/cdi");
        }
    }
    MADE.get_or_init(|| {
        let made = fs::create_dir("/etc/cdi").is_ok();
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove) };
        made
    });
    Path::new("/etc/cdi")
}

/// `gcc` at the test's service.
fn gcc(args: &[&std::ffi::OsStr]) {
    run(Command::new("gcc").args(args)).assert_success();
}

/// A shared library `dir/file` with soname `soname`, whose `which()` returns `says`.
fn fake_lib(dir: &Path, file: &str, soname: &str, says: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let src = dir.join(format!("{file}.c"));
    fs::write(&src, format!("const char *which(void) {{ return \"{says}\"; }}\n")).unwrap();
    let out = dir.join(file);
    let soname_flag = format!("-Wl,-soname,{soname}");
    gcc(&["-shared".as_ref(), "-fPIC".as_ref(), soname_flag.as_ref(), "-o".as_ref(), out.as_ref(), src.as_ref()]);
    fs::remove_file(&src).unwrap();
    out
}

/// `tests/programs/dlcall.c`, dynamically linked, compiled once.
fn dlcall() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs/dlcall.c");
        let out = shared_dir().join("dlcall");
        gcc(&["-O2".as_ref(), "-Wall".as_ref(), "-o".as_ref(), out.as_ref(), src.as_ref()]);
        out
    })
}

/// A bundle whose image has the build host's glibc loader and libc, `/bin/dlcall`, and
/// the fake libraries `libs` (file, soname, says) in `/usr/lib`, where its loader looks
/// without help.
fn dynamic_bundle(dir: &Path, name: &str, libs: &[(&str, &str, &str)]) -> PathBuf {
    let root = dir.join(format!("rootfs-{name}"));
    make_rootfs(&root);
    for (from, to) in [
        ("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
    ] {
        let to = root.join(to);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(fs::canonicalize(from).unwrap(), &to).unwrap();
    }
    fs::copy(dlcall(), root.join("bin/dlcall")).unwrap();
    for (file, soname, says) in libs {
        fake_lib(&root.join("usr/lib"), file, soname, says);
    }
    Build::new().dir(&root).entrypoint("/bin/dlcall").arg("--no-closure").build(&dir.join(format!("{name}.sif")))
}

/// An `ld.so.cache` made by `ldconfig -C` from the libraries of `dirs` (plus the host's
/// trusted directories, which ldconfig always adds). ldconfig also rewrites its
/// auxiliary cache in `/var/cache/ldconfig`, whatever its flags: it runs in a mount
/// namespace of its own with a tmpfs there, so the host's stays as it was.
fn ldconfig_cache(t: &Test, dirs: &[&Path]) -> PathBuf {
    let cache = t.dir.join("ld.so.cache");
    let conf = t.dir.join("empty-ld.so.conf");
    fs::write(&conf, "").unwrap();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(r#"mount -t tmpfs tmpfs /var/cache/ldconfig && exec ldconfig -X -C "$@""#)
        .arg("sh")
        .arg(&cache)
        .arg("-f")
        .arg(&conf)
        .args(dirs);
    run(c).assert_success();
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o644)).unwrap();
    cache
}

/// An `ld.so.cache` with only `entries` (soname, path), written in glibc's format by
/// hand: `ldconfig -C` would add the host's own MPI from its trusted directories.
fn cache_of(t: &Test, name: &str, entries: &[(&str, &Path)]) -> PathBuf {
    let mut head = b"glibc-ld.so.cache1.1".to_vec();
    let strings_at = 48 + 24 * entries.len();
    let (mut strings, mut table) = (Vec::new(), Vec::new());
    for (key, value) in entries {
        let k = strings_at + strings.len();
        strings.extend_from_slice(key.as_bytes());
        strings.push(0);
        let v = strings_at + strings.len();
        strings.extend_from_slice(value.to_str().unwrap().as_bytes());
        strings.push(0);
        table.extend_from_slice(&0x0303i32.to_le_bytes()); // libc6, x86-64
        table.extend_from_slice(&(k as u32).to_le_bytes());
        table.extend_from_slice(&(v as u32).to_le_bytes());
        table.extend_from_slice(&[0; 12]);
    }
    head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    head.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    head.resize(48, 0);
    head.extend(table);
    head.extend(strings);
    let path = t.dir.join(name);
    fs::write(&path, head).unwrap();
    path
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// CDI devices

/// A spec as nvidia-ctk writes them (sequences at their key's indentation, quoted
/// names), with comments and a flow mapping.
const CDI_YAML: &str = r#"---
cdiVersion: 0.8.0
kind: example.org/yaml
devices:
- name: "a"
  containerEdits:
    env:
    - E2E_YAML=a   # a comment
    hooks:
    - hookName: createContainer
      path: /usr/bin/nvidia-ctk
      args: [nvidia-ctk, hook, update-ldcache, --folder, /opt/cdi]
    - hookName: createContainer
      path: /usr/bin/nvidia-cdi-hook
      args:
      - nvidia-cdi-hook
      - create-symlinks
      - --link
      - data.txt::/opt/cdi/link
- name: bad-hook
  containerEdits:
    hooks:
    - {hookName: createContainer, path: /bin/sh, args: [sh, -c, 'echo hi']}
"#;

fn cdi_specs(t: &Test, node: &Path) -> PathBuf {
    let specs = t.dir.user_dir("cdi");
    let data = t.dir.join("cdi-data.txt");
    fs::write(&data, "data from the host\n").unwrap();
    fs::write(
        specs.join("e2e.json"),
        format!(
            r#"{{"cdiVersion": "0.6.0", "kind": "example.com/e2e",
  "containerEdits": {{"env": ["E2E_SPEC=json"]}},
  "devices": [{{"name": "one", "containerEdits": {{
     "deviceNodes": [{{"path": "{node}", "type": "c", "major": 1, "minor": 3, "permissions": "rw"}}],
     "mounts": [{{"hostPath": "{data}", "containerPath": "/opt/cdi/data.txt", "options": ["ro", "nosuid", "nodev", "bind"]}}],
     "env": ["E2E_DEVICE=one"]}}}}]}}"#,
            node = node.display(),
            data = data.display()
        ),
    )
    .unwrap();
    fs::write(specs.join("e2e.yaml"), CDI_YAML).unwrap();
    specs
}

fn cdi_devices_reach_the_application(mode: Mode) {
    let t = start("cdi", mode);
    let node = DeviceNode::unique(&format!("cdi-{}", mode.name()));
    let specs = cdi_specs(&t, &node.0);
    let binds = [(specs.as_path(), etc_cdi())];
    let who = As::User(mode);
    let script = format!(
        "echo $E2E_SPEC $E2E_DEVICE $E2E_YAML; cat /opt/cdi/link; echo $LD_LIBRARY_PATH; \
         [ -c {} ] && echo char device; echo x 2>/dev/null > /opt/cdi/data.txt || echo read-only",
        node.0.display()
    );
    let mut a = args(&["--bundle-device", "example.org/yaml=a"]);
    a.extend(sh(&script));
    let out = run_bound(&t, who, &binds, app(), &[("BUNDLE_DEVICE", "example.com/e2e=one")], &a);
    out.assert_success().assert_stdout("json one a\ndata from the host\n/opt/cdi\nchar device\nread-only\n");
    // An unknown name lists the known ones; an unknown hook is refused, not run.
    let out = run_bound(&t, who, &binds, app(), &[], &args(&["--bundle-device", "example.com/e2e=two"]));
    out.assert_bundle_error(
        "known devices (in /etc/cdi, /var/run/cdi): example.com/e2e=one, example.org/yaml=a, example.org/yaml=bad-hook",
    );
    let out = run_bound(&t, who, &binds, app(), &[], &args(&["--bundle-device", "example.org/yaml=all"]));
    out.assert_bundle_error("the hook `/bin/sh -c echo hi` is not one bundle knows");
    // A broken spec is one line naming its file.
    fs::write(specs.join("broken.yaml"), "cdiVersion: 0.5.0\nkind: x.com/y\ndevices: [\n").unwrap();
    let out = run_bound(&t, who, &binds, app(), &[], &args(&["--bundle-device", "example.com/e2e=one"]));
    out.assert_bundle_error("bad CDI spec /etc/cdi/broken.yaml: line 3");
}

#[test]
fn cdi_devices_reach_the_application_fuse() {
    cdi_devices_reach_the_application(Mode::Fuse)
}

#[test]
fn cdi_devices_reach_the_application_extract() {
    cdi_devices_reach_the_application(Mode::Extract)
}

#[test]
fn cdi_device_node_missing_on_the_host_is_an_error() {
    let t = start("cdi-missing", Mode::Extract);
    let specs = t.dir.user_dir("cdi");
    fs::write(
        specs.join("gone.json"),
        r#"{"cdiVersion": "0.5.0", "kind": "example.com/gone", "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/dev/bundle-e2e-no-such-node"}]}}]}"#,
    )
    .unwrap();
    let out = run_bound(
        &t,
        As::User(Mode::Extract),
        &[(&specs, etc_cdi())],
        app(),
        &[],
        &args(&["--bundle-device", "example.com/gone=x"]),
    );
    out.assert_bundle_error("/dev/bundle-e2e-no-such-node is not a device node on this host");
}

// ---------------------------------------------------------------------------------------
// --bundle-nv

#[test]
fn nvidia_driver_from_the_hosts_ld_so_cache() {
    let t = start("nv", Mode::Fuse);
    let image = dynamic_bundle(t.dir.path(), "nv", &[]);
    let driver = t.dir.join("driver");
    fake_lib(&driver, "libnvidia-ml.so.1", "libnvidia-ml.so.1", "fake nvml");
    fake_lib(&driver, "libcuda.so.1", "libcuda.so.1", "fake cuda");
    let cache = ldconfig_cache(&t, &[&driver]);
    let nodes = [DeviceNode::new(Path::new("/dev/nvidia0")), DeviceNode::new(Path::new("/dev/nvidiactl"))];
    // Its program, in a directory bound over the host's /usr/local/bin.
    let bin = t.dir.join("driver-bin");
    fs::create_dir(&bin).unwrap();
    fs::write(bin.join("nvidia-smi"), "#!/bin/sh\necho fake nvidia-smi\n").unwrap();
    fs::set_permissions(bin.join("nvidia-smi"), fs::Permissions::from_mode(0o755)).unwrap();
    let binds = [(cache.as_path(), Path::new("/etc/ld.so.cache")), (bin.as_path(), Path::new("/usr/local/bin"))];
    for mode in [Mode::Fuse, Mode::Extract] {
        let who = As::User(mode);
        let out = run_bound(&t, who, &binds, &image, &[], &args(&["--bundle-nv", "libnvidia-ml.so.1", "which"]));
        out.assert_success().assert_stdout("fake nvml\n");
        let out = run_bound(&t, who, &binds, &image, &[("BUNDLE_NV", "1")], &args(&["libcuda.so.1", "which"]));
        out.assert_success().assert_stdout("fake cuda\n");
        let out = run_bound(
            &t,
            who,
            &binds,
            &image,
            &[("BUNDLE_NV", "1")],
            &sh("ls /.bundle/host-libs; [ -c /dev/nvidia0 ] && [ -c /dev/nvidiactl ] && echo nodes"),
        );
        out.assert_success().assert_stdout("libcuda.so.1\nlibnvidia-ml.so.1\nnodes\n");
        let out = run_bound(&t, who, &binds, &image, &[], &args(&["--bundle-nv", "--bundle-exec", "nvidia-smi"]));
        out.assert_success().assert_stdout("fake nvidia-smi\n");
    }
    drop(nodes);
    // The host's own cache has no NVIDIA driver.
    let out = run_as(&t, As::User(Mode::Fuse), &image, &[], &args(&["--bundle-nv", "libcuda.so.1", "which"]));
    out.assert_bundle_error("--bundle-nv: this host has no NVIDIA driver");
}

// ---------------------------------------------------------------------------------------
// Host libraries and the host MPI

#[test]
fn a_host_library_goes_ahead_of_the_images_copy() {
    let t = start("host-lib", Mode::Fuse);
    let image = dynamic_bundle(t.dir.path(), "lib", &[("libe2e.so.1", "libe2e.so.1", "image copy")]);
    let host_dir = t.dir.join("hostlib");
    let host_lib = fake_lib(&host_dir, "libe2e.so.1", "libe2e.so.1", "host copy");
    let cache = ldconfig_cache(&t, &[&host_dir]);
    let binds = [(cache.as_path(), Path::new("/etc/ld.so.cache"))];
    for who in [As::User(Mode::Fuse), As::User(Mode::Extract), As::Kernel] {
        let call = |extra: &[&str], env: &[(&str, &str)]| {
            let mut a = args(extra);
            a.extend(args(&["libe2e.so.1", "which"]));
            run_bound(&t, who, &binds, &image, env, &a)
        };
        call(&[], &[]).assert_success().assert_stdout("image copy\n");
        call(&["--bundle-host-lib", host_lib.to_str().unwrap()], &[]).assert_success().assert_stdout("host copy\n");
        call(&[], &[("BUNDLE_HOST_LIB", host_dir.to_str().unwrap())]).assert_success().assert_stdout("host copy\n");
        call(&["--bundle-host-lib=libe2e"], &[]).assert_success().assert_stdout("host copy\n");
        call(&["--bundle-host-lib=libnope"], &[]).assert_bundle_error("--bundle-host-lib libnope: no such library");
    }
}

#[test]
fn host_mpi_is_used_when_the_sonames_match_and_refused_otherwise() {
    let t = start("host-mpi", Mode::Fuse);
    let mpich_abi = dynamic_bundle(t.dir.path(), "mpich", &[("libmpi.so.12", "libmpi.so.12", "bundle mpi")]);
    let open_mpi = dynamic_bundle(t.dir.path(), "ompi", &[("libmpi.so.40", "libmpi.so.40", "bundle mpi")]);
    let host_mpi = fake_lib(&t.dir.join("host-mpi/lib"), "libmpi.so.12", "libmpi.so.12", "host mpi");
    let cache = cache_of(&t, "mpi.cache", &[("libmpi.so.12", &host_mpi)]);
    let binds = [(cache.as_path(), Path::new("/etc/ld.so.cache"))];
    for mode in [Mode::Fuse, Mode::Extract] {
        let who = As::User(mode);
        let call = |image: &Path, flag: bool| {
            let mut a = if flag { args(&["--bundle-host-mpi"]) } else { Vec::new() };
            a.extend(args(&["libmpi.so.12", "which"]));
            run_bound(&t, who, &binds, image, &[], &a)
        };
        call(&mpich_abi, false).assert_success().assert_stdout("bundle mpi\n");
        call(&mpich_abi, true).assert_success().assert_stdout("host mpi\n");
        let out =
            run_bound(&t, who, &binds, &mpich_abi, &[("BUNDLE_HOST_MPI", "yes")], &args(&["libmpi.so.12", "which"]));
        out.assert_success().assert_stdout("host mpi\n");
        call(&open_mpi, true).assert_bundle_error(&format!(
            "the bundle's MPI library is /usr/lib/libmpi.so.40 but the host's is libmpi.so.12 ({}): their ABIs differ",
            host_mpi.display()
        ));
    }
}
