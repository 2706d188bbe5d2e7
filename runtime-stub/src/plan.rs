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
//! under another is already visible and is left out.

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
/// order. Made before any namespace, so that a missing source is an early error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(Vec<Source>);

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
    wanted.extend(who.binds.iter().map(|b| Wanted {
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
    Ok(Sources(sources))
}

impl Sources {
    /// The image phase: where each source goes, against what the image has. `image`
    /// tells what a path of the image is (not following symlinks).
    pub fn place(&self, image: &dyn Fn(&Path) -> Option<Found>) -> Result<Plan, String> {
        let mut plan = Plan::default();
        for s in &self.0 {
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
                Ok(missing) => {
                    // Two binds under one missing directory need it made once.
                    for m in missing {
                        if !plan.mount_points.contains(&m) {
                            plan.mount_points.push(m);
                        }
                    }
                }
                Err(_) if s.optional && !SYSTEM_DIRS.contains(&s.dst.to_str().unwrap_or("")) => continue,
                Err(why) => return Err(why),
            }
            plan.binds.push(Bind { src: s.src.clone(), dst: s.dst.clone(), kind: s.kind, readonly: s.readonly });
        }
        Ok(plan)
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
}
