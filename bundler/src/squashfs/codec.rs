//! zstd, used the way mksquashfs uses it, so that blocks come out the same size.

use anyhow::{Context, Result};

/// One zstd compression context. Each thread owns one: a context holds large tables that
/// are expensive to set up for every block.
pub struct Codec(zstd::bulk::Compressor<'static>);

impl Codec {
    pub fn new(level: i32) -> Result<Codec> {
        let c = zstd::bulk::Compressor::new(level).context("setting up zstd")?;
        Ok(Codec(c))
    }

    /// Compresses `src` into `dst`, replacing its contents. Returns false when that would
    /// not save a byte: the caller then stores `src` as it is, like mksquashfs does. The
    /// output room is capped at `src.len()`, so zstd gives up early on incompressible data.
    pub fn compress(&mut self, src: &[u8], dst: &mut Vec<u8>) -> bool {
        dst.clear();
        dst.reserve_exact(src.len());
        matches!(self.0.compress_to_buffer(src, dst), Ok(n) if n < src.len())
    }
}
