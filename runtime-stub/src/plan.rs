//! The mount plan: which host paths the container will see, and where, decided as data
//! before any privileged call. `rootfs.rs` carries it out; the tests here need no root.
//!
//! The container's root is the image. Onto it go, in this order: the kernel's views
//! (`/proc`, `/sys`, `/dev` with `/dev/shm`), the host's `/tmp`, the identity files in
//! `/etc`, the caller's `$HOME` and working directory. Every bind is an identity bind
//! (same path inside as outside), so one that lies under another is already visible
//! and is left out.

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
#[derive(Debug, Clone)]
pub struct Host {
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
}

/// Kernel interfaces and shared scratch space: the container is useless without them.
const SYSTEM_DIRS: [&str; 4] = ["/proc", "/sys", "/dev", "/tmp"];
/// Who the user is and how to reach the network: bound when the host has them.
const IDENTITY_FILES: [&str; 5] = [
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/localtime",
];

struct Wanted {
    path: PathBuf,
    /// A missing or unsuitable place in the image is skipped rather than an error.
    optional: bool,
}

/// Builds the plan. `host` tells what a host path is and where its symlinks lead (as a
/// bind would follow them); `image` tells what a path of the image is (not following them).
pub fn build(
    who: &Host,
    host: &dyn Fn(&Path) -> Option<(Found, PathBuf)>,
    image: &dyn Fn(&Path) -> Option<Found>,
) -> Result<Plan, String> {
    let mut wanted: Vec<Wanted> = SYSTEM_DIRS
        .iter()
        .chain(IDENTITY_FILES.iter())
        .map(|p| Wanted {
            path: PathBuf::from(p),
            optional: true,
        })
        .collect();
    wanted.extend(who.home.iter().map(|h| Wanted {
        path: h.clone(),
        optional: true,
    }));
    wanted.push(Wanted {
        path: who.cwd.clone(),
        optional: false,
    });

    let mut plan = Plan::default();
    for w in wanted {
        let path = normalise(&w.path)?;
        if path == Path::new("/") || plan.binds.iter().any(|b| path.starts_with(&b.dst)) {
            continue;
        }
        let (kind, src) = match host(&path) {
            Some((Found::Dir, real)) => (Kind::Dir, real),
            Some((Found::File, real)) => (Kind::File, real),
            _ if w.optional => continue,
            _ => return Err(format!("{} does not exist on the host", path.display())),
        };
        match place_in_image(&path, kind, image) {
            Ok(missing) => plan.mount_points.extend(missing),
            Err(_) if w.optional && !SYSTEM_DIRS.contains(&path.to_str().unwrap_or("")) => continue,
            Err(why) => return Err(why),
        }
        plan.binds.push(Bind {
            src,
            dst: path,
            kind,
            readonly: false,
        });
    }
    Ok(plan)
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
                return Err(format!(
                    "cannot bind {}: {} is a symbolic link in the image",
                    dst.display(),
                    cur.display()
                ))
            }
            (Some(_), _) => {
                return Err(format!(
                    "cannot bind {}: {} in the image is not a {}",
                    dst.display(),
                    cur.display(),
                    if want == Kind::Dir {
                        "directory"
                    } else {
                        "file"
                    }
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
        move |p: &Path| {
            entries
                .iter()
                .find(|(q, _)| Path::new(q) == p)
                .map(|(_, f)| *f)
        }
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
        p.binds
            .iter()
            .map(|b| b.dst.display().to_string())
            .collect()
    }

    #[test]
    fn standard_binds_in_order_and_nested_ones_left_out() {
        let who = Host {
            cwd: "/home/alice/run".into(),
            home: Some("/home/alice".into()),
        };
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
        let localtime = plan
            .binds
            .iter()
            .find(|b| b.dst == Path::new("/etc/localtime"))
            .unwrap();
        assert_eq!(localtime.src, Path::new("/usr/share/zoneinfo/UTC"));
        assert_eq!(
            plan.mount_points,
            [(PathBuf::from("/home/alice"), Kind::Dir)]
        );
    }

    #[test]
    fn missing_parents_become_mount_points_in_order() {
        let who = Host {
            cwd: "/scratch/job/../job".into(),
            home: None,
        };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        assert_eq!(dsts(&plan).last().unwrap(), "/scratch/job");
        assert_eq!(
            plan.mount_points,
            [
                (PathBuf::from("/scratch"), Kind::Dir),
                (PathBuf::from("/scratch/job"), Kind::Dir)
            ]
        );
    }

    #[test]
    fn working_directory_through_an_image_symlink_is_refused() {
        let who = Host {
            cwd: "/bin/x".into(),
            home: None,
        };
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
        let who = Host {
            cwd: "/".into(),
            home: Some("/".into()),
        };
        let plan = build(&who, &host, &fs(IMAGE)).unwrap();
        assert!(!dsts(&plan).contains(&"/".to_string()));
        assert!(plan.mount_points.is_empty());
    }
}
