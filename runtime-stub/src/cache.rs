//! extract mode's cache: one unpacked tree per image digest, per user.

use crate::fail::{Context, Error, Result};
use bundle_format::Bundle;
use bundle_squashfs::{extract, Image};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where extract mode keeps its trees: `$BUNDLE_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/bundle`, else `~/.cache/bundle`.
pub fn cache_root() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("BUNDLE_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("bundle")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/bundle")))
        .ok_or_else(|| Error("no cache directory: set BUNDLE_CACHE_DIR (or HOME)".into()))
}

/// The extracted tree of this bundle's image, unpacking it on first use. Concurrent
/// runs (all ranks of a job on a node) take a lock: one unpacks, the others wait and
/// reuse. The tree is published by an atomic rename, so a reader never sees half of it.
/// `open` gives the image, and is called only when the tree must be unpacked.
pub fn cached_tree(bundle: &Bundle, open: impl FnOnce() -> Result<Image>) -> Result<PathBuf> {
    let images = cache_root()?.join("images");
    let digest = bundle.image_digest();
    let tree = images.join(&digest);
    if tree.is_dir() {
        return Ok(tree);
    }
    fs::create_dir_all(&images).map_err(|e| {
        Error(format!(
            "cannot create the cache directory {}: {e}; set BUNDLE_CACHE_DIR to a writable directory",
            images.display()
        ))
    })?;
    let lock_path = images.join(format!("{digest}.lock"));
    let lock =
        OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock_path).map_err(|e| {
            Error(format!(
                "cannot write in the cache directory {}: {e}; set BUNDLE_CACHE_DIR to a writable directory",
                images.display()
            ))
        })?;
    let _held = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error(format!("cannot lock {}: {e}", lock_path.display())))?;
    if tree.is_dir() {
        return Ok(tree);
    }
    remove_leftovers(&images, &digest);
    // The image's chunks are checked as they are unpacked (a chunk that does not match
    // fails the unpacking, and nothing is published).
    let image = open()?;
    let tmp = images.join(format!(".tmp-{digest}-{}", std::process::id()));
    let result = extract::to_dir(&image, &tmp)
        .map_err(|e| Error(format!("cannot unpack the image into the cache: {e}")))
        .map(drop)
        .and_then(|()| fs::rename(&tmp, &tree).context(|| format!("cannot publish {}", tree.display())));
    if let Err(e) = result {
        remove_tree(&tmp);
        return Err(e);
    }
    Ok(tree)
}

/// Half-made trees of runs that were killed while extracting; we hold the lock, so
/// nobody is writing them.
fn remove_leftovers(images: &Path, digest: &str) {
    let prefix = format!(".tmp-{digest}-");
    for e in fs::read_dir(images).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            remove_tree(&e.path());
        }
    }
}

/// `rm -rf` that first makes read-only directories writable.
fn remove_tree(path: &Path) {
    for e in fs::read_dir(path).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
            remove_tree(&p);
        }
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    let _ = fs::remove_dir_all(path);
}
