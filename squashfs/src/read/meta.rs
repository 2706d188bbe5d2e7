//! Metadata blocks, read back: the inode and directory tables are streams cut into
//! 8 KiB pieces, each compressed on its own behind a 2-byte header (see the writer's
//! `meta.rs`). A [`Cursor`] reads such a stream across block boundaries, one cached
//! block at a time.

use super::{corrupt, Inner};
use crate::layout::{METADATA_SIZE, META_UNCOMPRESSED};
use std::io;
use std::sync::Arc;

/// The byte range of the image one table's metadata blocks must lie in.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

impl Region {
    /// The most decompressed bytes the region's blocks can hold: each block takes at
    /// least 3 bytes (header and one byte) and yields at most 8 KiB.
    pub fn most_bytes(&self) -> u64 {
        (self.end - self.start).div_ceil(3) * METADATA_SIZE as u64
    }
}

/// One decompressed metadata block.
pub struct MetaBlock {
    pub data: Vec<u8>,
    /// Position of the block that follows it in the stream.
    pub next: u64,
}

impl Inner {
    /// The metadata block whose header is at image position `pos`, which must lie in
    /// `region`, through the cache.
    pub(super) fn meta_block(&self, region: Region, pos: u64) -> io::Result<Arc<MetaBlock>> {
        if pos < region.start || pos.saturating_add(2) > region.end {
            return Err(corrupt(format!("a metadata block at byte {pos} is outside its table")));
        }
        self.meta.get_or_load(pos, || {
            let avail = (region.end - pos).min(2 + METADATA_SIZE as u64) as usize;
            let mut raw = vec![0u8; avail];
            self.pread(&mut raw, pos)?;
            let header = u16::from_le_bytes([raw[0], raw[1]]);
            let len = usize::from(header & !META_UNCOMPRESSED);
            if len == 0 || len > METADATA_SIZE || 2 + len > avail {
                return Err(corrupt(format!("the metadata block at byte {pos} has a bad length ({len})")));
            }
            let stored = &raw[2..2 + len];
            let data = if header & META_UNCOMPRESSED != 0 {
                stored.to_vec()
            } else {
                super::data::decompress(stored, METADATA_SIZE)
                    .map_err(|_| corrupt(format!("the metadata block at byte {pos} does not decompress")))?
            };
            if data.is_empty() {
                return Err(corrupt(format!("the metadata block at byte {pos} is empty")));
            }
            let size = data.len() + 64;
            Ok((Arc::new(MetaBlock { data, next: pos + 2 + len as u64 }), size))
        })
    }
}

/// A place in a metadata stream: the image position of a block's header and an offset
/// into its decompressed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLoc {
    pub block: u64,
    pub offset: u32,
}

/// Reads a metadata stream from a [`MetaLoc`] on.
pub struct Cursor<'a> {
    inner: &'a Inner,
    region: Region,
    loc: MetaLoc,
    block: Option<Arc<MetaBlock>>,
}

impl<'a> Cursor<'a> {
    pub fn new(inner: &'a Inner, region: Region, loc: MetaLoc) -> Cursor<'a> {
        Cursor { inner, region, loc, block: None }
    }

    /// Where the next byte comes from. At the end of a block this is still that
    /// block's end, which is as good a place to resume from as the next block's start.
    pub fn loc(&self) -> MetaLoc {
        self.loc
    }

    fn current(&mut self) -> io::Result<&Arc<MetaBlock>> {
        if self.block.is_none() {
            self.block = Some(self.inner.meta_block(self.region, self.loc.block)?);
        }
        Ok(self.block.as_ref().expect("just read"))
    }

    /// Fills `out`, moving to the next block as each one ends.
    pub fn read(&mut self, mut out: &mut [u8]) -> io::Result<()> {
        while !out.is_empty() {
            let offset = self.loc.offset as usize;
            let block = self.current()?.clone();
            if offset > block.data.len() {
                return Err(corrupt("a reference points past the end of its metadata block"));
            }
            if offset == block.data.len() {
                if block.data.len() != METADATA_SIZE && offset != 0 {
                    // Only the last block of a table is short: nothing follows it.
                    return Err(corrupt("an inode or listing runs past the end of its table"));
                }
                self.loc = MetaLoc { block: block.next, offset: 0 };
                self.block = None;
                continue;
            }
            let n = out.len().min(block.data.len() - offset);
            out[..n].copy_from_slice(&block.data[offset..offset + n]);
            out = &mut out[n..];
            self.loc.offset += n as u32;
        }
        Ok(())
    }

    pub fn u16(&mut self) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// `len` bytes (a name or a link target), the caller having bounded `len`.
    pub fn bytes(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(&mut v)?;
        Ok(v)
    }
}
