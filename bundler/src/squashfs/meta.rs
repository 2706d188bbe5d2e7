//! Metadata blocks: the inode, directory, fragment and id tables are streams cut into
//! 8 KiB pieces, each compressed on its own behind a 2-byte header. A place in such a
//! stream is named by the compressed position of its block and an offset inside the
//! uncompressed block, which is why the writer must compress as it goes.

use super::codec::Codec;
use super::Sink;
use anyhow::Result;
use bundle_squashfs::layout::{Put, METADATA_SIZE, META_UNCOMPRESSED};

/// A place in a metadata stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetaPos {
    /// Position of the block's header, relative to the start of the table.
    pub block: u64,
    /// Offset in the block's uncompressed content.
    pub offset: u16,
}

impl MetaPos {
    /// The 48-bit form inode references take (root inode, export table).
    pub fn reference(self) -> u64 {
        (self.block << 16) | u64::from(self.offset)
    }
}

pub struct MetaWriter {
    codec: Codec,
    out: Vec<u8>,
    block: Vec<u8>,
    scratch: Vec<u8>,
    /// Start of each finished block in `out`.
    starts: Vec<u64>,
}

impl MetaWriter {
    pub fn new(level: i32) -> Result<MetaWriter> {
        Ok(MetaWriter {
            codec: Codec::new(level)?,
            out: Vec::new(),
            block: Vec::with_capacity(METADATA_SIZE),
            scratch: Vec::with_capacity(METADATA_SIZE),
            starts: Vec::new(),
        })
    }

    /// Where the next byte written will be. A full block is flushed at once, so the
    /// offset is always inside the current block.
    pub fn pos(&self) -> MetaPos {
        MetaPos { block: self.out.len() as u64, offset: self.block.len() as u16 }
    }

    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = bytes.len().min(METADATA_SIZE - self.block.len());
            self.block.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.block.len() == METADATA_SIZE {
                self.flush();
            }
        }
    }

    /// The finished stream and the start of each of its blocks.
    pub fn finish(mut self) -> (Vec<u8>, Vec<u64>) {
        if !self.block.is_empty() {
            self.flush();
        }
        (self.out, self.starts)
    }

    fn flush(&mut self) {
        self.starts.push(self.out.len() as u64);
        let len = self.block.len() as u16;
        if self.codec.compress(&self.block, &mut self.scratch) {
            self.out.put16(self.scratch.len() as u16);
            self.out.extend_from_slice(&self.scratch);
        } else {
            self.out.put16(len | META_UNCOMPRESSED);
            self.out.extend_from_slice(&self.block);
        }
        self.block.clear();
    }
}

/// Writes a table of fixed-size entries (fragment or id table) the way the kernel looks
/// them up: the entries as metadata blocks, then an array of those blocks' positions.
/// Returns the array's position, which is what the superblock records.
pub fn write_indexed_table(sink: &mut Sink, level: i32, entries: &[u8]) -> Result<u64> {
    let mut w = MetaWriter::new(level)?;
    w.write(entries);
    let (blocks, starts) = w.finish();
    let at = sink.pos();
    sink.write(&blocks)?;
    let mut index = Vec::with_capacity(starts.len() * 8);
    for s in starts {
        index.put64(at + s);
    }
    let table = sink.pos();
    sink.write(&index)?;
    Ok(table)
}
