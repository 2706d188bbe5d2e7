//! The mount plan: which host paths the container will see, and where, decided as data
//! before any privileged call, in two phases: [`resolve`] asks the host (before any
//! namespace), [`Sources::place`] asks the image (kernel mode can only ask once the
//! image is mounted). `steps.rs` turns the plan into mounts; the tests here need no root.
//!
//! The container's root is the image. Onto it go, in this order: the kernel's views
//! (`/proc`, `/sys`, `/dev` with `/dev/shm`), the host's `/tmp`, the identity files in
//! `/etc`, the caller's `$HOME` and working directory, the directories where the
//! launcher's PMIx server waits for its ranks, and last the user's own binds. The
//! automatic binds are identity binds (same path inside as outside), so one that lies
//! under another is already visible and is left out. Between the launcher's directories
//! and the user's binds come what devices and host libraries add ([`Injected`]); and
//! the image itself may be made writable ([`Writes`]).

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What a path is, on the host or in the image (without following a final symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Dir,
    File,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path, with every symlink resolved (the host's root is not ours at bind time).
    pub src: PathBuf,
    /// Path inside the container.
    pub dst: PathBuf,
    pub kind: Kind,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub binds: Vec<Bind>,
    /// Destinations the image lacks, parents first: the runtime must make them exist
    /// (the FUSE server shows them as empty entries; other modes use an overlay).
    pub mount_points: Vec<(PathBuf, Kind)>,
    /// Symbolic links to add to the image, `(link, target)`; their parents exist in the
    /// image or are among the mount points.
    pub links: Vec<(PathBuf, PathBuf)>,
    pub writes: Writes,
}

/// Where the application's writes to the image go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Writes {
    /// Nowhere: the image is read-only.
    #[default]
    ReadOnly,
    /// `--bundle-writable-tmpfs`: into memory, gone with the container.
    Memory,
    /// `--bundle-overlay DIR`: into `DIR/upper` (with `DIR/work`), a host directory.
    Dir(PathBuf),
}

/// What devices (CDI, `--bundle-nv`) and host libraries add to the container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Injected {
    /// Host paths bound in: device nodes, libraries, tools.
    pub binds: Vec<UserBind>,
    /// Symbolic links made in the container, `(link, target)`.
    pub links: Vec<(PathBuf, PathBuf)>,
    /// Variables set in the application's environment, after the bundle's own.
    pub env: Vec<(String, String)>,
    /// Container directories put first in the application's `LD_LIBRARY_PATH`.
    pub lib_path: Vec<PathBuf>,
    /// `--bundle-host-mpi`: the bundle's MPI must have the host's soname.
    pub mpi: Option<MpiCheck>,
}

/// The host MPI's soname, which the image's MPI library must share (the ABI check
/// waits for the image phase: only then can the image be asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiCheck {
    pub host_soname: String,
    pub host_path: PathBuf,
}

/// Where an image keeps the libraries its loader finds without help.
const IMAGE_LIB_DIRS: [&str; 8] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];
/// The sonames MPI libraries have had: MPICH's ABI (MPICH ≥ 3.1, Intel MPI, MVAPICH,
/// Cray MPICH), Open MPI ≥ 3.0, Open MPI 2, older ones.
const MPI_SONAMES: [&str; 5] = ["libmpi.so.12", "libmpi.so.40", "libmpi.so.20", "libmpi.so.1", "libmpi.so.0"];

impl MpiCheck {
    /// The bundle's MPI has the host's soname, or the one line that says why not.
    fn check(&self, image: &dyn Fn(&Path) -> Option<Found>) -> Result<(), String> {
        let in_image = |name: &str| {
            IMAGE_LIB_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| image(p).is_some_and(|f| f != Found::Dir))
        };
        if in_image(&self.host_soname).is_some() {
            return Ok(());
        }
        let host = format!("{} ({})", self.host_soname, self.host_path.display());
        match MPI_SONAMES.iter().find_map(|n| in_image(n)) {
            Some(ours) => Err(format!(
                "--bundle-host-mpi: the bundle's MPI library is {} but the host's is {host}: their ABIs differ \
                 (the sonames must match); run without --bundle-host-mpi to use the bundle's own MPI",
                ours.display()
            )),
            None => Err(format!(
                "--bundle-host-mpi: the bundle has no MPI library (libmpi.so.*) in its library directories to \
                 compare with the host's {host}"
            )),
        }
    }
}

impl Injected {
    /// `other`'s additions after ours.
    pub fn extend(&mut self, other: Injected) {
        // Two devices may bring the same library or node: it is bound once.
        for b in other.binds {
            if !self.binds.iter().any(|o| o.dst == b.dst) {
                self.binds.push(b);
            }
        }
        self.links.extend(other.links);
        self.env.extend(other.env);
        self.mpi = self.mpi.take().or(other.mpi);
        for d in other.lib_path {
            if !self.lib_path.contains(&d) {
                self.lib_path.push(d);
            }
        }
    }
}

/// The caller's situation, as far as the plan depends on it.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
    /// Directories the launcher points its ranks at (PMIx rendezvous, job tmpdir).
    pub rendezvous: Vec<PathBuf>,
    /// `--bundle-bind` and `BUNDLE_BIND`, in order.
    pub binds: Vec<UserBind>,
    /// Devices and host libraries.
    pub injected: Injected,
    pub writes: Writes,
}

/// A bind the user asked for: `SRC[:DST[:ro]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

impl UserBind {
    /// The spec's syntax lives in `bundle_format::BindSpec`, shared with the fuzz target.
    pub fn parse(spec: &str) -> Result<UserBind, String> {
        let b = bundle_format::BindSpec::parse(spec)?;
        Ok(UserBind { src: b.src.into(), dst: b.dst.into(), readonly: b.readonly })
    }
}

/// Kernel interfaces and shared scratch space: the container is useless without them.
const SYSTEM_DIRS: [&str; 4] = ["/proc", "/sys", "/dev", "/tmp"];
/// Who the user is and how to reach the network: bound when the host has them.
const IDENTITY_FILES: [&str; 5] = ["/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf", "/etc/localtime"];

struct Wanted {
    src: PathBuf,
    dst: PathBuf,
    /// A missing or unsuitable place, on the host or in the image, is skipped rather
    /// than an error.
    optional: bool,
    readonly: bool,
}

impl Wanted {
    fn identity(path: &Path, optional: bool) -> Wanted {
        Wanted { src: path.to_path_buf(), dst: path.to_path_buf(), optional, readonly: false }
    }
}

/// The host phase's answer: every wanted bind whose source the host has, resolved, in
/// order, and what else the image is to get. Made before any namespace, so that a
/// missing source is an early error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    binds: Vec<Source>,
    links: Vec<(PathBuf, PathBuf)>,
    writes: Writes,
    mpi: Option<MpiCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    /// Every symlink resolved (the host's root is not ours at bind time).
    src: PathBuf,
    /// Normalised.
    dst: PathBuf,
    kind: Kind,
    optional: bool,
    readonly: bool,
    /// Same path inside as outside (as asked, before symlinks were resolved).
    identity: bool,
}

/// Builds the plan: [`resolve`] on the host, then [`Sources::place`] in the image.
#[cfg(test)]
pub fn build(
    who: &Host,
    host: &dyn Fn(&Path) -> Option<(Found, PathBuf)>,
    image: &dyn Fn(&Path) -> Option<Found>,
) -> Result<Plan, String> {
    resolve(who, host)?.place(image)
}

/// The host phase: what the caller's situation asks to bind, each source looked up on
/// the host. `host` tells what a host path is and where its symlinks lead (as a bind
/// would follow them).
pub fn resolve(who: &Host, host: &dyn Fn(&Path) -> Option<(Found, PathBuf)>) -> Result<Sources, String> {
    let mut wanted: Vec<Wanted> =
        SYSTEM_DIRS.iter().chain(IDENTITY_FILES.iter()).map(|p| Wanted::identity(Path::new(p), true)).collect();
    wanted.extend(who.home.iter().map(|h| Wanted::identity(h, true)));
    wanted.push(Wanted::identity(&who.cwd, false));
    wanted.extend(who.rendezvous.iter().map(|d| Wanted::identity(d, true)));
    wanted.extend(who.injected.binds.iter().chain(&who.binds).map(|b| Wanted {
        src: b.src.clone(),
        dst: b.dst.clone(),
        optional: false,
        readonly: b.readonly,
    }));

    let mut sources = Vec::new();
    for w in wanted {
        let dst = normalise(&w.dst)?;
        let wanted_src = normalise(&w.src)?;
        let identity = wanted_src == dst;
        if dst == Path::new("/") {
            if w.optional || identity {
                continue;
            }
            return Err(format!("cannot bind {} over the container's root", w.src.display()));
        }
        let (kind, src) = match host(&wanted_src) {
            Some((Found::Dir, real)) => (Kind::Dir, real),
            Some((Found::File, real)) => (Kind::File, real),
            _ if w.optional => continue,
            _ => return Err(format!("cannot bind {}: it does not exist on the host", w.src.display())),
        };
        sources.push(Source { src, dst, kind, optional: w.optional, readonly: w.readonly, identity });
    }
    let mut links = Vec::new();
    for (link, target) in &who.injected.links {
        links.push((normalise(link)?, target.clone()));
    }
    Ok(Sources { binds: sources, links, writes: who.writes.clone(), mpi: who.injected.mpi.clone() })
}

impl Sources {
    /// The image phase: where each source goes, against what the image has. `image`
    /// tells what a path of the image is (not following symlinks).
    pub fn place(&self, image: &dyn Fn(&Path) -> Option<Found>) -> Result<Plan, String> {
        if let Some(mpi) = &self.mpi {
            mpi.check(image)?;
        }
        let mut plan = Plan { writes: self.writes.clone(), ..Plan::default() };
        for s in &self.binds {
            if let Some(outer) = plan.binds.iter().find(|b| s.dst.starts_with(&b.dst)) {
                if s.identity && !s.readonly {
                    continue; // already visible through `outer`
                }
                return Err(format!(
                    "cannot bind {} at {}: it lies inside {}, which is bound from the host; choose another destination",
                    s.src.display(),
                    s.dst.display(),
                    outer.dst.display()
                ));
            }
            match place_in_image(&s.dst, s.kind, image) {
                Ok(missing) => plan.add_mount_points(missing),
                Err(_) if s.optional && !SYSTEM_DIRS.contains(&s.dst.to_str().unwrap_or("")) => continue,
                Err(why) => return Err(why),
            }
            plan.binds.push(Bind { src: s.src.clone(), dst: s.dst.clone(), kind: s.kind, readonly: s.readonly });
        }
        for (link, target) in &self.links {
            if image(link).is_some() || plan.links.iter().any(|(l, _)| l == link) {
                continue; // the image has it already: its own wins
            }
            let parent = link.parent().unwrap_or(Path::new("/"));
            if parent != Path::new("/") {
                plan.add_mount_points(place_in_image(parent, Kind::Dir, image)?);
            }
            plan.links.push((link.clone(), target.clone()));
        }
        Ok(plan)
    }
}

impl Plan {
    /// Two binds under one missing directory need it made once.
    fn add_mount_points(&mut self, missing: Vec<(PathBuf, Kind)>) {
        for m in missing {
            if !self.mount_points.contains(&m) {
                self.mount_points.push(m);
            }
        }
    }
}

/// Checks that `dst` can receive a bind of `kind` in the image: every existing
/// component a real directory (a symlink could point the mount outside the container),
/// the last one of the right kind. Returns the components that must be created.
fn place_in_image(
    dst: &Path,
    kind: Kind,
    image: &dyn Fn(&Path) -> Option<Found>,
) -> Result<Vec<(PathBuf, Kind)>, String> {
    let mut missing = Vec::new();
    let mut cur = PathBuf::from("/");
    let parts: Vec<_> = dst.components().skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        cur.push(part);
        let last = i + 1 == parts.len();
        let want = if last { kind } else { Kind::Dir };
        if !missing.is_empty() {
            missing.push((cur.clone(), want));
            continue;
        }
        match (image(&cur), want) {
            (None, _) => missing.push((cur.clone(), want)),
            (Some(Found::Dir), Kind::Dir) | (Some(Found::File), Kind::File) => {}
            (Some(Found::Symlink), _) => {
                return Err(format!("cannot bind {}: {} is a symbolic link in the image", dst.display(), cur.display()))
            }
            (Some(_), _) => {
                return Err(format!(
                    "cannot bind {}: {} in the image is not a {}",
                    dst.display(),
                    cur.display(),
                    if want == Kind::Dir { "directory" } else { "file" }
                ))
            }
        }
    }
    Ok(missing)
}

/// An absolute path without `.`/`..`, so that prefix tests mean what they say.
fn normalise(p: &Path) -> Result<PathBuf, String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(entries: &'static [(&'static str, Found)]) -> impl Fn(&Path) -> Option<Found> {
        move |p: &Path| entries.iter().find(|(q, _)| Path::new(q) == p).map(|(_, f)| *f)
    }

    /// The host as the plan sees it: `/etc/localtime` is a link to the zone file.
    fn host(p: &Path) -> Option<(Found, PathBuf)> {
        if p == Path::new("/etc/localtime") {
            return Some((Found::File, "/usr/share/zoneinfo/UTC".into()));
        }
        fs(HOST)(p).map(|f| (f, p.to_path_buf()))
    }

    const HOST: &[(&str, Found)] = &[
        ("/proc", Found::Dir),
        ("/sys", Found::Dir),
        ("/dev", Found::Dir),
        ("/tmp", Found::Dir),
        ("/etc/passwd", Found::File),
        ("/etc/group", Found::File),
        ("/etc/hosts", Found::File),
        ("/etc/resolv.conf", Found::File),
        ("/home/alice", Found::Dir),
        ("/home/alice/run", Found::Dir),
        ("/scratch/job", Found::Dir),
    ];
    const IMAGE: &[(&str, Found)] = &[
        ("/proc", Found::Dir),
        ("/sys", Found::Dir),
        ("/dev", Found::Dir),
        ("/tmp", Found::Dir),
        ("/home", Found::Dir),
        ("/etc", Found::Dir),
        ("/etc/passwd", Found::File),
        ("/etc/group", Found::File),
        ("/etc/hosts", Found::File),
        ("/etc/resolv.conf", Found::Symlink),
        ("/etc/localtime", Found::File),
        ("/bin", Found::Symlink),
    ];

    fn dsts(p: &Plan) -> Vec<String> {
        p.binds.iter().map(|b| b.dst.display().to_string()).collect()
    }

    #[test]
    fn standard_binds_in_order_and_nested_ones_left_out() {
        let who = Host { cwd: "/home/alice/run".into(), home: Some("/home/alice".into()), ..Host::default() };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        // resolv.conf is a symlink in the image: skipped, not followed.
        assert_eq!(
            dsts(&plan),
            [
                "/proc",
                "/sys",
                "/dev",
                "/tmp",
                "/etc/passwd",
                "/etc/group",
                "/etc/hosts",
                "/etc/localtime",
                "/home/alice"
            ]
        );
        let localtime = plan.binds.iter().find(|b| b.dst == Path::new("/etc/localtime")).unwrap();
        assert_eq!(localtime.src, Path::new("/usr/share/zoneinfo/UTC"));
        assert_eq!(plan.mount_points, [(PathBuf::from("/home/alice"), Kind::Dir)]);
    }

    #[test]
    fn missing_parents_become_mount_points_in_order() {
        let who = Host { cwd: "/scratch/job/../job".into(), home: None, ..Host::default() };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        assert_eq!(dsts(&plan).last().unwrap(), "/scratch/job");
        assert_eq!(
            plan.mount_points,
            [(PathBuf::from("/scratch"), Kind::Dir), (PathBuf::from("/scratch/job"), Kind::Dir)]
        );
    }

    #[test]
    fn working_directory_through_an_image_symlink_is_refused() {
        let who = Host { cwd: "/bin/x".into(), home: None, ..Host::default() };
        let host = |p: &Path| {
            if p == Path::new("/bin/x") {
                Some((Found::Dir, p.to_path_buf()))
            } else {
                host(p)
            }
        };
        let err = build(&who, &host, &fs(IMAGE)).unwrap_err();
        assert!(err.contains("/bin is a symbolic link"), "{err}");
    }

    #[test]
    fn root_as_working_directory_binds_nothing_extra() {
        let who = Host { cwd: "/".into(), home: Some("/".into()), ..Host::default() };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        assert!(!dsts(&plan).contains(&"/".to_string()));
        assert!(plan.mount_points.is_empty());
    }

    #[test]
    fn user_binds_parse_and_land_last() {
        assert_eq!(
            UserBind::parse("/data:/in:ro").unwrap(),
            UserBind { src: "/data".into(), dst: "/in".into(), readonly: true }
        );
        assert_eq!(UserBind::parse("/data").unwrap().dst, Path::new("/data"));
        assert!(UserBind::parse("data").is_err());
        assert!(UserBind::parse("/a:/b/../c").is_err());
        assert!(UserBind::parse("/a:/b:rx").is_err());
        let who = Host {
            cwd: "/".into(),
            binds: vec![UserBind::parse("/scratch/job:/opt/in:ro").unwrap()],
            ..Host::default()
        };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        let last = plan.binds.last().unwrap();
        assert_eq!(
            (last.src.as_path(), last.dst.as_path(), last.readonly),
            (Path::new("/scratch/job"), Path::new("/opt/in"), true)
        );
        assert_eq!(plan.mount_points, [(PathBuf::from("/opt"), Kind::Dir), (PathBuf::from("/opt/in"), Kind::Dir)]);
    }

    #[test]
    fn a_missing_bind_source_or_one_inside_another_bind_is_an_error() {
        let who = Host { cwd: "/".into(), binds: vec![UserBind::parse("/nope:/x").unwrap()], ..Host::default() };
        let err = build(&who, &host, &fs(IMAGE)).unwrap_err();
        assert!(err.contains("/nope: it does not exist on the host"), "{err}");
        let who =
            Host { cwd: "/".into(), binds: vec![UserBind::parse("/scratch/job:/tmp/x").unwrap()], ..Host::default() };
        let err = build(&who, &host, &fs(IMAGE)).unwrap_err();
        assert!(err.contains("inside /tmp"), "{err}");
    }

    #[test]
    fn rendezvous_dirs_are_bound_when_present_and_not_covered() {
        let who = Host {
            cwd: "/".into(),
            rendezvous: vec!["/scratch/job".into(), "/tmp/pmix".into(), "/gone".into()],
            ..Host::default()
        };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        assert_eq!(dsts(&plan).last().unwrap(), "/scratch/job");
        assert!(!dsts(&plan).contains(&"/gone".to_string()));
    }

    #[test]
    fn binds_under_one_missing_directory_make_it_once() {
        let who = Host {
            cwd: "/".into(),
            rendezvous: vec!["/scratch/job".into()],
            binds: vec![UserBind::parse("/home/alice:/scratch/other").unwrap()],
            ..Host::default()
        };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        assert_eq!(
            plan.mount_points,
            [
                (PathBuf::from("/scratch"), Kind::Dir),
                (PathBuf::from("/scratch/job"), Kind::Dir),
                (PathBuf::from("/scratch/other"), Kind::Dir)
            ]
        );
    }

    #[test]
    fn device_links_are_placed_unless_the_image_has_them() {
        let injected = Injected {
            links: vec![
                ("/usr/lib/libcuda.so".into(), "libcuda.so.1".into()),
                ("/etc/hosts".into(), "elsewhere".into()),
            ],
            ..Injected::default()
        };
        let who = Host { cwd: "/".into(), injected, ..Host::default() };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        assert_eq!(plan.links, [(PathBuf::from("/usr/lib/libcuda.so"), PathBuf::from("libcuda.so.1"))]);
        assert_eq!(plan.mount_points, [(PathBuf::from("/usr"), Kind::Dir), (PathBuf::from("/usr/lib"), Kind::Dir)]);
    }

    #[test]
    fn the_host_mpi_must_have_the_bundles_soname() {
        let check = |host_soname: &str, image: &'static [(&'static str, Found)]| {
            let mpi = MpiCheck { host_soname: host_soname.into(), host_path: "/opt/mpi/lib/x".into() };
            let who = Host {
                cwd: "/".into(),
                injected: Injected { mpi: Some(mpi), ..Injected::default() },
                ..Host::default()
            };
            build(&who, &host, &fs(image))
        };
        const OPEN_MPI: &[(&str, Found)] =
            &[("/proc", Found::Dir), ("/usr/lib/x86_64-linux-gnu/libmpi.so.40", Found::Symlink)];
        assert!(check("libmpi.so.40", OPEN_MPI).is_ok());
        let err = check("libmpi.so.12", OPEN_MPI).unwrap_err();
        assert!(err.contains("the bundle's MPI library is /usr/lib/x86_64-linux-gnu/libmpi.so.40"), "{err}");
        assert!(err.contains("the host's is libmpi.so.12 (/opt/mpi/lib/x)"), "{err}");
        let err = check("libmpi.so.12", &[("/proc", Found::Dir)]).unwrap_err();
        assert!(err.contains("the bundle has no MPI library"), "{err}");
    }
}
