//! Writing the bundle file: stub, padding, image, chunk table, metadata, trailer (no
//! signatures: `bundle sign` appends them later without touching what is before).
//!
//! Everything goes to a temporary file in the output's directory, which is renamed over
//! the output only when complete: a failed or interrupted build leaves no partial file.
//! Where the file system has `O_TMPFILE` the temporary file has no name until then, so
//! that not even a build killed with SIGKILL leaves one behind; where it has a name, a
//! ^C, SIGTERM or SIGHUP removes it (`cleanup.rs`).

use crate::progress::Progress;
use crate::squashfs;
use crate::tree::Tree;
use anyhow::{Context, Result};
use bundle_format::{align_up, hex, ChunkTable, Integrity, Metadata, Trailer, CHUNK_SIZE, FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub struct Written {
    pub image_offset: u64,
    pub image_size: u64,
    pub total: u64,
    pub image_sha256: String,
}

pub fn write_bundle(
    out: &Path,
    stub: &[u8],
    tree: &Tree,
    metadata: &Metadata,
    opts: &squashfs::Options,
    progress: &Progress,
) -> Result<Written> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = Output::create(dir)?;
    // Until it is renamed into place, a ^C or SIGTERM removes a named one.
    let _remove_on_signal = tmp.path().map(crate::cleanup::RemoveOnSignal::new);
    let f = tmp.file();

    f.write_all(stub).context("cannot write the runtime stub")?;
    let image_offset = align_up(stub.len() as u64);
    f.seek(SeekFrom::Start(image_offset))?;
    squashfs::write_image(tree, f, opts, &|n| progress.set(n)).context("cannot write the squashfs image")?;
    let image_end = f.stream_position()?;
    let image_size = image_end - image_offset;
    let image_sha256 = digest_region(f, image_offset, image_size)?;
    let table = ChunkTable::of_image(f, image_offset, image_size, CHUNK_SIZE).context("cannot hash the image")?;
    f.write_all(&table.encode()).context("cannot write the chunk table")?;
    let index = table.index();
    f.write_all(&index).context("cannot write the chunk table's index")?;
    let metadata_offset = f.stream_position()?;

    let integrity = Integrity {
        chunk_size: CHUNK_SIZE,
        chunks_sha256: hex(&table.digest()),
        index_sha256: hex(&Sha256::digest(&index)),
        stub_sha256: hex(&digest_region(f, 0, image_offset)?),
    };
    let json = Metadata { integrity: Some(integrity), ..metadata.clone() }.to_json();
    f.write_all(&json)?;
    let trailer = Trailer {
        version: FORMAT_VERSION,
        image_offset,
        image_size,
        metadata_offset,
        metadata_size: json.len() as u64,
        image_sha256,
        metadata_sha256: Sha256::digest(&json).into(),
        signatures_size: 0,
    };
    f.write_all(&trailer.encode())?;
    let total = f.stream_position()?;
    f.set_permissions(Permissions::from_mode(0o755))?;
    tmp.persist(dir, out)?;
    Ok(Written { image_offset, image_size, total, image_sha256: bundle_format::hex(&image_sha256) })
}

/// The bundle while it is written: an unnamed file in the output's directory
/// (`O_TMPFILE`), or, where the file system lacks that, a named temporary file
/// (`.bundle-XXXXXX`, removed on error or interruption by a catchable signal's exit).
enum Output {
    Unnamed(File),
    Named(tempfile::NamedTempFile),
}

impl Output {
    fn create(dir: &Path) -> Result<Output> {
        let unnamed = OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir);
        match unnamed {
            Ok(f) => Ok(Output::Unnamed(f)),
            // EOPNOTSUPP (a file system without it), EISDIR (a kernel without it), …:
            // the named file, which also gives the real error if the directory is unusable.
            Err(_) => tempfile::Builder::new()
                .prefix(".bundle-")
                .tempfile_in(dir)
                .map(Output::Named)
                .with_context(|| format!("cannot create a temporary file in {}", dir.display())),
        }
    }

    /// The temporary file's name, when it has one.
    fn path(&self) -> Option<&Path> {
        match self {
            Output::Unnamed(_) => None,
            Output::Named(t) => Some(t.path()),
        }
    }

    fn file(&mut self) -> &mut File {
        match self {
            Output::Unnamed(f) => f,
            Output::Named(t) => t.as_file_mut(),
        }
    }

    /// Gives the finished file its name `out` (in `dir`), replacing what was there.
    fn persist(self, dir: &Path, out: &Path) -> Result<()> {
        let created = || format!("cannot create {}", out.display());
        match self {
            Output::Named(t) => t.persist(out).map(drop).with_context(created),
            Output::Unnamed(f) => {
                // linkat cannot replace a file: a fresh name next to it, then rename.
                let nonce =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
                let tmp = dir.join(format!(".bundle-{}-{nonce:08x}", std::process::id()));
                let from = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("no NUL");
                let to = CString::new(tmp.as_os_str().as_bytes()).with_context(created)?;
                // SAFETY: two NUL-terminated paths; AT_SYMLINK_FOLLOW links the file the
                // /proc link names (an O_TMPFILE file opened without O_EXCL).
                let r = unsafe {
                    libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
                };
                if r != 0 {
                    return Err(std::io::Error::last_os_error()).with_context(created);
                }
                std::fs::rename(&tmp, out)
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })
                    .with_context(created)
            }
        }
    }
}

/// SHA-256 of `len` bytes of `f` from `offset`.
pub fn digest_region(f: &File, offset: u64, len: u64) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = buf.len().min((len - pos) as usize);
        f.read_exact_at(&mut buf[..n], offset + pos)?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finalize().into())
}
