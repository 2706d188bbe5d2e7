//! `bundle restub APP.sif [--stub PATH]`: the same image and metadata behind another
//! runtime stub (a fixed runtime, a new release), without rebuilding.
//!
//! The image and the metadata are copied byte for byte, so their digests in the trailer
//! stay as they were; only the offsets change when the new stub's size rounds to another
//! 4096-byte boundary. Format version 1 has no signatures; a later version's signatures
//! are over the trailer's digests, not its offsets, and would stay valid.

use crate::stub;
use anyhow::{Context, Result};
use bundle_format::{align_up, Bundle, Trailer};
use std::fs::Permissions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

pub fn restub(path: &Path, stub_flag: Option<&Path>) -> Result<()> {
    let bundle = Bundle::open(path).with_context(|| format!("{}", path.display()))?;
    let stub_path = stub::locate(stub_flag)?;
    let new_stub = stub::load(&stub_path)?;
    let old = bundle.trailer;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let f = tmp.as_file_mut();
    f.write_all(&new_stub).context("cannot write the runtime stub")?;
    let image_offset = align_up(new_stub.len() as u64);
    f.seek(SeekFrom::Start(image_offset))?;
    // Image and metadata are contiguous: one copy of both.
    let mut src = &bundle.file;
    src.seek(SeekFrom::Start(old.image_offset))?;
    let body = old.metadata_offset + old.metadata_size - old.image_offset;
    let copied = io::copy(&mut src.take(body), f).context("cannot copy the image")?;
    if copied != body {
        anyhow::bail!("{} is shorter than its trailer says", path.display());
    }
    let trailer =
        Trailer { image_offset, metadata_offset: image_offset + (old.metadata_offset - old.image_offset), ..old };
    f.write_all(&trailer.encode())?;
    let mode = bundle.file.metadata()?.mode() & 0o7777;
    f.set_permissions(Permissions::from_mode(mode))?;
    tmp.persist(path).with_context(|| format!("cannot replace {}", path.display()))?;
    eprintln!(
        "bundle: {}: runtime {} replaced ({} bytes, image now at offset {}); image sha256 {} unchanged; no signatures to keep",
        path.display(),
        stub_path.display(),
        new_stub.len(),
        image_offset,
        bundle.image_digest()
    );
    Ok(())
}
