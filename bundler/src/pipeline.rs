//! `bundle build`: inputs → staging tree → checks → image → bundle file.

use crate::assemble;
use crate::closure;
use crate::inputs::{absolute, HostInputs};
use crate::oci;
use crate::progress::Progress;
use crate::rpm::RpmInputs;
use crate::squashfs;
use crate::stub;
use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use crate::{apptainer, sif, unsquash};
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
    /// The program and its fixed leading arguments.
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub labels: Vec<String>,
    /// Binds the runtime adds by default (`SRC[:DST[:ro]]`).
    pub binds: Vec<String>,
    pub image: squashfs::Options,
    pub stub: Option<PathBuf>,
    pub output: PathBuf,
    /// Add the libraries and interpreters the inputs need (`--no-closure` turns it off).
    pub closure: bool,
    /// Build even if the closure cannot find everything.
    pub allow_missing: bool,
    /// Host paths added with their closure (`--include`).
    pub includes: Vec<PathBuf>,
    /// An OCI image layout or docker/oci archive that becomes the image root.
    pub oci: Option<PathBuf>,
    /// Which image of `oci`, when it holds several (`--oci-ref`).
    pub oci_ref: Option<String>,
    /// An Apptainer/Singularity SIF file whose primary partition becomes the image root.
    pub sif: Option<PathBuf>,
    /// A squashfs image that becomes the image root.
    pub squashfs: Option<PathBuf>,
}

/// What the inputs gave, besides the tree.
struct Gathered {
    inputs: Vec<Input>,
    /// Staged contents of RPMs and image layers: must outlive the image writing.
    _staging: Vec<TempDir>,
    /// The config of an OCI image input.
    image: Option<oci::Image>,
    /// Symlinks of file inputs at their own host paths, for the closure to follow.
    links: Vec<ImagePath>,
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
    let gathered = gather(req, &mut tree, epoch.is_some())?;
    if tree.len() <= 1 && req.includes.is_empty() {
        bail!("nothing to bundle: give RPM packages, a directory (--dir), a file list (--files), files (--file) or an image (--oci)");
    }
    let image = gathered.image.as_ref();
    // Chosen from the inputs alone: what the closure adds is never a candidate. An
    // image's `Cmd` goes with its `Entrypoint`; `-e` replaces both, as `docker run
    // --entrypoint` does.
    let (entrypoint, args) = match (&req.entrypoint, image) {
        (Some(e), _) => (e[0].clone(), e[1..].to_vec()),
        (None, Some(img)) if !img.command.is_empty() => (image_program(&tree, img)?, img.command[1..].to_vec()),
        _ => (default_entrypoint(&tree)?, Vec::new()),
    };
    let provided = if req.closure { add_closure(req, &mut tree, &entrypoint, &gathered.links)? } else { Vec::new() };
    add_mount_points(&mut tree, now)?;
    if let Some(t) = epoch {
        tree.set_all_mtimes(t);
    }
    let entrypoint = std::iter::once(check_entrypoint(&tree, &entrypoint)?).chain(args).collect();
    // The image's settings first, the command line's over them.
    let mut env: BTreeMap<String, String> = image.map(|i| i.env.iter().cloned().collect()).unwrap_or_default();
    env.extend(parse_pairs(&req.env, "--env")?);
    let mut labels = image.map(|i| i.labels.clone()).unwrap_or_default();
    labels.extend(parse_pairs(&req.labels, "--label")?);
    let metadata = Metadata {
        entrypoint,
        env,
        labels,
        workdir: image.and_then(|i| i.workdir.clone()),
        created: now as u64,
        bundler: format!("bundle {}", env!("CARGO_PKG_VERSION")),
        image: ImageInfo {
            compression: "zstd".into(),
            level: req.image.level,
            block_size: req.image.block_size,
            entries: tree.len() as u64,
        },
        inputs: gathered.inputs,
        provided,
        binds: req.binds.clone(),
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

/// Adds every input to the tree. An image goes first (it is a whole root), then RPMs, so
/// that `--dir`, `--files` and `--file` can override a packaged file.
fn gather(req: &BuildRequest, tree: &mut Tree, reproducible: bool) -> Result<Gathered> {
    let mut inputs = Vec::new();
    let mut staging = Vec::new();
    let mut image = None;
    if let Some(path) = &req.oci {
        let (img, dir) = add_oci(tree, path, req.oci_ref.as_deref())?;
        inputs.push(Input {
            kind: "oci".into(),
            path: recorded(path, reproducible, path.is_file()),
            digest: Some(img.digest.clone()),
            reference: img.reference.clone(),
            ..Default::default()
        });
        staging.push(dir);
        image = Some(img);
    }
    for (path, is_sif) in req.sif.iter().map(|p| (p, true)).chain(req.squashfs.iter().map(|p| (p, false))) {
        let (img, dir) = add_squashfs(tree, path, is_sif)?;
        inputs.push(Input {
            kind: if is_sif { "sif" } else { "image" }.into(),
            path: recorded(path, reproducible, true),
            sha256: Some(file_sha256(path)?),
            ..Default::default()
        });
        staging.push(dir);
        image = Some(img);
    }
    if !req.rpms.is_empty() {
        let mut rpms = RpmInputs::new(tree)?;
        for r in &req.rpms {
            inputs.push(rpms.add(r)?);
        }
        for w in &rpms.warnings {
            eprintln!("bundle: warning: {w}");
        }
        staging.push(rpms.into_staging());
    }
    let mut host = HostInputs::new(tree);
    for d in &req.dirs {
        host.add_root_dir(d)?;
        inputs.push(Input {
            kind: "dir".into(),
            path: recorded(d, reproducible, false),
            nevra: None,
            sha256: None,
            ..Default::default()
        });
    }
    for l in &req.lists {
        host.add_list(l)?;
        inputs.push(Input {
            kind: "files".into(),
            path: recorded(l, reproducible, true),
            nevra: None,
            sha256: Some(file_sha256(l)?),
            ..Default::default()
        });
    }
    for f in &req.files {
        host.add_file_spec(f)?;
        let src = Path::new(f.split_once('=').map_or(f.as_str(), |(s, _)| s));
        let sha256 = if src.is_file() { Some(file_sha256(src)?) } else { None };
        inputs.push(Input {
            kind: "file".into(),
            path: recorded(src, reproducible, true),
            nevra: None,
            sha256,
            ..Default::default()
        });
    }
    for w in &host.warnings {
        eprintln!("bundle: warning: {w}");
    }
    Ok(Gathered { inputs, _staging: staging, image, links: host.own_place_links })
}

fn add_oci(tree: &mut Tree, path: &Path, reference: Option<&str>) -> Result<(oci::Image, TempDir)> {
    let staging =
        tempfile::Builder::new().prefix("bundle-oci-").tempdir().context("cannot create a staging directory")?;
    let img = oci::add(tree, path, reference, staging.path()).with_context(|| format!("--oci {}", path.display()))?;
    eprintln!(
        "bundle: oci: {} {}: {} layers, command {:?}",
        img.reference.as_deref().unwrap_or("(unnamed)"),
        img.digest,
        img.layers,
        img.command
    );
    if img.skipped_devices > 0 {
        eprintln!("bundle: warning: skipped {} device nodes and FIFOs of the image", img.skipped_devices);
    }
    Ok((img, staging))
}

/// A SIF file's primary partition or a plain squashfs image, with what its
/// `/.singularity.d` says.
fn add_squashfs(tree: &mut Tree, path: &Path, is_sif: bool) -> Result<(oci::Image, TempDir)> {
    let flag = if is_sif { "--sif" } else { "--image" };
    let staging =
        tempfile::Builder::new().prefix("bundle-sqfs-").tempdir().context("cannot create a staging directory")?;
    let (offset, labels) = if is_sif {
        let s = sif::open(path).with_context(|| format!("{flag} {}", path.display()))?;
        (s.offset, s.labels)
    } else {
        (0, None)
    };
    let skipped =
        unsquash::add(tree, path, offset, staging.path()).with_context(|| format!("{flag} {}", path.display()))?;
    if skipped > 0 {
        eprintln!("bundle: warning: skipped {skipped} device nodes, FIFOs and sockets of {}", path.display());
    }
    Ok((apptainer::config(tree, labels.as_deref()), staging))
}

/// The program an image's `Entrypoint`/`Cmd` names: a bare name is looked up in the
/// image's own `PATH`, as a container engine does.
fn image_program(tree: &Tree, img: &oci::Image) -> Result<String> {
    let name = &img.command[0];
    if name.starts_with('/') {
        return Ok(name.clone());
    }
    if name.contains('/') {
        let dir = img.workdir.as_deref().unwrap_or("/");
        return Ok(Path::new(dir).join(name).display().to_string());
    }
    let path = img.env.iter().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = Path::new(dir).join(name);
        let found = closure::resolve(tree, &candidate).and_then(|p| tree.get(&p).cloned());
        if found.is_some_and(|e| matches!(e.kind, Kind::File(_)) && e.mode & 0o111 != 0) {
            return Ok(candidate.display().to_string());
        }
    }
    bail!("the image's command {name} is not in its PATH ({path}); give the program with -e PATH")
}

/// What container engines use when an image sets no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
fn add_closure(
    req: &BuildRequest,
    tree: &mut Tree,
    entrypoint: &str,
    links: &[ImagePath],
) -> Result<Vec<ProvidedFile>> {
    let opts = closure::Options {
        links: links.to_vec(),
        allow_missing: req.allow_missing,
        includes: req.includes.clone(),
        entrypoint: Some(entrypoint.to_string()),
    };
    let before = tree.len();
    let outcome = closure::complete(tree, &opts)?;
    for w in &outcome.warnings {
        eprintln!("bundle: warning: {w}");
    }
    for n in &outcome.notes {
        eprintln!("bundle: closure: {n}");
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
