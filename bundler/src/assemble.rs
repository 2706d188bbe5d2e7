//! Writing the bundle file: stub, padding, image, chunk table, metadata, trailer (no
//! signatures: `bundle sign` appends them later without touching what is before).
//!
//! Everything goes to a temporary file in the output's directory, which is renamed over
//! the output only when complete: a failed or interrupted build leaves no partial file.

use crate::progress::Progress;
use crate::squashfs;
use crate::tree::Tree;
use anyhow::{Context, Result};
use bundle_format::{align_up, hex, ChunkTable, Integrity, Metadata, Trailer, CHUNK_SIZE, FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::fs::{File, Permissions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
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
    let mut tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let f = tmp.as_file_mut();

    f.write_all(stub).context("cannot write the runtime stub")?;
    let image_offset = align_up(stub.len() as u64);
    f.seek(SeekFrom::Start(image_offset))?;
    squashfs::write_image(tree, f, opts, &|n| progress.set(n)).context("cannot write the squashfs image")?;
    let image_end = f.stream_position()?;
    let image_size = image_end - image_offset;
    let image_sha256 = digest_region(f, image_offset, image_size)?;
    let table = ChunkTable::of_image(f, image_offset, image_size, CHUNK_SIZE).context("cannot hash the image")?;
    f.write_all(&table.encode()).context("cannot write the chunk table")?;
    let metadata_offset = f.stream_position()?;

    let integrity = Integrity {
        chunk_size: CHUNK_SIZE,
        chunks_sha256: hex(&table.digest()),
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
    tmp.persist(out).with_context(|| format!("cannot create {}", out.display()))?;
    Ok(Written { image_offset, image_size, total, image_sha256: hex(&image_sha256) })
}

fn digest_region(f: &File, offset: u64, len: u64) -> Result<[u8; 32]> {
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
