//! Running the application in its container: the start-up, as one story.
//!
//! ```text
//! trailer ─► mode ─► session key ─► join the session's container ──────────────► cwd ─► exec
//!                                   └─ none yet: start a keeper, which builds it:
//!                                      plan ─► user+mount ns ─► scratch root ─► image
//!                                      at /newroot ─► binds ─► pivot_root
//! ```
//! Everything that can fail because of the input (no entrypoint, an unusable mode, a
//! working directory that cannot be bound) fails before a namespace is made.

use crate::cache;
use crate::exec::exec;
use crate::fail::{Context, Error, Result};
use crate::fuse;
use crate::keeper;
use crate::namespaces;
use crate::options::{Action, Mode, Options};
use crate::plan::{self, Found, Host, Plan};
use crate::rootfs;
use crate::session::{self, Rendezvous};
use backhand::InnerNode;
use bundle_format::{Bundle, Image};
use nix::unistd::{getgid, getuid};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a container outlives its last user unless told otherwise.
const DEFAULT_LINGER: Duration = Duration::from_secs(3);

pub fn run(bundle: &Bundle, opts: &Options) -> Result<std::convert::Infallible> {
    let argv = command_line(bundle, opts)?;
    let mode = choose_mode(opts.mode)?;
    let cwd =
        std::env::current_dir().context(|| "cannot determine the working directory".to_string())?;
    let who = Host {
        cwd: cwd.clone(),
        home: std::env::var_os("HOME").map(PathBuf::from),
    };
    let key = session::key(&[
        &bundle.image_digest(),
        mode.name(),
        &who.cwd.to_string_lossy(),
        &who.home
            .as_deref()
            .unwrap_or(Path::new(""))
            .to_string_lossy(),
        &session::job(opts.share.as_deref()),
    ]);
    let rv = Rendezvous::for_key(&key)?;
    let linger = linger(opts.linger)?;
    session::attach(&rv, || {
        keeper::start(&rv, linger, || build(bundle, mode, &who))
    })?;
    std::env::set_current_dir(&cwd)
        .context(|| format!("cannot enter {} in the container", cwd.display()))?;
    Err(exec(&argv, &bundle.metadata.env))
}

/// Runs in the keeper: makes the namespaces and the root, and stays inside them.
/// Returns whether a user namespace was made (ranks must join it too).
fn build(bundle: &Bundle, mode: Mode, who: &Host) -> Result<bool> {
    let (uid, gid) = (getuid(), getgid());
    let image = Arc::new(Image::open(&bundle.file, bundle.trailer.image_offset)?);
    let (plan, tree): (Plan, Option<PathBuf>) = match mode {
        Mode::Fuse => (
            plan::build(who, &host_found, &|p| image_found(&image, p))?,
            None,
        ),
        Mode::Extract => {
            let tree = cache::cached_tree(bundle, &image)?;
            (
                plan::build(who, &host_found, &|p| dir_found(&tree, p))?,
                Some(tree),
            )
        }
    };
    namespaces::enter(uid, gid)?;
    rootfs::enter_scratch_root()?;
    match &tree {
        None => {
            let dev = fuse::open_device_in(Path::new(rootfs::OLDROOT))?;
            fuse::mount_image(
                dev,
                image,
                &plan.mount_points,
                Path::new(rootfs::NEWROOT),
                uid,
                gid,
            )?
        }
        Some(tree) => rootfs::mount_tree(tree, &plan)?,
    }
    rootfs::apply_binds(&plan.binds)?;
    rootfs::pivot_into_container()?;
    Ok(true)
}

/// What to run: the entrypoint with the caller's arguments, or what `--bundle-exec` /
/// `--bundle-shell` asked for.
fn command_line(bundle: &Bundle, opts: &Options) -> Result<Vec<OsString>> {
    let prefix: Vec<OsString> = match opts.action {
        Action::Exec => Vec::new(),
        Action::Shell => vec!["/bin/sh".into()],
        _ if bundle.metadata.entrypoint.is_empty() => {
            return Err(Error(
                "this bundle has no entrypoint; run a program of it with --bundle-exec CMD".into(),
            ))
        }
        _ => bundle
            .metadata
            .entrypoint
            .iter()
            .map(OsString::from)
            .collect(),
    };
    Ok(prefix
        .into_iter()
        .chain(opts.args.iter().cloned())
        .collect())
}

/// `--bundle-mode`, else `BUNDLE_MODE`, else fuse where `/dev/fuse` can be opened.
fn choose_mode(flag: Option<Mode>) -> Result<Mode> {
    let forced = match (flag, std::env::var("BUNDLE_MODE")) {
        (Some(m), _) => Some(m),
        (None, Ok(v)) if !v.is_empty() => {
            Some(Mode::parse(&v).map_err(|e| Error(format!("BUNDLE_MODE: {}", e.0)))?)
        }
        _ => None,
    };
    match forced {
        Some(Mode::Fuse) => match fuse::open_device_in(Path::new("/")) {
            Ok(_) => Ok(Mode::Fuse),
            Err(e) => Err(Error(format!(
                "fuse mode: {}; use --bundle-mode=extract",
                e.0
            ))),
        },
        Some(Mode::Extract) => Ok(Mode::Extract),
        None => Ok(if fuse::open_device_in(Path::new("/")).is_ok() {
            Mode::Fuse
        } else {
            Mode::Extract
        }),
    }
}

/// `--bundle-linger`, else `BUNDLE_LINGER`, in seconds (fractions allowed).
fn linger(flag: Option<f64>) -> Result<Duration> {
    let secs = match (flag, std::env::var("BUNDLE_LINGER")) {
        (Some(s), _) => s,
        (None, Ok(v)) if !v.is_empty() => v
            .parse::<f64>()
            .map_err(|_| Error(format!("BUNDLE_LINGER={v} is not a number of seconds")))?,
        _ => return Ok(DEFAULT_LINGER),
    };
    Duration::try_from_secs_f64(secs)
        .map_err(|_| Error(format!("linger {secs} is not a number of seconds")))
}

fn host_found(p: &Path) -> Option<(Found, PathBuf)> {
    let real = fs::canonicalize(p).ok()?;
    let m = fs::metadata(&real).ok()?;
    Some((if m.is_dir() { Found::Dir } else { Found::File }, real))
}

fn image_found(image: &Image, p: &Path) -> Option<Found> {
    image.lookup(p).map(|id| match image.inner(id) {
        InnerNode::Dir(_) => Found::Dir,
        InnerNode::File(_) => Found::File,
        InnerNode::Symlink(_) => Found::Symlink,
        _ => Found::Other,
    })
}

fn dir_found(tree: &Path, p: &Path) -> Option<Found> {
    let m = fs::symlink_metadata(tree.join(p.strip_prefix("/").unwrap_or(p))).ok()?;
    let t = m.file_type();
    Some(if t.is_symlink() {
        Found::Symlink
    } else if t.is_dir() {
        Found::Dir
    } else if t.is_file() {
        Found::File
    } else {
        Found::Other
    })
}
