//! Every mode's start-up, printed and compared, and run through a recording double that
//! can make any call fail: no privileges needed.

use super::*;
use crate::plan::{Bind, Kind, Plan, Writes};
use std::io;

/// One call the steps made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    what: &'static str,
    path: PathBuf,
    flags: MsFlags,
    data: Option<String>,
}

/// A [`Sys`] that records each call and fails the one numbered `fail_at`.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    fail_at: Option<usize>,
    /// A kernel before 5.12: mount_setattr is ENOSYS.
    no_mount_setattr: bool,
    mountinfo: String,
}

impl Recorder {
    fn failing_at(n: usize) -> Recorder {
        Recorder { fail_at: Some(n), ..Recorder::default() }
    }

    fn call(&mut self, what: &'static str, path: &Path, flags: MsFlags, data: Option<&str>) -> io::Result<()> {
        let n = self.calls.len();
        self.calls.push(Call { what, path: path.into(), flags, data: data.map(str::to_string) });
        match self.fail_at {
            Some(f) if f == n => Err(io::Error::from_raw_os_error(libc::EPERM)),
            _ => Ok(()),
        }
    }
}

impl Sys for Recorder {
    fn mount(
        &mut self,
        _: Option<&Path>,
        at: &Path,
        _: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.call("mount", at, flags, data)
    }
    fn detach(&mut self, at: &Path) -> io::Result<()> {
        self.call("umount2", at, MsFlags::empty(), None)
    }
    fn set_readonly_recursive(&mut self, at: &Path) -> io::Result<()> {
        self.call("mount_setattr", at, MsFlags::empty(), None)?;
        if self.no_mount_setattr {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        Ok(())
    }
    fn locked_flags(&mut self, _: &Path) -> MsFlags {
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV
    }
    fn mountinfo(&mut self) -> io::Result<String> {
        self.call("read mountinfo", Path::new("/proc/self/mountinfo"), MsFlags::empty(), None)?;
        Ok(self.mountinfo.clone())
    }
    fn mkdir(&mut self, path: &Path) -> io::Result<()> {
        self.call("mkdir", path, MsFlags::empty(), None)
    }
    fn create_file(&mut self, path: &Path) -> io::Result<()> {
        self.call("create", path, MsFlags::empty(), None)
    }
    fn chdir(&mut self, path: &Path) -> io::Result<()> {
        self.call("chdir", path, MsFlags::empty(), None)
    }
    fn symlink(&mut self, _: &Path, at: &Path) -> io::Result<()> {
        self.call("symlink", at, MsFlags::empty(), None)
    }
    fn pivot_root(&mut self, new_root: &Path, _: &Path) -> io::Result<()> {
        self.call("pivot_root", new_root, MsFlags::empty(), None)
    }
    fn mount_fuse(&mut self, at: &Path, _: &[(PathBuf, Kind)], _: bool) -> io::Result<()> {
        self.call("fuse", at, MsFlags::empty(), None)
    }
}

fn bind(src: &str, dst: &str, kind: Kind, readonly: bool) -> Bind {
    Bind { src: src.into(), dst: dst.into(), kind, readonly }
}

/// The standard binds of a caller whose home and working directory the image has.
fn plain() -> Plan {
    Plan {
        binds: vec![bind("/proc", "/proc", Kind::Dir, false), bind("/etc/passwd", "/etc/passwd", Kind::File, false)],
        mount_points: vec![],
        ..Plan::default()
    }
}

/// A home the image lacks, and a user bind `/data:/opt/in:ro` of a file and a directory
/// whose parents it lacks too.
fn with_mount_points() -> Plan {
    Plan {
        binds: vec![
            bind("/proc", "/proc", Kind::Dir, false),
            bind("/home/alice", "/home/alice", Kind::Dir, false),
            bind("/data", "/opt/in", Kind::Dir, true),
            bind("/etc/motd", "/opt/motd", Kind::File, false),
        ],
        mount_points: vec![
            ("/home/alice".into(), Kind::Dir),
            ("/opt".into(), Kind::Dir),
            ("/opt/in".into(), Kind::Dir),
            ("/opt/motd".into(), Kind::File),
        ],
        ..Plan::default()
    }
}

fn kernel() -> Root {
    Root::Kernel("/dev/loop3".into())
}

fn tree() -> Root {
    Root::Tree("/home/alice/.cache/bundle/images/ab12".into())
}

fn listing(plan: &Plan, root: &Root) -> String {
    all(plan, root).iter().map(|s| format!("{s}\n")).collect()
}

const SCRATCH_STEPS: &str = "\
mount --make-rslave /
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /tmp
mkdir /tmp/newroot
mkdir /tmp/oldroot
";

const PIVOT_STEPS: &str = "\
cd /newroot
pivot_root . .
umount --lazy .
cd /
";

#[test]
fn fuse_mode_serves_the_image_with_its_mount_points() {
    let expected = format!(
        "{SCRATCH_STEPS}\
pivot_root /tmp /tmp/oldroot
cd /
mount -t fuse.bundle -o ro,nosuid,nodev bundle /newroot (the image served, with empty /home/alice, /opt, /opt/in, /opt/motd)
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/home/alice /newroot/home/alice
mount --rbind /oldroot/data /newroot/opt/in
mount -o remount,bind,ro --recursive /newroot/opt/in
mount --rbind /oldroot/etc/motd /newroot/opt/motd
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&with_mount_points(), &Root::Fuse), expected);
    let plain = listing(&plain(), &Root::Fuse);
    assert!(plain.contains("bundle /newroot (the image served)\n"), "{plain}");
}

#[test]
fn extract_mode_binds_the_tree_read_only() {
    let expected = format!(
        "{SCRATCH_STEPS}\
pivot_root /tmp /tmp/oldroot
cd /
mount --rbind /oldroot/home/alice/.cache/bundle/images/ab12 /newroot
mount -o remount,bind,ro --recursive /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/etc/passwd /newroot/etc/passwd
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&plain(), &tree()), expected);
}

#[test]
fn extract_mode_with_mount_points_puts_an_overlay_on_the_tree() {
    let expected = format!(
        "{SCRATCH_STEPS}\
pivot_root /tmp /tmp/oldroot
cd /
mkdir /layer
mkdir /layer/home
mkdir /layer/home/alice
mkdir /layer/opt
mkdir /layer/opt/in
touch /layer/opt/motd
mount -t overlay -o nosuid,nodev,lowerdir=/layer:/oldroot/home/alice/.cache/bundle/images/ab12 overlay /newroot
mount -o remount,bind,ro --recursive /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/home/alice /newroot/home/alice
mount --rbind /oldroot/data /newroot/opt/in
mount -o remount,bind,ro --recursive /newroot/opt/in
mount --rbind /oldroot/etc/motd /newroot/opt/motd
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&with_mount_points(), &tree()), expected);
}

#[test]
fn kernel_mode_mounts_the_loop_device_before_the_image_is_asked_anything() {
    let scratch: String = scratch(&kernel()).iter().map(|s| format!("{s}\n")).collect();
    assert_eq!(
        scratch,
        format!(
            "{SCRATCH_STEPS}\
mkdir /tmp/lower
pivot_root /tmp /tmp/oldroot
cd /
mount -t squashfs -o ro,nosuid,nodev /oldroot/dev/loop3 /lower
"
        )
    );
    let expected = format!(
        "{scratch}\
mount --rbind /lower /newroot
mount -o remount,bind,ro --recursive /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/etc/passwd /newroot/etc/passwd
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&plain(), &kernel()), expected);
    let overlaid = listing(&with_mount_points(), &kernel());
    assert!(overlaid.contains("lowerdir=/layer:/lower overlay /newroot\n"), "{overlaid}");
}

#[test]
fn the_calls_carry_the_flags_of_their_steps() {
    let mut sys = Recorder::default();
    run(&all(&with_mount_points(), &tree()), &mut sys).unwrap();
    let c = &sys.calls;
    assert_eq!(
        (c[0].what, c[0].path.as_path(), c[0].flags),
        ("mount", Path::new("/"), MsFlags::MS_SLAVE | MsFlags::MS_REC)
    );
    assert_eq!((c[1].path.as_path(), c[1].flags), (Path::new("/tmp"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
    assert_eq!(c[1].data.as_deref(), Some("mode=0755"));
    let binds: Vec<&Call> = c.iter().filter(|c| c.flags.contains(MsFlags::MS_BIND)).collect();
    assert!(binds.iter().all(|b| b.flags == MsFlags::MS_BIND | MsFlags::MS_REC), "every bind is recursive: {binds:?}");
    let ro: Vec<&Path> = c.iter().filter(|c| c.what == "mount_setattr").map(|c| c.path.as_path()).collect();
    assert_eq!(ro, [Path::new("/newroot"), Path::new("/newroot/opt/in")]);
    // The root is read-only before anything is bound onto it, so that the binds keep
    // their own writability.
    let root_ro = c.iter().position(|c| c.what == "mount_setattr").unwrap();
    let first_bind = c.iter().position(|c| c.flags.contains(MsFlags::MS_BIND)).unwrap();
    assert!(root_ro < first_bind);
    assert_eq!(c.last().unwrap().what, "chdir");
}

fn with_writes(plan: Plan, writes: Writes) -> Plan {
    Plan { writes, ..plan }
}

#[test]
fn writable_tmpfs_in_fuse_mode_serves_the_image_below_an_overlay() {
    let expected = format!(
        "{SCRATCH_STEPS}\
pivot_root /tmp /tmp/oldroot
cd /
mkdir /lower
mount -t fuse.bundle -o ro,nosuid,nodev bundle /lower (the image served as the caller's, with empty /home/alice, /opt, /opt/in, /opt/motd)
mkdir /upper
mkdir /work
mount -t overlay -o nosuid,nodev,lowerdir=/lower,upperdir=/upper,workdir=/work,userxattr overlay /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/home/alice /newroot/home/alice
mount --rbind /oldroot/data /newroot/opt/in
mount -o remount,bind,ro --recursive /newroot/opt/in
mount --rbind /oldroot/etc/motd /newroot/opt/motd
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&with_writes(with_mount_points(), Writes::Memory), &Root::Fuse), expected);
}

#[test]
fn a_persistent_overlay_keeps_the_runtimes_mount_points_out_of_the_users_directory() {
    let plan = with_writes(with_mount_points(), Writes::Dir("/scratch/alice/ov".into()));
    let expected = format!(
        "{SCRATCH_STEPS}\
pivot_root /tmp /tmp/oldroot
cd /
mkdir /layer
mkdir /layer/home
mkdir /layer/home/alice
mkdir /layer/opt
mkdir /layer/opt/in
touch /layer/opt/motd
mount -t overlay -o nosuid,nodev,lowerdir=/layer:/oldroot/home/alice/.cache/bundle/images/ab12,upperdir=/oldroot/scratch/alice/ov/upper,workdir=/oldroot/scratch/alice/ov/work,userxattr overlay /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/home/alice /newroot/home/alice
mount --rbind /oldroot/data /newroot/opt/in
mount -o remount,bind,ro --recursive /newroot/opt/in
mount --rbind /oldroot/etc/motd /newroot/opt/motd
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&plan, &tree()), expected);
    // Kernel mode: the same layers over the loop device's mount, nothing read-only.
    let kernel = listing(&with_writes(plain(), Writes::Dir("/scratch/alice/ov".into())), &kernel());
    assert!(kernel.contains("\nmount -t overlay -o nosuid,nodev,lowerdir=/lower,upperdir=/oldroot/scratch/alice/ov/upper,workdir=/oldroot/scratch/alice/ov/work,userxattr overlay /newroot\nmount --rbind /oldroot/proc"), "{kernel}");
    assert!(!kernel.contains("ro --recursive /newroot\n"), "{kernel}");
}

#[test]
fn links_go_into_the_layer_and_make_even_fuse_mode_overlay_the_image() {
    let plan = Plan { links: vec![("/usr/lib/libcuda.so".into(), "libcuda.so.1".into())], ..plain() };
    let expected = format!(
        "{SCRATCH_STEPS}\
pivot_root /tmp /tmp/oldroot
cd /
mkdir /lower
mount -t fuse.bundle -o ro,nosuid,nodev bundle /lower (the image served)
mkdir /layer
mkdir /layer/usr
mkdir /layer/usr/lib
ln -s libcuda.so.1 /layer/usr/lib/libcuda.so
mount -t overlay -o nosuid,nodev,lowerdir=/layer:/lower overlay /newroot
mount -o remount,bind,ro --recursive /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/etc/passwd /newroot/etc/passwd
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&plan, &Root::Fuse), expected);
}

/// For each call of a mode's list: make it fail, and check that the error names the
/// step that made it, with its path, and that no call came after it.
fn every_failure_stops_the_list(plan: &Plan, root: &Root) {
    let steps = all(plan, root);
    let mut clean = Recorder::default();
    let mut step_of_call = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        run(std::slice::from_ref(step), &mut clean).unwrap();
        step_of_call.resize(clean.calls.len(), i);
    }
    for (n, &i) in step_of_call.iter().enumerate() {
        let mut sys = Recorder::failing_at(n);
        let err = run(&steps, &mut sys).unwrap_err().0;
        assert_eq!(sys.calls.len(), n + 1, "calls went on after call {n} failed: {:?}", sys.calls);
        let step = steps[i].to_string();
        assert!(err.starts_with(&format!("cannot {step}: ")), "call {n} of `{step}` failed with: {err}");
        assert!(err.contains(&sys.calls[n].path.display().to_string()), "{err}");
        assert!(err.contains("Operation not permitted"), "{err}");
    }
}

#[test]
fn a_failing_step_names_itself_and_nothing_after_it_runs() {
    for root in [Root::Fuse, tree(), kernel()] {
        every_failure_stops_the_list(&plain(), &root);
        every_failure_stops_the_list(&with_mount_points(), &root);
        every_failure_stops_the_list(&with_writes(with_mount_points(), Writes::Memory), &root);
        every_failure_stops_the_list(&with_writes(plain(), Writes::Dir("/ov".into())), &root);
    }
}

const MOUNTINFO: &str = "\
22 27 0:21 / / rw,relatime - tmpfs tmpfs rw
30 22 0:40 / /newroot ro,relatime - overlay overlay rw
31 30 0:41 /data /newroot/opt/in rw,relatime master:1 - ext4 /dev/vda rw
32 31 0:42 / /newroot/opt/in/scratch\\040space rw,relatime - tmpfs tmpfs rw
33 30 0:43 / /newroot/opt/input rw,relatime - tmpfs tmpfs rw
";

#[test]
fn read_only_without_mount_setattr_remounts_every_submount() {
    let mut sys = Recorder { no_mount_setattr: true, mountinfo: MOUNTINFO.into(), ..Recorder::default() };
    run(&[Step::ReadOnly { at: "/newroot/opt/in".into() }], &mut sys).unwrap();
    let remounts: Vec<(&Path, MsFlags)> =
        sys.calls.iter().filter(|c| c.what == "mount").map(|c| (c.path.as_path(), c.flags)).collect();
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    assert_eq!(remounts, [(Path::new("/newroot/opt/in"), flags), (Path::new("/newroot/opt/in/scratch space"), flags)]);

    // A submount that refuses names itself.
    let mut sys =
        Recorder { no_mount_setattr: true, mountinfo: MOUNTINFO.into(), fail_at: Some(3), ..Recorder::default() };
    let err = run(&[Step::ReadOnly { at: "/newroot/opt/in".into() }], &mut sys).unwrap_err().0;
    assert!(err.contains("--recursive /newroot/opt/in: /newroot/opt/in/scratch space: "), "{err}");
    assert_eq!(sys.calls.len(), 4);
}

/// From the caller's situation to the steps, through the real planner: kernel mode,
/// a home the image lacks and a `:ro` user bind.
#[test]
fn a_callers_situation_becomes_a_kernel_start_up() {
    use crate::plan::{self, Found, Host, UserBind};
    let host_dirs = ["/proc", "/home/alice", "/data"];
    let host = |p: &Path| host_dirs.contains(&p.to_str()?).then(|| (Found::Dir, p.to_path_buf()));
    // What the mounted image at /lower shows.
    let image = |p: &Path| ["/", "/proc", "/home"].contains(&p.to_str()?).then_some(Found::Dir);
    let who = Host {
        cwd: "/home/alice".into(),
        home: Some("/home/alice".into()),
        rendezvous: vec![],
        binds: vec![UserBind::parse("/data:/in:ro").unwrap()],
        ..Host::default()
    };
    let sources = plan::resolve(&who, &host).unwrap();
    let plan = sources.place(&image).unwrap();
    let expected = format!(
        "{SCRATCH_STEPS}\
mkdir /tmp/lower
pivot_root /tmp /tmp/oldroot
cd /
mount -t squashfs -o ro,nosuid,nodev /oldroot/dev/loop3 /lower
mkdir /layer
mkdir /layer/home
mkdir /layer/home/alice
mkdir /layer/in
mount -t overlay -o nosuid,nodev,lowerdir=/layer:/lower overlay /newroot
mount -o remount,bind,ro --recursive /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/home/alice /newroot/home/alice
mount --rbind /oldroot/data /newroot/in
mount -o remount,bind,ro --recursive /newroot/in
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&plan, &kernel()), expected);
    // A missing source is the host phase's error, before anything is mounted.
    let who = Host { binds: vec![UserBind::parse("/nope:/in").unwrap()], ..who };
    assert!(plan::resolve(&who, &host).unwrap_err().contains("/nope: it does not exist on the host"));
}

/// From devices and a writable overlay to the steps, through the real planner: a
/// device node under `/dev` is already there (the host's `/dev` is bound), a library
/// lands in `/.bundle/host-libs`, a CDI link goes into the layer, writes into memory.
#[test]
fn devices_and_an_overlay_become_a_fuse_start_up() {
    use crate::plan::{self, Found, Host, Injected, UserBind};
    let host_paths = ["/proc", "/dev", "/dev/nvidia0", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"];
    let host = |p: &Path| {
        let kind = if ["/proc", "/dev"].contains(&p.to_str()?) { Found::Dir } else { Found::File };
        host_paths.contains(&p.to_str()?).then(|| (kind, p.to_path_buf()))
    };
    let image = |p: &Path| ["/", "/proc", "/dev", "/usr", "/usr/lib"].contains(&p.to_str()?).then_some(Found::Dir);
    let injected = Injected {
        binds: vec![
            UserBind { src: "/dev/nvidia0".into(), dst: "/dev/nvidia0".into(), readonly: false },
            UserBind {
                src: "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
                dst: "/.bundle/host-libs/libcuda.so.1".into(),
                readonly: true,
            },
        ],
        links: vec![("/usr/lib/libcuda.so".into(), "libcuda.so.1".into())],
        ..Injected::default()
    };
    let who = Host { cwd: "/".into(), injected, writes: Writes::Memory, ..Host::default() };
    let plan = plan::resolve(&who, &host).unwrap().place(&image).unwrap();
    let expected = format!(
        "{SCRATCH_STEPS}\
pivot_root /tmp /tmp/oldroot
cd /
mkdir /lower
mount -t fuse.bundle -o ro,nosuid,nodev bundle /lower (the image served as the caller's, with empty /.bundle, /.bundle/host-libs, /.bundle/host-libs/libcuda.so.1)
mkdir /layer
mkdir /layer/usr
mkdir /layer/usr/lib
ln -s libcuda.so.1 /layer/usr/lib/libcuda.so
mkdir /upper
mkdir /work
mount -t overlay -o nosuid,nodev,lowerdir=/layer:/lower,upperdir=/upper,workdir=/work,userxattr overlay /newroot
mount --rbind /oldroot/proc /newroot/proc
mount --rbind /oldroot/dev /newroot/dev
mount --rbind /oldroot/usr/lib/x86_64-linux-gnu/libcuda.so.1 /newroot/.bundle/host-libs/libcuda.so.1
mount -o remount,bind,ro --recursive /newroot/.bundle/host-libs/libcuda.so.1
{PIVOT_STEPS}"
    );
    assert_eq!(listing(&plan, &Root::Fuse), expected);
}
