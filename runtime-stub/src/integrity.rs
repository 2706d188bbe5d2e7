//! The image as the runtime reads it: in a version-2 or 3 bundle, every chunk of the image
//! is checked against the chunk table the first time it is read (fuse and extract
//! modes), or all of it before the kernel is given it (kernel mode).

use crate::fail::{Context, Error, Result};
use bundle_format::Bundle;
use bundle_squashfs::{Chunks, Image};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

/// The image, each chunk checked before its bytes are used; a version-1 bundle (no
/// chunk table) is read as it is. A chunk that does not match is an error for the
/// reads that need it, which names the offset (the FUSE server, whose errors reach the
/// application only as `EIO`, also tells the application: [`tell`]).
pub fn open_image(bundle: &Bundle) -> Result<Image> {
    let offset = bundle.trailer.image_offset;
    let opened = match bundle.chunk_table().context(|| format!("{}: cannot read the chunk table", name()))? {
        None => Image::open(&bundle.file, offset),
        Some(table) => {
            let (size, image_size) = (table.chunk_size(), table.image_size());
            let check = Box::new(move |i: u64, bytes: &[u8]| table.matches(i, bytes));
            let chunks = Chunks { size, image_size, check };
            Image::open_verified(&bundle.file, offset, chunks)
        }
    };
    opened.context(|| format!("{}: cannot read the image's tables", name()))
}

/// Kernel mode: the kernel reads the image through a loop device, past any check of
/// ours, so all of it is checked first (about a second per 1.5 GB) — once per node and
/// version of the file: a check that passed is remembered in [`CHECKED`] (root's, as
/// kernel mode is), keyed by the image digest and by the file's identity, size and
/// modification time, so that a job's later starts, and other jobs', skip it.
pub fn check_before_kernel_mount(bundle: &Bundle) -> Result<()> {
    let memo = std::path::Path::new(CHECKED).join(bundle.image_digest());
    let stamp = file_stamp(&bundle.file);
    if stamp.as_ref().is_some_and(|s| std::fs::read_to_string(&memo).is_ok_and(|m| &m == s)) {
        return Ok(());
    }
    verify_all(bundle)?;
    if let Some(stamp) = stamp {
        remember(&memo, &stamp);
    }
    Ok(())
}

/// Every digest of the bundle, every time (`--bundle-verify`).
pub fn verify_all(bundle: &Bundle) -> Result<()> {
    bundle.verify_all().map_err(|e| Error(format!("{}: {e}", name())))
}

/// Where kernel mode remembers the images it checked (on a tmpfs: gone at reboot).
const CHECKED: &str = "/run/bundle/checked";

/// What identifies this version of the file: device, inode, size, modification time.
fn file_stamp(file: &File) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata().ok()?;
    Some(format!("{} {} {} {}.{:09}\n", m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Best effort: a node where `/run` is not writable checks every time.
fn remember(memo: &std::path::Path, stamp: &str) {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = memo.parent() else { return };
    if std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    if std::fs::write(&tmp, stamp).and_then(|()| std::fs::rename(&tmp, memo)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The stderr the FUSE server was started with, when telling through it is harmless.
static KEPT_STDERR: OnceLock<File> = OnceLock::new();

/// Called by the FUSE server before it silences its stdio: keeps its stderr if that is
/// a terminal or a file. A pipe or socket is not kept: the server outlives the first
/// application while a container lingers, and would hold `$(app.sif 2>&1)` open.
pub fn keep_stderr() {
    let Ok(f) = std::io::stderr().as_fd().try_clone_to_owned().map(File::from) else { return };
    let harmless = f.is_terminal() || f.metadata().is_ok_and(|m| m.is_file());
    if harmless {
        let _ = KEPT_STDERR.set(f);
    }
}

/// One line for process `pid` (the FUSE request's sender), where it can be seen: the
/// stderr kept by [`keep_stderr`] (the first application's, sharing its file offset);
/// else the sender's own stderr, if we may open it (programs of the image often are
/// not dumpable: their root owner is not mapped in the user namespace); else the
/// system log.
pub fn tell(pid: u32, bundle: &str, what: &str) {
    let line = format!("bundle: {bundle}: {what}; reads of it fail with EIO\n");
    if KEPT_STDERR.get().is_some_and(|mut f| f.write_all(line.as_bytes()).is_ok()) {
        return;
    }
    // O_APPEND: a stderr redirected to a log file is appended to, never overwritten.
    let stderr = OpenOptions::new().append(true).open(format!("/proc/{pid}/fd/2"));
    if stderr.and_then(|mut f| f.write_all(line.as_bytes())).is_ok() {
        return;
    }
    // <27>: facility daemon, severity error.
    let entry = format!("<27>bundle[{}]: {}", std::process::id(), line.trim_end());
    if let Ok(log) = UnixDatagram::unbound() {
        let _ = log.send_to(entry.as_bytes(), "/dev/log");
    }
}

static NAME: OnceLock<String> = OnceLock::new();

/// The bundle's path, for messages: read once, at start-up (`main` asks first),
/// while `/proc` is still where it was.
pub fn name() -> String {
    let read = || std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string());
    NAME.get_or_init(|| read().unwrap_or_else(|_| "this bundle".into())).clone()
}
