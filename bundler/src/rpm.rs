//! RPM inputs: the files of one or more `.rpm` packages, as `rpm -i` would lay them out,
//! without running anything from the package.
//!
//! The `rpm` crate reads the headers and streams the payload through its own cpio reader;
//! every regular file is copied once into a private staging directory (the payload is
//! compressed, so the image writer cannot read it in place) and referenced from the tree
//! as [`Source::Host`]. The staging directory lives as long as the [`RpmInputs`].
//!
//! What is checked, because a bundle is often built from a package fetched from elsewhere:
//! the header digest and the payload digest (a truncated or corrupted file fails before
//! anything is extracted), each file's digest as it is streamed, every path (no `..`, no
//! writing through a symlink), and the same path in two packages (identical is fine,
//! different is an error naming both). What is not applied, and said once per package:
//! scriptlets and triggers (the bundle is never "installed") and file capabilities (the
//! runtime runs without privileges).
//!
//! Owners: `root` is 0; other names go through the fixed user and group ids of the
//! Fedora/RHEL `setup` package (the distributions RPMs come from), and names not in
//! that table become `nobody` (65534) with a warning. The build host's `/etc/passwd` is
//! deliberately not used: its numbering means nothing on the cluster, and inside the
//! bundle's user namespace only the caller's own uid is mapped anyway.

use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use ::rpm::{DigestAlgorithm, FileEntry, FileFlags, FileType, IndexTag, PackageMetadata};
use anyhow::{anyhow, bail, Context, Result};
use bundle_format::Input;
use sha2::{Digest, Sha256, Sha512};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Fedora/RHEL's static user ids (`setup` package, `uidgid`), by name.
const USERS: &[(&str, u32)] = &[
    ("root", 0),
    ("bin", 1),
    ("daemon", 2),
    ("adm", 3),
    ("lp", 4),
    ("sync", 5),
    ("shutdown", 6),
    ("halt", 7),
    ("mail", 8),
    ("operator", 11),
    ("games", 12),
    ("ftp", 14),
    ("nobody", 65534),
];
/// Fedora/RHEL's static group ids (`setup` package, `uidgid`), by name.
const GROUPS: &[(&str, u32)] = &[
    ("root", 0),
    ("bin", 1),
    ("daemon", 2),
    ("sys", 3),
    ("adm", 4),
    ("tty", 5),
    ("disk", 6),
    ("lp", 7),
    ("mem", 8),
    ("kmem", 9),
    ("wheel", 10),
    ("mail", 12),
    ("man", 15),
    ("dialout", 18),
    ("floppy", 19),
    ("games", 20),
    ("tape", 33),
    ("video", 39),
    ("ftp", 50),
    ("lock", 54),
    ("audio", 63),
    ("users", 100),
    ("nobody", 65534),
];
const NOBODY: u32 = 65534;

/// What a path holds, as far as a conflict between two packages is concerned. Follows
/// rpm's own rule: a difference in type, mode (except for symlinks), owner, content or
/// link target is a conflict; directories are shared freely.
/// User and group names, as the header gives them.
type Owner = (String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Dir,
    File { sha256: String, mode: u32, owner: Owner },
    Symlink { target: PathBuf, owner: Owner },
}

/// Adds RPM packages to a tree.
pub struct RpmInputs<'t> {
    tree: &'t mut Tree,
    staging: tempfile::TempDir,
    /// Which package put each path, with what, to tell identical duplicates from conflicts.
    origins: HashMap<ImagePath, (String, Fingerprint)>,
    /// Number of files staged so far: staged files are named by it.
    staged: usize,
    pub warnings: Vec<String>,
}

/// One package being read: its display name and what is reported about it once.
struct Package {
    /// The file name as given, for messages.
    label: String,
    /// Hard-link sets: (device, inode) → header paths, for members without payload.
    links: HashMap<PathBuf, (u32, u32)>,
    /// Image path of the member that carried each hard-link set's content.
    link_content: HashMap<(u32, u32), (ImagePath, Fingerprint)>,
    /// Members whose content comes from another member, resolved after the payload.
    link_members: Vec<(ImagePath, (u32, u32), Entry, Owner)>,
    caps: Vec<String>,
    special: Vec<String>,
    unknown_owners: BTreeSet<String>,
}

impl<'t> RpmInputs<'t> {
    /// Staged file contents go to a new private directory under `$TMPDIR`.
    pub fn new(tree: &'t mut Tree) -> Result<Self> {
        let staging = tempfile::Builder::new()
            .prefix("bundle-rpm-")
            .tempdir()
            .context("cannot create a staging directory for RPM contents")?;
        Ok(RpmInputs { tree, staging, origins: HashMap::new(), staged: 0, warnings: Vec::new() })
    }

    /// Keeps the staged files alive: the tree refers to them until the image is written.
    pub fn into_staging(self) -> tempfile::TempDir {
        self.staging
    }

    /// Adds every file of one package; returns its provenance record.
    pub fn add(&mut self, path: &Path) -> Result<Input> {
        let label = path.display().to_string();
        self.add_package(path, &label).with_context(|| format!("RPM {label}"))
    }

    fn add_package(&mut self, path: &Path, label: &str) -> Result<Input> {
        limits::check_headers(&File::open(path).with_context(|| format!("cannot open {}", path.display()))?)?;
        let meta = PackageMetadata::open(path)
            .map_err(|e| anyhow!("not a readable RPM package (truncated or corrupted?): {e}"))?;
        let sha256 = verify_digests(path, &meta)?;
        let nevra = meta.get_nevra().map_err(|e| anyhow!("header has no name/version: {e}"))?.to_string();
        self.warn_scriptlets(&meta, label);
        let mut pkg = Package {
            label: label.to_string(),
            links: hard_link_sets(&meta)?,
            link_content: HashMap::new(),
            link_members: Vec::new(),
            caps: Vec::new(),
            special: Vec::new(),
            unknown_owners: BTreeSet::new(),
        };
        self.read_payload(path, &mut pkg)?;
        self.finish_hard_links(&mut pkg)?;
        self.report(&pkg);
        // The package is identified by NEVRA and digest: its file name is enough, and
        // keeps the bundle independent of where the package was built from.
        let file_name = path.file_name().unwrap_or(path.as_os_str());
        Ok(Input {
            kind: "rpm".into(),
            path: file_name.to_string_lossy().into_owned(),
            nevra: Some(nevra),
            sha256: Some(sha256),
            ..Default::default()
        })
    }

    fn read_payload(&mut self, path: &Path, pkg: &mut Package) -> Result<()> {
        let mut reader = ::rpm::PackageReader::open(path).map_err(|e| anyhow!("cannot read the payload: {e}"))?;
        loop {
            let next = reader.next_file().map_err(|e| anyhow!("corrupted payload: {e}"))?;
            let Some(mut file) = next else { break };
            let meta = file.metadata.clone();
            let has_payload = file.has_payload();
            self.add_entry(pkg, &meta, has_payload, &mut file)
                .with_context(|| format!("entry {}", meta.path().display()))?;
            file.finish().context("corrupted payload")?;
        }
        Ok(())
    }

    fn add_entry(
        &mut self,
        pkg: &mut Package,
        meta: &FileEntry<'_>,
        has_payload: bool,
        content: &mut impl Read,
    ) -> Result<()> {
        // A %ghost is owned by the package but not shipped: nothing to put in the image.
        if meta.flags().contains(FileFlags::GHOST) {
            return Ok(());
        }
        let path = ImagePath::new(meta.path()).map_err(anyhow::Error::msg)?;
        if path.is_root() {
            bail!("the package cannot replace the image root");
        }
        if let Some(caps) = meta.caps().filter(|c| !c.is_empty()) {
            pkg.caps.push(format!("{} ({caps})", path.absolute()));
        }
        let owner = (meta.user().to_string(), meta.group().to_string());
        let entry = entry_for(pkg, meta);
        match meta.file_type() {
            FileType::Dir => self.place(pkg, path, Entry { kind: Kind::Dir, ..entry }, Fingerprint::Dir),
            FileType::SymbolicLink => {
                let target = PathBuf::from(meta.linkto().unwrap_or_default());
                if target.as_os_str().is_empty() {
                    bail!("symlink without a target");
                }
                let fp = Fingerprint::Symlink { target: target.clone(), owner };
                self.place(pkg, path, Entry { kind: Kind::Symlink(target), ..entry }, fp)
            }
            FileType::Regular => self.add_regular(pkg, meta, path, entry, owner, has_payload, content),
            _ => {
                // Device nodes, FIFOs and sockets: the runtime binds the host's /dev.
                pkg.special.push(path.absolute());
                Ok(())
            }
        }
    }

    /// A regular file: staged, or, for a hard-link member whose content another member
    /// carries (rpm puts it on the last one), remembered until the payload is read.
    #[allow(clippy::too_many_arguments)]
    fn add_regular(
        &mut self,
        pkg: &mut Package,
        meta: &FileEntry<'_>,
        path: ImagePath,
        entry: Entry,
        owner: Owner,
        has_payload: bool,
        content: &mut impl Read,
    ) -> Result<()> {
        let link_set = pkg.links.get(&meta.path()).copied();
        if let (Some(id), false) = (link_set, has_payload) {
            pkg.link_members.push((path, id, entry, owner));
            return Ok(());
        }
        let (staged, sha256) = self.stage(meta, content)?;
        let fp = Fingerprint::File { sha256, mode: entry.mode, owner };
        if let Some(id) = link_set {
            pkg.link_content.insert(id, (path.clone(), fp.clone()));
        }
        self.place(pkg, path, Entry { kind: Kind::File(staged), ..entry }, fp)
    }

    /// Streams one file's content into the staging directory, checking its digest.
    fn stage(&mut self, meta: &FileEntry<'_>, content: &mut impl Read) -> Result<(Source, String)> {
        self.staged += 1;
        let dest = self.staging.path().join(self.staged.to_string());
        let mut out = File::create(&dest).with_context(|| format!("cannot create staging file {}", dest.display()))?;
        let mut sha256 = Sha256::new();
        let mut sha512 = Sha512::new();
        let want = meta.digest().map(|d| (d.algorithm(), d.as_hex().to_string()));
        let check512 = matches!(want, Some((DigestAlgorithm::Sha2_512, _)));
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(anyhow!("corrupted payload: {e}")),
            };
            sha256.update(&buf[..n]);
            if check512 {
                sha512.update(&buf[..n]);
            }
            out.write_all(&buf[..n]).with_context(|| format!("cannot write staging file {}", dest.display()))?;
        }
        let sha256 = bundle_format::hex(&sha256.finalize());
        let actual = match want {
            Some((DigestAlgorithm::Sha2_256, _)) => Some(sha256.clone()),
            Some((DigestAlgorithm::Sha2_512, _)) => Some(bundle_format::hex(&sha512.finalize())),
            _ => None, // md5 and others: the payload digest covers the file already
        };
        if let (Some((_, want)), Some(actual)) = (&want, actual) {
            if !want.eq_ignore_ascii_case(&actual) {
                bail!("content does not match its digest in the header (corrupted payload)");
            }
        }
        Ok((Source::Host(dest), sha256))
    }

    /// Puts an entry into the tree unless the same thing is already there; refuses a
    /// conflict with another package and any path that would go through a symlink.
    fn place(&mut self, pkg: &Package, path: ImagePath, entry: Entry, fp: Fingerprint) -> Result<()> {
        if let Some((other, theirs)) = self.origins.get(&path) {
            if *theirs == fp || (fp == Fingerprint::Dir && *theirs == Fingerprint::Dir) {
                return Ok(());
            }
            bail!(
                "{} is in both {other} and {} with different {}",
                path.absolute(),
                pkg.label,
                difference(theirs, &fp)
            );
        }
        check_parents(self.tree, &path)?;
        if let Some(existing) = self.tree.get(&path) {
            // Only a directory created implicitly for an earlier path can be here.
            if existing.kind != Kind::Dir || fp != Fingerprint::Dir {
                bail!(
                    "{} is a directory holding other entries, the package makes it a {}",
                    path.absolute(),
                    kind_name(&entry.kind)
                );
            }
        }
        self.tree.insert(path.clone(), entry).map_err(anyhow::Error::msg)?;
        self.origins.insert(path, (pkg.label.clone(), fp));
        Ok(())
    }

    /// Hard-link members without payload point at the member that carried the content.
    fn finish_hard_links(&mut self, pkg: &mut Package) -> Result<()> {
        for (path, id, entry, owner) in std::mem::take(&mut pkg.link_members) {
            let Some((target, fp)) = pkg.link_content.get(&id).cloned() else {
                bail!("entry {}: hard link whose content is not in the payload (corrupted package)", path.absolute());
            };
            let Fingerprint::File { sha256, .. } = fp else { unreachable!("content is a file") };
            let fp = Fingerprint::File { sha256, mode: entry.mode, owner };
            let link = Entry { kind: Kind::HardLink(target), ..entry };
            self.place(pkg, path.clone(), link, fp).with_context(|| format!("entry {}", path.absolute()))?;
        }
        Ok(())
    }

    fn warn_scriptlets(&mut self, meta: &PackageMetadata, label: &str) {
        let scripts = [
            ("%pretrans", meta.get_pre_trans_script().is_ok()),
            ("%pre", meta.get_pre_install_script().is_ok()),
            ("%post", meta.get_post_install_script().is_ok()),
            ("%preun", meta.get_pre_uninstall_script().is_ok()),
            ("%postun", meta.get_post_uninstall_script().is_ok()),
            ("%posttrans", meta.get_post_trans_script().is_ok()),
            ("%preuntrans", meta.get_pre_untrans_script().is_ok()),
            ("%postuntrans", meta.get_post_untrans_script().is_ok()),
            ("%verifyscript", meta.get_verify_script().is_ok()),
            ("triggers", meta.get_triggers().is_ok_and(|t| !t.is_empty())),
            ("file triggers", meta.get_file_triggers().is_ok_and(|t| !t.is_empty())),
        ];
        let present: Vec<_> = scripts.iter().filter(|(_, p)| *p).map(|(n, _)| *n).collect();
        if !present.is_empty() {
            self.warnings
                .push(format!("{label}: scriptlets not run ({}): the bundle holds the files only", present.join(", ")));
        }
    }

    fn report(&mut self, pkg: &Package) {
        if !pkg.caps.is_empty() {
            self.warnings.push(format!(
                "{}: file capabilities not applied (the bundle runs unprivileged): {}",
                pkg.label,
                pkg.caps.join(", ")
            ));
        }
        if !pkg.special.is_empty() {
            self.warnings.push(format!(
                "{}: skipped device nodes, FIFOs and sockets (the runtime binds the host's /dev): {}",
                pkg.label,
                pkg.special.join(", ")
            ));
        }
        if !pkg.unknown_owners.is_empty() {
            let names: Vec<_> = pkg.unknown_owners.iter().cloned().collect();
            self.warnings.push(format!(
                "{}: owners without a fixed id, stored as nobody (65534): {}",
                pkg.label,
                names.join(", ")
            ));
        }
    }
}

/// Mode, owner and time of an entry; the kind is filled in by the caller.
fn entry_for(pkg: &mut Package, meta: &FileEntry<'_>) -> Entry {
    let uid = id_of(USERS, meta.user()).unwrap_or_else(|| {
        pkg.unknown_owners.insert(format!("user {}", meta.user()));
        NOBODY
    });
    let gid = id_of(GROUPS, meta.group()).unwrap_or_else(|| {
        pkg.unknown_owners.insert(format!("group {}", meta.group()));
        NOBODY
    });
    Entry { kind: Kind::Dir, mode: u32::from(meta.permissions()), uid, gid, mtime: meta.modified_at().0 }
}

fn id_of(table: &[(&str, u32)], name: &str) -> Option<u32> {
    table.iter().find(|(n, _)| *n == name).map(|(_, id)| *id)
}

/// Refuses a path whose parent in the tree is a symlink or a file: extraction must never
/// write through a symlink (it could point anywhere, also outside the image).
fn check_parents(tree: &Tree, path: &ImagePath) -> Result<()> {
    let mut cur = path.parent();
    while let Some(p) = cur {
        match tree.get(&p).map(|e| &e.kind) {
            Some(Kind::Dir) => return Ok(()),
            Some(Kind::Symlink(t)) => bail!(
                "{} is a symlink (to {}): refusing to write {} through it",
                p.absolute(),
                t.display(),
                path.absolute()
            ),
            Some(_) => bail!("{} is not a directory, cannot hold {}", p.absolute(), path.absolute()),
            None => cur = p.parent(),
        }
    }
    Ok(())
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::File(_) | Kind::HardLink(_) => "file",
        Kind::Symlink(_) => "symlink",
    }
}

fn difference(a: &Fingerprint, b: &Fingerprint) -> &'static str {
    use Fingerprint::*;
    match (a, b) {
        (File { sha256: x, .. }, File { sha256: y, .. }) if x != y => "content",
        (File { mode: x, .. }, File { mode: y, .. }) if x != y => "mode",
        (Symlink { target: x, .. }, Symlink { target: y, .. }) if x != y => "link target",
        (File { .. }, File { .. }) | (Symlink { .. }, Symlink { .. }) => "owner",
        _ => "type",
    }
}

/// Members of hard-link sets (regular files sharing device and inode in the header),
/// by header path. Only sets of two or more count.
fn hard_link_sets(meta: &PackageMetadata) -> Result<HashMap<PathBuf, (u32, u32)>> {
    let files = meta.get_file_entries().map_err(|e| anyhow!("corrupted file list: {e}"))?;
    let inodes = meta.header.get_entry_data_as_u32_array(IndexTag::RPMTAG_FILEINODES).unwrap_or_default();
    let devices = meta.header.get_entry_data_as_u32_array(IndexTag::RPMTAG_FILEDEVICES).unwrap_or_default();
    let mut sets: BTreeMap<(u32, u32), Vec<PathBuf>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        if f.file_type() != FileType::Regular || f.flags().contains(FileFlags::GHOST) {
            continue;
        }
        if let (Some(&d), Some(&n)) = (devices.get(i), inodes.get(i)) {
            sets.entry((d, n)).or_default().push(f.path());
        }
    }
    Ok(sets
        .into_iter()
        .filter(|(_, paths)| paths.len() > 1)
        .flat_map(|(id, paths)| paths.into_iter().map(move |p| (p, id)))
        .collect())
}

/// Checks the header digest and the payload digest before anything is extracted, so
/// that a truncated or corrupted package fails with one clear line. Returns the sha256
/// of the whole file, for the provenance record.
fn verify_digests(path: &Path, meta: &PackageMetadata) -> Result<String> {
    let report = meta.check_digests().map_err(|e| anyhow!("cannot check the header digest: {e}"))?;
    report.result().map_err(|e| anyhow!("corrupted header: {e}"))?;
    let payload_at = meta.get_package_segment_offsets().payload;
    let (whole, payload, payload_len) = hash_file(path, payload_at)?;
    if payload_len == 0 && !meta.get_file_entries().unwrap_or_default().is_empty() {
        bail!("truncated: the payload is missing");
    }
    let want = string_tag(meta, IndexTag::RPMTAG_PAYLOADSHA256);
    match want {
        Some(want) if !want.eq_ignore_ascii_case(&payload) => {
            bail!("truncated or corrupted: payload sha256 {payload} does not match {want} in the header")
        }
        _ => Ok(whole),
    }
}

/// A string tag, also when stored as a one-element string array (v4's payload digest).
fn string_tag(meta: &PackageMetadata, tag: IndexTag) -> Option<String> {
    if let Ok(s) = meta.header.get_entry_data_as_string(tag) {
        return Some(s.to_string());
    }
    meta.header.get_entry_data_as_string_array(tag).ok().and_then(|v| v.first().map(|s| s.to_string()))
}

/// sha256 of the whole file and of the bytes from `payload_at` on, in one read.
fn hash_file(path: &Path, payload_at: u64) -> Result<(String, String, u64)> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut whole = Sha256::new();
    let mut head = (&mut r).take(payload_at);
    let n = io::copy(&mut head, &mut whole).context("cannot read the package")?;
    if n < payload_at {
        bail!("truncated: the file ends inside the header");
    }
    let mut payload = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).context("cannot read the package")?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        payload.update(&buf[..n]);
        len += n as u64;
    }
    Ok((bundle_format::hex(&whole.finalize()), bundle_format::hex(&payload.finalize()), len))
}

mod limits;
#[cfg(test)]
mod tests;
