//! The image as the runtime reads it: in a version-2 bundle, every chunk of the image
//! is checked against the chunk table the first time it is read (fuse and extract
//! modes), or all of it before the kernel is given it (kernel mode).

use crate::fail::{Context, Error, Result};
use bundle_format::Bundle;
use bundle_squashfs::{Chunks, Image};

/// The image, each chunk checked before its bytes are used; a version-1 bundle (no
/// chunk table) is read as it is. A chunk that does not match is an error for the
/// reads that need it, which names the offset.
pub fn open_image(bundle: &Bundle) -> Result<Image> {
    open(bundle, false)
}

/// [`open_image`] for the FUSE server, whose errors reach the application only as
/// `EIO`: a chunk that does not match is also one line on stderr, once, naming the
/// bundle and the offset.
pub fn open_for_serving(bundle: &Bundle) -> Result<Image> {
    open(bundle, true)
}

fn open(bundle: &Bundle, report: bool) -> Result<Image> {
    let offset = bundle.trailer.image_offset;
    let opened = match bundle.chunk_table().context(|| format!("{}: cannot read the chunk table", name()))? {
        None => Image::open(&bundle.file, offset),
        Some(table) => {
            let name = name();
            let (size, image_size) = (table.chunk_size(), table.image_size());
            let check = move |i: u64, bytes: &[u8]| {
                let ok = table.matches(i, bytes);
                if !ok && report {
                    let at = offset + table.range(i).0;
                    eprintln!(
                        "bundle: {name}: the image chunk at byte {at} does not match its digest (the file is \
                         damaged or was changed while in use); reads of it fail with EIO"
                    );
                }
                ok
            };
            let chunks = Chunks { size, image_size, check: Box::new(check) };
            Image::open_verified(&bundle.file, offset, chunks)
        }
    };
    opened.context(|| format!("{}: cannot read the image's tables", name()))
}

/// Kernel mode: the kernel reads the image through a loop device, past any check of
/// ours, so all of it is checked first (about a second per 1.5 GB, once per keeper).
pub fn check_all(bundle: &Bundle) -> Result<()> {
    bundle.verify_all().map_err(|e| Error(format!("{}: {e}", name())))
}

/// The bundle's path, for messages.
pub fn name() -> String {
    std::fs::read_link("/proc/self/exe").map(|p| p.display().to_string()).unwrap_or_else(|_| "this bundle".into())
}
