//! `bundle restub APP.sif [--stub PATH]`: the same image and metadata behind another
//! runtime stub (a fixed runtime, a new release), without rebuilding.
//!
//! The image (and, from version 2, its chunk table) is copied byte for byte, so the image
//! digest stays as it was; only the offsets change when the new stub's size rounds to
//! another 4096-byte boundary. Version 1's metadata is copied too. Version 2's metadata
//! records the stub's digest, so it is written anew with the new stub's: its digest
//! changes, and with it what a signature signs — signatures are dropped, and said so
//! (sign the bundle again).

use crate::stub;
use anyhow::{Context, Result};
use bundle_format::{align_up, Bundle, Integrity, Metadata, Trailer};
use sha2::{Digest, Sha256};
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
    // Image, chunk table and (version 1) metadata are contiguous: one copy.
    let integrity = bundle.metadata.integrity.clone().filter(|_| old.version >= 2);
    let mut src = &bundle.file;
    src.seek(SeekFrom::Start(old.image_offset))?;
    let body = match integrity {
        Some(_) => old.metadata_offset - old.image_offset,
        None => old.metadata_offset + old.metadata_size - old.image_offset,
    };
    let copied = io::copy(&mut src.take(body), f).context("cannot copy the image")?;
    if copied != body {
        anyhow::bail!("{} is shorter than its trailer says", path.display());
    }
    let metadata_offset = image_offset + (old.metadata_offset - old.image_offset);
    let mut trailer = Trailer { image_offset, metadata_offset, ..old };
    let mut dropped = 0;
    if let Some(integrity) = integrity {
        let stub_sha256 = bundle_format::hex(&crate::assemble::digest_region(f, 0, image_offset)?);
        let meta = Metadata { integrity: Some(Integrity { stub_sha256, ..integrity }), ..bundle.metadata.clone() };
        let json = meta.to_json();
        f.write_all(&json).context("cannot write the metadata")?;
        dropped = bundle_format::signatures::parse_region(&bundle.signatures).map_or(0, |s| s.len());
        trailer.metadata_size = json.len() as u64;
        trailer.metadata_sha256 = Sha256::digest(&json).into();
        trailer.signatures_size = 0;
    }
    f.write_all(&trailer.encode())?;
    let mode = bundle.file.metadata()?.mode() & 0o7777;
    f.set_permissions(Permissions::from_mode(mode))?;
    tmp.persist(path).with_context(|| format!("cannot replace {}", path.display()))?;
    let signatures = match dropped {
        0 => "no signatures to keep".to_string(),
        n => format!("{n} signature(s) dropped: the stub's digest is signed too; sign it again with `bundle sign`"),
    };
    eprintln!(
        "bundle: {}: runtime {} replaced ({} bytes, image now at offset {}); image sha256 {} unchanged; {signatures}",
        path.display(),
        stub_path.display(),
        new_stub.len(),
        image_offset,
        bundle.image_digest()
    );
    Ok(())
}
