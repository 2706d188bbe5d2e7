//! Running the application in its container: the start-up, as one story.
//!
//! ```text
//! rank:   mode ─► the caller's situation ─► session key ─► join the session's container
//!         ─► command ─► cwd ─► env ─► exec
//!                    (none yet: start a keeper, which builds it)
//! keeper: plan, host phase ─► the image's source ─► namespaces ─► steps: scratch root
//!         ─► plan, image phase ─► steps: image at /newroot, binds, pivot_root ─► serve
//! ```
//! Everything that can fail because of the input (no entrypoint, an unusable mode, a
//! bind whose source is missing) fails before a namespace is made; so does what the
//! image must have, except in kernel mode, where only the kernel reads the image and
//! the plan's image phase waits until the kernel has mounted it.

use crate::cache;
use crate::exec::{drop_privileges, environment, exec};
use crate::fail::{Context, Error, Result};
use crate::fuse;
use crate::host;
use crate::host_mode;
use crate::integrity::{self, open_image};
use crate::keeper;
use crate::loopdev;
use crate::namespaces;
use crate::options::{Action, Mode, Options};
use crate::plan::{self, Found, Host, Plan};
use crate::private_pages;
use crate::session;
use crate::steps::{self, Root, LOWER, OLDROOT};
use crate::sys::{Linux, Sys};
use bundle_format::Bundle;
use bundle_squashfs::{Image, Kind as NodeKind};
use nix::unistd::{geteuid, getgid, getuid};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn run(bundle: &Bundle, opts: &Options) -> Result<std::convert::Infallible> {
    // A multi-call name is looked up in the container, once we are in it; any other
    // command line is known (or wrong) now.
    let called_as = multicall_name(opts);
    let known = match called_as {
        None => Some(command_line(bundle, opts, None)?),
        Some(_) => None,
    };
    let (mode, forced) = host::choose_mode(opts.mode)?;
    if mode == Mode::Host {
        return run_without_namespaces(bundle, opts, known);
    }
    let who = host::caller(bundle, opts)?;
    let key =
        session::key(&[&bundle.image_digest(), mode.name(), &format!("{who:?}"), &session::job(opts.share.as_deref())]);
    let linger = host::linger(opts.linger)?;
    let program = known.as_ref().and_then(|argv| argv.first()).map(Path::new);
    match session::attach(&key, |listener| keeper::start(listener, linger, || build(bundle, mode, &who, program))) {
        // Only `unshare` itself can tell of a seccomp filter or an enclosing limit.
        Err(e) if !forced && namespaces::is_unavailable(&e) => return run_without_namespaces(bundle, opts, known),
        r => r?,
    }
    let argv = match known {
        Some(argv) => argv,
        None => command_line(bundle, opts, called_as.as_deref().and_then(in_bin_dirs))?,
    };
    std::env::set_current_dir(&who.cwd).context(|| format!("cannot enter {} in the container", who.cwd.display()))?;
    let env = environment(std::env::vars_os(), &bundle.metadata.env, &who.injected, opts.cleanenv);
    if geteuid().is_root() && !opts.keep_caps {
        drop_privileges()?;
    }
    Err(exec(&argv, &env))
}

/// host mode: no namespaces; the image unpacked into the cache and the program started
/// through the image's own loader (`host_mode.rs`). No keeper: each process runs on its
/// own, and the cache's lock makes concurrent first runs unpack once.
fn run_without_namespaces(
    bundle: &Bundle,
    opts: &Options,
    known: Option<Vec<OsString>>,
) -> Result<std::convert::Infallible> {
    if let Some(option) = host::needs_container(&opts.host) {
        return Err(Error(format!(
            "{option} needs a container, and this host can make none (host mode: no namespaces); run without it"
        )));
    }
    let tree = cache::cached_tree(bundle, || open_image(bundle))?;
    let argv = match known {
        Some(argv) => argv,
        None => command_line(bundle, opts, multicall_name(opts).map(PathBuf::from))?,
    };
    let argv = host_mode::command(&tree, &argv)?;
    let mut env = environment(std::env::vars_os(), &bundle.metadata.env, &Default::default(), opts.cleanenv);
    // Where the image is, for programs that want to find their data in it.
    env.insert("BUNDLE_ROOT".into(), tree.into_os_string());
    if geteuid().is_root() && !opts.keep_caps {
        drop_privileges()?;
    }
    Err(exec(&argv, &env))
}

/// Runs in the keeper: makes the namespaces and the root, and stays inside them.
/// Returns whether a user namespace was made (ranks must join it too). `program`, the
/// command the first rank will run, is read ahead in fuse mode.
fn build(bundle: &Bundle, mode: Mode, who: &Host, program: Option<&Path>) -> Result<bool> {
    let (uid, gid) = (getuid(), getgid());
    let sources = plan::resolve(who, &host::host_found).map_err(Error)?;
    match mode {
        Mode::Fuse => {
            let image = Arc::new(open_image(bundle)?);
            let plan = sources.place(&|p| image_found(&image, p)).map_err(Error)?;
            namespaces::enter(uid, gid)?;
            release_exe();
            let program = program.and_then(|p| image_program(&image, p));
            let mut sys = Linux::serving(fuse::Served { image, uid, gid, program }, Path::new(OLDROOT));
            make_root(&Root::Fuse, &mut sys, || Ok(plan))?;
        }
        Mode::Extract => {
            // A filled cache is used without opening the image.
            let tree = cache::cached_tree(bundle, || open_image(bundle))?;
            let plan = sources.place(&|p| dir_found(&tree, p)).map_err(Error)?;
            namespaces::enter(uid, gid)?;
            release_exe();
            make_root(&Root::Tree(tree), &mut Linux::new(), || Ok(plan))?;
        }
        Mode::Kernel => {
            integrity::check_before_kernel_mount(bundle)?;
            let t = &bundle.trailer;
            // The handle keeps the device configured until the mount holds it.
            let (dev, _configured) = loopdev::attach(&bundle.file, t.image_offset, t.image_size)?;
            namespaces::enter_mount_only()?;
            release_exe();
            // The image is asked what it has once the kernel has mounted it: the stub
            // never parses it.
            make_root(&Root::Kernel(dev), &mut Linux::new(), || {
                sources.place(&|p| dir_found(Path::new(LOWER), p)).map_err(Error)
            })?;
        }
        Mode::Host => return Err(Error("host mode makes no container".into())),
    }
    Ok(mode != Mode::Kernel)
}

/// Once in the keeper's namespaces, where it may, and before it forks the FUSE server:
/// the bundle file stops being the keeper's executable (`private_pages.rs`). Best
/// effort: where the kernel refuses, a local write to the file fails with "Text file
/// busy" while the container lingers, which keeps its bytes safe all the same.
fn release_exe() {
    let _ = private_pages::release_exe();
}

/// The steps of `root`'s mode: the scratch root, then the plan (which, in kernel mode,
/// needs the image mounted by then), then the container.
fn make_root(root: &Root, sys: &mut dyn Sys, plan: impl FnOnce() -> Result<Plan>) -> Result<()> {
    steps::run(&steps::scratch(root), sys)?;
    let plan = plan()?;
    steps::run(&steps::container(&plan, root), sys)
}

/// Where multi-call looks for the program named by the symlink we were started through.
const BIN_DIRS: [&str; 6] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"];

/// What to run: the entrypoint with the caller's arguments, or what `--bundle-exec` /
/// `--bundle-shell` asked for, or `multicall`, the program a multi-call symlink names.
fn command_line(bundle: &Bundle, opts: &Options, multicall: Option<PathBuf>) -> Result<Vec<OsString>> {
    let prefix: Vec<OsString> = match opts.action {
        Action::Exec => Vec::new(),
        Action::Shell => vec!["/bin/sh".into()],
        Action::Run if let Some(program) = multicall => vec![program.into()],
        _ if bundle.metadata.entrypoint.is_empty() => {
            return Err(Error("this bundle has no entrypoint; run a program of it with --bundle-exec CMD".into()))
        }
        _ => bundle.metadata.entrypoint.iter().map(OsString::from).collect(),
    };
    Ok(prefix.into_iter().chain(opts.args.iter().cloned()).collect())
}

/// Singularity 1.x's multi-call: started as `app-helper`, a symlink to the bundle, we run
/// the image's `app-helper` from a `bin` directory. The name we were started as, when it
/// is not our own file's.
fn multicall_name(opts: &Options) -> Option<OsString> {
    if opts.action != Action::Run {
        return None;
    }
    let name = std::env::args_os().next().map(PathBuf::from).and_then(|a| a.file_name().map(OsString::from))?;
    let own = fs::read_link("/proc/self/exe").ok();
    if own.as_deref().and_then(Path::file_name) == Some(name.as_os_str()) || name.is_empty() {
        return None;
    }
    Some(name)
}

/// `name` in the container's `bin` directories (our root is the image by now).
fn in_bin_dirs(name: &std::ffi::OsStr) -> Option<PathBuf> {
    BIN_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file() || m.is_symlink()))
}

/// What a path of the image is, read lazily (fuse mode): a few metadata blocks per
/// path. A path the image cannot answer for (it is damaged there) counts as missing;
/// the FUSE server will then report the damage when it is read.
fn image_found(image: &Image, p: &Path) -> Option<Found> {
    image.lookup_path(p).ok().flatten().map(|n| match n.kind {
        NodeKind::Dir => Found::Dir,
        NodeKind::File => Found::File,
        NodeKind::Symlink => Found::Symlink,
        _ => Found::Other,
    })
}

/// The regular file that the absolute `path` names in the image, through symlinks (16
/// at most, as the kernel allows 40); `None` for anything else, or a name to look up in
/// `$PATH`. Only a hint for reading ahead: an answer the image cannot give is `None`.
fn image_program(image: &Image, path: &Path) -> Option<bundle_squashfs::Inode> {
    use std::path::Component;
    // A path's names, last first, as a stack of what is left to walk (`..` included).
    fn stack(p: &Path) -> impl Iterator<Item = OsString> + '_ {
        p.components().rev().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
    }
    if !path.is_absolute() {
        return None;
    }
    // The directories walked so far, from the root: `..` goes back one.
    let mut dirs = vec![image.root_inode().ok()?];
    let mut rest: Vec<OsString> = stack(path).collect();
    let mut links = 0;
    while let Some(name) = rest.pop() {
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let entry = image.lookup(dirs.last()?, name.as_encoded_bytes()).ok()??;
        let node = image.inode(entry.inode).ok()?;
        match node.kind {
            NodeKind::Dir => dirs.push(node),
            NodeKind::File if rest.is_empty() => return Some(node),
            NodeKind::Symlink if links < 16 => {
                links += 1;
                let target = Path::new(std::ffi::OsStr::from_bytes(node.link_target()?));
                if target.is_absolute() {
                    dirs.truncate(1);
                }
                rest.extend(stack(target));
            }
            _ => return None,
        }
    }
    None
}

/// What a path of an image tree mounted or extracted at `tree` is.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_program_to_read_ahead_is_found_through_symlinks() {
        let d = std::env::temp_dir().join(format!("image-program-{}", std::process::id()));
        let tree = d.join("tree");
        fs::create_dir_all(tree.join("usr/bin")).unwrap();
        fs::write(tree.join("usr/bin/app"), b"#!/bin/sh\n").unwrap();
        symlink("usr/bin", tree.join("bin")).unwrap();
        symlink("app", tree.join("usr/bin/rel")).unwrap();
        symlink("/usr/bin/app", tree.join("usr/bin/abs")).unwrap();
        symlink("../bin/app", tree.join("usr/bin/up")).unwrap();
        symlink("loop", tree.join("loop")).unwrap();
        let img = d.join("img");
        let status = std::process::Command::new("mksquashfs")
            .arg(&tree)
            .arg(&img)
            .args(["-quiet", "-no-progress", "-noappend", "-comp", "zstd", "-no-xattrs"])
            .status()
            .expect("mksquashfs (scripts/test installs squashfs-tools)");
        assert!(status.success());
        let file = fs::File::open(&img).unwrap();
        let image = Image::open(&file, 0).unwrap();
        let app = image.lookup_path(Path::new("/usr/bin/app")).unwrap().unwrap().reference;
        let found = |p: &str| image_program(&image, Path::new(p)).map(|i| i.reference);
        for p in ["/usr/bin/app", "/bin/app", "/usr/bin/rel", "/bin/abs", "/bin/up", "/usr/../bin/./app"] {
            assert_eq!(found(p), Some(app), "{p}");
        }
        for p in ["app", "/usr/bin", "/loop", "/missing", "/usr/bin/app/x"] {
            assert_eq!(found(p), None, "{p}");
        }
        fs::remove_dir_all(&d).unwrap();
    }
}
