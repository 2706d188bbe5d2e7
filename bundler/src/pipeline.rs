//! `bundle build`: inputs → staging tree → checks → image → bundle file.

use crate::assemble;
use crate::closure;
use crate::inputs::{absolute, HostInputs};
use crate::progress::Progress;
use crate::rpm::RpmInputs;
use crate::squashfs;
use crate::stub;
use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use anyhow::{bail, Context, Result};
use bundle_format::{ImageInfo, Input, Metadata, ProvidedFile};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;

pub struct BuildRequest {
    /// RPM packages, in command-line order.
    pub rpms: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    pub lists: Vec<PathBuf>,
    pub files: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub labels: Vec<String>,
    pub image: squashfs::Options,
    pub stub: Option<PathBuf>,
    pub output: PathBuf,
    /// Add the libraries and interpreters the inputs need (`--no-closure` turns it off).
    pub closure: bool,
    /// Build even if the closure cannot find everything.
    pub allow_missing: bool,
    /// Host paths added with their closure (`--include`).
    pub includes: Vec<PathBuf>,
}

/// Directories and files the runtime binds over; present in every image so that no
/// overlay is needed for them at run time.
const MOUNT_DIRS: [(&str, u32); 8] = [
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/tmp", 0o1777),
    ("/home", 0o755),
    ("/run", 0o755),
    ("/mnt", 0o755),
    ("/etc", 0o755),
];
const MOUNT_FILES: [&str; 5] = ["/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf", "/etc/localtime"];

pub fn build(req: &BuildRequest) -> Result<()> {
    let epoch = source_date_epoch()?;
    let now = epoch.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32)
    });
    let mut tree = Tree::new(now);
    // The RPMs' staged contents must outlive the image writing: dropped at the end.
    let (inputs, _staging) = gather(req, &mut tree, epoch.is_some())?;
    if tree.len() <= 1 && req.includes.is_empty() {
        bail!("nothing to bundle: give RPM packages, a directory (--dir), a file list (--files) or files (--file)");
    }
    // Chosen from the inputs alone: what the closure adds is never a candidate.
    let entrypoint = match &req.entrypoint {
        Some(e) => e.clone(),
        None => default_entrypoint(&tree)?,
    };
    let provided = if req.closure { add_closure(req, &mut tree, &entrypoint)? } else { Vec::new() };
    add_mount_points(&mut tree, now)?;
    if let Some(t) = epoch {
        tree.set_all_mtimes(t);
    }
    let entrypoint = vec![check_entrypoint(&tree, &entrypoint)?];
    let metadata = Metadata {
        entrypoint,
        env: parse_pairs(&req.env, "--env")?,
        labels: parse_pairs(&req.labels, "--label")?,
        created: now as u64,
        bundler: format!("bundle {}", env!("CARGO_PKG_VERSION")),
        image: ImageInfo {
            compression: "zstd".into(),
            level: req.image.level,
            block_size: req.image.block_size,
            entries: tree.len() as u64,
        },
        inputs,
        provided,
        binds: Vec::new(),
        // Filled in by `assemble`, once the image is written.
        integrity: None,
    };
    let stub = stub::load(&stub::locate(req.stub.as_deref())?)?;
    let mut opts = req.image.clone();
    opts.mkfs_time = now;
    let progress = Progress::bytes(input_bytes(&tree), "packing");
    let written = assemble::write_bundle(&req.output, &stub, &tree, &metadata, &opts, &progress)?;
    progress.finish();
    eprintln!(
        "bundle: wrote {} ({} entries, image {} at offset {}, {} in all, image sha256 {})",
        req.output.display(),
        tree.len(),
        human(written.image_size),
        written.image_offset,
        human(written.total),
        written.image_sha256
    );
    Ok(())
}

/// Adds every input to the tree. RPMs go first, so that `--dir`, `--files` and `--file`
/// can override a packaged file. Returns the provenance records and, when there are RPMs,
/// the staging directory holding their extracted contents.
fn gather(req: &BuildRequest, tree: &mut Tree, reproducible: bool) -> Result<(Vec<Input>, Option<TempDir>)> {
    let mut inputs = Vec::new();
    let staging = if req.rpms.is_empty() {
        None
    } else {
        let mut rpms = RpmInputs::new(tree)?;
        for r in &req.rpms {
            inputs.push(rpms.add(r)?);
        }
        for w in &rpms.warnings {
            eprintln!("bundle: warning: {w}");
        }
        Some(rpms.into_staging())
    };
    let mut host = HostInputs::new(tree);
    for d in &req.dirs {
        host.add_root_dir(d)?;
        inputs.push(Input { kind: "dir".into(), path: recorded(d, reproducible, false), nevra: None, sha256: None });
    }
    for l in &req.lists {
        host.add_list(l)?;
        inputs.push(Input {
            kind: "files".into(),
            path: recorded(l, reproducible, true),
            nevra: None,
            sha256: Some(file_sha256(l)?),
        });
    }
    for f in &req.files {
        host.add_file_spec(f)?;
        let src = Path::new(f.split_once('=').map_or(f.as_str(), |(s, _)| s));
        let sha256 = if src.is_file() { Some(file_sha256(src)?) } else { None };
        inputs.push(Input { kind: "file".into(), path: recorded(src, reproducible, true), nevra: None, sha256 });
    }
    for w in &host.warnings {
        eprintln!("bundle: warning: {w}");
    }
    Ok((inputs, staging))
}

/// With no `-e`: the one executable in a `bin` or `sbin` directory of the inputs.
fn default_entrypoint(tree: &Tree) -> Result<String> {
    let candidates = executables_in_bin(tree);
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no entrypoint: the inputs have no executable in a bin or sbin directory; give one with -e PATH"),
        many => bail!("more than one possible entrypoint, choose one with -e: {}", many.join(", ")),
    }
}

/// Libraries, interpreters and plugins from the build host; returns what was added.
fn add_closure(req: &BuildRequest, tree: &mut Tree, entrypoint: &str) -> Result<Vec<ProvidedFile>> {
    let opts = closure::Options {
        allow_missing: req.allow_missing,
        includes: req.includes.clone(),
        entrypoint: Some(entrypoint.to_string()),
    };
    let before = tree.len();
    let outcome = closure::complete(tree, &opts)?;
    for w in &outcome.warnings {
        eprintln!("bundle: warning: {w}");
    }
    let bytes: u64 = outcome
        .provided
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(&p.source).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    if tree.len() > before {
        eprintln!("bundle: closure: {} entries added from the build host ({})", tree.len() - before, human(bytes));
    }
    let mut provided = outcome.provided;
    crate::owners::annotate(&mut provided);
    Ok(provided)
}

/// How an input on the build host is named in the metadata. A reproducible build
/// (`SOURCE_DATE_EPOCH` set) must not depend on where it ran, so it records no host
/// path: a file by its name (its sha256 identifies it), a directory not at all (the
/// image digest stands for its content). Otherwise the absolute path.
fn recorded(p: &Path, reproducible: bool, is_file: bool) -> String {
    match (reproducible, is_file) {
        (false, _) => absolute(p).display().to_string(),
        (true, true) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        (true, false) => String::new(),
    }
}

fn add_mount_points(tree: &mut Tree, mtime: u32) -> Result<()> {
    for (dir, mode) in MOUNT_DIRS {
        let p = ImagePath::new(dir).map_err(anyhow::Error::msg)?;
        if tree.get(&p).is_none() {
            tree.insert(p, Entry { kind: Kind::Dir, mode, uid: 0, gid: 0, mtime }).map_err(anyhow::Error::msg)?;
        }
    }
    for file in MOUNT_FILES {
        let p = ImagePath::new(file).map_err(anyhow::Error::msg)?;
        if tree.get(&p).is_none() {
            let empty = Kind::File(Source::Bytes(Arc::from(&b""[..])));
            tree.insert(p, Entry { kind: empty, mode: 0o644, uid: 0, gid: 0, mtime }).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}

/// The entrypoint must be an executable file of the image (through symlinks that stay
/// inside it). On failure, lists the executables in `bin` directories as candidates.
fn check_entrypoint(tree: &Tree, entry: &str) -> Result<String> {
    if !entry.starts_with('/') {
        bail!("the entrypoint must be an absolute path inside the image, not `{entry}`");
    }
    match closure::resolve(tree, Path::new(entry)).and_then(|p| tree.get(&p)) {
        Some(e) if matches!(e.kind, Kind::File(_)) && e.mode & 0o111 != 0 => Ok(entry.to_string()),
        Some(e) if matches!(e.kind, Kind::File(_)) => {
            bail!("the entrypoint {entry} is not executable (mode has no x bit)")
        }
        _ => {
            let candidates = executables_in_bin(tree);
            bail!(
                "the entrypoint {entry} is not an executable file in the image{}",
                if candidates.is_empty() { String::new() } else { format!("; candidates: {}", candidates.join(", ")) }
            )
        }
    }
}

pub fn executables_in_bin(tree: &Tree) -> Vec<String> {
    tree.iter()
        .filter(|(p, e)| {
            let in_bin = p.parent().and_then(|d| d.file_name().map(|n| n == "bin" || n == "sbin")).unwrap_or(false);
            in_bin
                && matches!(e.kind, Kind::File(_) | Kind::HardLink(_) | Kind::Symlink(_))
                && (e.mode & 0o111 != 0 || matches!(e.kind, Kind::Symlink(_)))
        })
        .map(|(p, _)| p.absolute())
        .collect()
}

fn parse_pairs(items: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{flag} {kv}: expected KEY=VALUE"),
        })
        .collect()
}

fn source_date_epoch() -> Result<Option<u32>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            let t: u64 =
                v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"))?;
            Ok(Some(t.min(u32::MAX as u64) as u32))
        }
        _ => Ok(None),
    }
}

fn file_sha256(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", p.display()))?;
    Ok(bundle_format::hex(&h.finalize()))
}

fn input_bytes(tree: &Tree) -> u64 {
    tree.iter()
        .map(|(_, e)| match &e.kind {
            Kind::File(Source::Host(p)) => std::fs::metadata(p).map_or(0, |m| m.len()),
            Kind::File(Source::Bytes(b)) => b.len() as u64,
            _ => 0,
        })
        .sum()
}

pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(tree: &mut Tree, p: &str, mode: u32) {
        let kind = Kind::File(Source::Bytes(Arc::from(&b"#!/bin/sh\n"[..])));
        tree.insert(ImagePath::new(p).unwrap(), Entry { kind, mode, uid: 0, gid: 0, mtime: 0 }).unwrap();
    }

    #[test]
    fn entrypoint_through_symlinks_inside_the_image() {
        let mut t = Tree::new(0);
        exe(&mut t, "/usr/bin/app", 0o755);
        let link = Entry { kind: Kind::Symlink("../usr/bin/app".into()), mode: 0o777, uid: 0, gid: 0, mtime: 0 };
        t.insert(ImagePath::new("/bin/app").unwrap(), link).unwrap();
        assert_eq!(check_entrypoint(&t, "/bin/app").unwrap(), "/bin/app");
    }

    #[test]
    fn missing_or_plain_entrypoint_is_explained() {
        let mut t = Tree::new(0);
        exe(&mut t, "/usr/bin/app", 0o755);
        exe(&mut t, "/usr/share/data", 0o644);
        let err = check_entrypoint(&t, "/bin/nope").unwrap_err().to_string();
        assert!(err.contains("candidates: /usr/bin/app"), "{err}");
        assert!(check_entrypoint(&t, "/usr/share/data").unwrap_err().to_string().contains("not executable"));
        assert!(check_entrypoint(&t, "bin/app").is_err());
    }
}
