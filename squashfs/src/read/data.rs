//! File contents: data blocks, fragments and holes.
//!
//! A file's inode lists one size word per block; a block's position is the sum of the
//! sizes before it. The map of a file keeps that sum at every 64th block (24 bytes per
//! 8 MiB of file), so finding block `k` of a file reads at most 64 size words, and a
//! 100 GiB file costs 40 KiB of memory, not the 9 MiB of a full table.
//!
//! A block is read with one `pread` at its position and decompressed into the shared
//! cache; the FUSE server replies straight from the cached block, without a copy.

use super::inode::{FileInfo, Inode};
use super::meta::{Cursor, MetaLoc};
use super::{corrupt, Image, Inner};
use crate::layout::{DATA_UNCOMPRESSED, FRAGMENT_ENTRY_SIZE};
use std::io;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Weak};

pub type DataBlock = Arc<Vec<u8>>;

/// Blocks between two checkpoints of a file map.
const GROUP: u64 = 64;
/// Blocks decompressed ahead of a reader.
const AHEAD: u64 = 2;

/// Where a file's blocks are.
pub struct FileMap {
    size: u64,
    info: FileInfo,
    checkpoints: Vec<Checkpoint>,
}

#[derive(Clone, Copy)]
struct Checkpoint {
    /// Image position of the block.
    data: u64,
    /// Where its size word is in the inode table.
    word: MetaLoc,
}

/// A range of a decompressed block, shared with the block cache.
pub struct Piece {
    block: DataBlock,
    start: usize,
    end: usize,
    hole: bool,
}

impl Piece {
    /// The piece is part of a hole: zeros that the image does not store.
    pub fn is_hole(&self) -> bool {
        self.hole
    }
}

impl std::ops::Deref for Piece {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.block[self.start..self.end]
    }
}

/// The stored size in a block's size word, checked.
fn stored_size(word: u32, block_size: u32) -> io::Result<u32> {
    let size = word & !DATA_UNCOMPRESSED;
    if size > block_size {
        return Err(corrupt(format!("a data block of {size} bytes is larger than the block size")));
    }
    Ok(size)
}

impl Image {
    /// The bytes of `file` from `pos` to the end of the block that holds `pos`; `None`
    /// at or past the end of the file.
    pub fn piece_at(&self, file: &Inode, pos: u64) -> io::Result<Option<Piece>> {
        if pos >= file.size {
            return Ok(None);
        }
        let map = self.inner.map(file)?;
        let bs = u64::from(self.inner.sb.block_size);
        let k = pos / bs;
        let piece = self.inner.block_piece(&map, k)?;
        let skip = (pos - k * bs) as usize;
        if let Some(ahead) = self.inner.ahead.get().filter(|_| skip == 0) {
            for j in k + 1..(k + 1 + AHEAD).min(map.info.block_count) {
                // A full queue means the thread is busy: the reader will do it.
                let _ = ahead.try_send(Ahead::Block(map.clone(), j));
            }
        }
        Ok(Some(Piece { start: piece.start + skip, ..piece }))
    }

    /// Has the read-ahead thread decompress the first `bytes` of `file` (no more than
    /// its queue holds), for a file about to be read from its start: the program a new
    /// container runs, read while the container is still being set up. Does nothing
    /// before [`Image::start_readahead`].
    pub fn prefetch(&self, file: &Inode, bytes: u64) {
        let (Some(ahead), Ok(map)) = (self.inner.ahead.get(), self.inner.map(file)) else { return };
        let blocks = bytes.div_ceil(u64::from(self.inner.sb.block_size)).min(map.info.block_count);
        for k in 0..blocks {
            if ahead.try_send(Ahead::Block(map.clone(), k)).is_err() {
                break;
            }
        }
    }

    /// Copies up to `buf.len()` bytes of `file` from `pos`; returns how many.
    pub fn read_at(&self, file: &Inode, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let Some(piece) = self.piece_at(file, pos + done as u64)? else { break };
            let n = piece.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&piece[..n]);
            done += n;
        }
        Ok(done)
    }

    /// `SEEK_DATA`: the first position at or after `pos` that is not in a hole.
    pub fn next_data(&self, file: &Inode, pos: u64) -> io::Result<Option<u64>> {
        self.next_where(file, pos, |hole| !hole).map(|p| p.filter(|&p| p < file.size))
    }

    /// `SEEK_HOLE`: the first position at or after `pos` in a hole; the end of the file
    /// counts as one.
    pub fn next_hole(&self, file: &Inode, pos: u64) -> io::Result<u64> {
        Ok(self.next_where(file, pos, |hole| hole)?.unwrap_or(file.size).min(file.size))
    }

    fn next_where(&self, file: &Inode, pos: u64, want: impl Fn(bool) -> bool) -> io::Result<Option<u64>> {
        if pos >= file.size {
            return Ok(None);
        }
        let map = self.inner.map(file)?;
        let bs = u64::from(self.inner.sb.block_size);
        let first = pos / bs;
        if first < map.info.block_count {
            let mut words = self.inner.words_from(&map, first)?;
            for k in first..map.info.block_count {
                let (_, word) = words.next()?;
                if want(word & !DATA_UNCOMPRESSED == 0) {
                    return Ok(Some(pos.max(k * bs)));
                }
            }
        }
        // The tail in a fragment is data.
        let tail = map.info.block_count * bs;
        Ok((map.info.fragment.is_some() && want(false) && tail < file.size).then(|| pos.max(tail)))
    }
}

/// The size words of a file's blocks from one block on, with each block's position.
struct Words<'a> {
    cursor: Cursor<'a>,
    data: u64,
    block_size: u32,
    bytes_used: u64,
}

impl Words<'_> {
    fn next(&mut self) -> io::Result<(u64, u32)> {
        let word = self.cursor.u32()?;
        let size = stored_size(word, self.block_size)?;
        let at = self.data;
        if at.saturating_add(u64::from(size)) > self.bytes_used {
            return Err(corrupt(format!("a data block at byte {at} runs past the end of the image")));
        }
        self.data += u64::from(size);
        Ok((at, word))
    }
}

impl Inner {
    /// The block map of `file`, through the cache.
    fn map(&self, file: &Inode) -> io::Result<Arc<FileMap>> {
        let info = file.file()?;
        self.maps.get_or_load(file.reference.0, || {
            let mut checkpoints = Vec::with_capacity(info.block_count.div_ceil(GROUP) as usize);
            let mut words = Words {
                cursor: Cursor::new(self, self.inodes, info.sizes),
                data: info.blocks_start,
                block_size: self.sb.block_size,
                bytes_used: self.sb.bytes_used,
            };
            for k in 0..info.block_count {
                if k % GROUP == 0 {
                    checkpoints.push(Checkpoint { data: words.data, word: words.cursor.loc() });
                }
                words.next()?;
            }
            let bytes = 64 + checkpoints.len() * std::mem::size_of::<Checkpoint>();
            Ok((Arc::new(FileMap { size: file.size, info: info.clone(), checkpoints }), bytes))
        })
    }

    fn words_from(&self, map: &FileMap, k: u64) -> io::Result<Words<'_>> {
        let Some(cp) = map.checkpoints.get((k / GROUP) as usize) else {
            return Err(corrupt("a block beyond the file's block list"));
        };
        let mut words = Words {
            cursor: Cursor::new(self, self.inodes, cp.word),
            data: cp.data,
            block_size: self.sb.block_size,
            bytes_used: self.sb.bytes_used,
        };
        for _ in 0..k % GROUP {
            words.next()?;
        }
        Ok(words)
    }

    /// Block `k` of a file, whole: a data block, a hole, or the file's tail in its
    /// fragment.
    fn block_piece(&self, map: &FileMap, k: u64) -> io::Result<Piece> {
        let bs = u64::from(self.sb.block_size);
        let expect = (map.size - k * bs).min(bs) as usize;
        if k < map.info.block_count {
            let (at, word) = self.words_from(map, k)?.next()?;
            if word & !DATA_UNCOMPRESSED == 0 {
                return Ok(Piece { block: self.zeros.clone(), start: 0, end: expect, hole: true });
            }
            let block = self.data_block(at, word)?;
            if block.len() != expect {
                return Err(corrupt(format!("the data block at byte {at} has {} bytes, not {expect}", block.len())));
            }
            return Ok(Piece { block, start: 0, end: expect, hole: false });
        }
        let (index, offset) = map.info.fragment.ok_or_else(|| corrupt("a file's tail has no fragment"))?;
        let mut raw = [0u8; FRAGMENT_ENTRY_SIZE];
        self.lookup_entry(&self.fragment_index, index as usize, &mut raw, "fragment")?;
        let at = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let word = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
        let size = stored_size(word, self.sb.block_size)?;
        if size == 0 || at.saturating_add(u64::from(size)) > self.sb.bytes_used {
            return Err(corrupt(format!("fragment {index} is outside the image")));
        }
        let block = self.data_block(at, word)?;
        let (start, end) = (offset as usize, offset as usize + expect);
        if end > block.len() {
            return Err(corrupt(format!("fragment {index} is shorter than the file's tail")));
        }
        Ok(Piece { block, start, end, hole: false })
    }

    /// The decompressed data block at image position `at`, through the cache.
    fn data_block(&self, at: u64, word: u32) -> io::Result<DataBlock> {
        self.data.get_or_load(at, || {
            let size = stored_size(word, self.sb.block_size)? as usize;
            let mut raw = vec![0u8; size];
            self.pread(&mut raw, at)?;
            let data = if word & DATA_UNCOMPRESSED != 0 {
                raw
            } else {
                decompress(&raw, self.sb.block_size as usize)
                    .map_err(|_| corrupt(format!("the data block at byte {at} does not decompress")))?
            };
            let n = data.len() + 64;
            Ok((Arc::new(data), n))
        })
    }
}

/// Work for the read-ahead thread.
pub(super) enum Ahead {
    /// Block `k` of a file: decompress it into the cache.
    Block(Arc<FileMap>, u64),
    /// Chunk `i` of the image: check it against its digest.
    Chunk(u64),
}

/// The read-ahead thread: decompresses the blocks, and checks the chunks, it is told
/// of, unless a reader got there first. It ends when the image is dropped (it holds the
/// image weakly: the image owns the channel).
pub(super) fn spawn_readahead(image: Weak<Inner>) -> SyncSender<Ahead> {
    let (tx, rx) = sync_channel::<Ahead>(64);
    let _ = std::thread::Builder::new().name("readahead".into()).spawn(move || {
        for work in rx {
            let Some(inner) = image.upgrade() else { break };
            match work {
                Ahead::Block(map, k) => {
                    let Ok((at, word)) = inner.words_from(&map, k).and_then(|mut w| w.next()) else { continue };
                    if word & !DATA_UNCOMPRESSED != 0 && !inner.data.contains(at) {
                        let _ = inner.data_block(at, word);
                    }
                }
                Ahead::Chunk(i) => inner.check_chunk(i),
            }
        }
    });
    tx
}

/// zstd with one decompression context per thread: making a context costs more than
/// decompressing a small block.
pub(super) fn decompress(raw: &[u8], max: usize) -> io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = c.as_mut().expect("just made");
        d.decompress(raw, max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::{Duration, Instant};

    #[test]
    fn prefetch_decompresses_the_first_blocks_of_a_file_and_no_more() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        // Five whole 4 KiB blocks (no tail in a fragment), compressible.
        let app: Vec<u8> = (0..5 * 4096u32).map(|i| (i / 3 % 251) as u8).collect();
        std::fs::write(tree.join("app"), &app).unwrap();
        let img = d.path().join("img");
        let status = std::process::Command::new("mksquashfs")
            .arg(&tree)
            .arg(&img)
            .args(["-quiet", "-no-progress", "-noappend", "-b", "4096", "-comp", "zstd", "-no-xattrs"])
            .status()
            .expect("mksquashfs (scripts/test installs squashfs-tools)");
        assert!(status.success());
        let file = std::fs::File::open(&img).unwrap();
        let image = Image::open(&file, 0).unwrap();
        let inode = image.lookup_path(Path::new("/app")).unwrap().unwrap();
        let map = image.inner.map(&inode).unwrap();
        let cached = |k: u64| {
            let (at, _) = image.inner.words_from(&map, k).unwrap().next().unwrap();
            image.inner.data.contains(at)
        };
        image.prefetch(&inode, 3 * 4096);
        assert!(!cached(0), "no read-ahead thread yet: nothing to do");
        image.start_readahead();
        image.prefetch(&inode, 3 * 4096);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(0..3).all(cached) {
            assert!(Instant::now() < deadline, "the first three blocks were not read ahead");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!cached(3) && !cached(4), "read ahead past the bytes asked for");
        let mut back = vec![0u8; app.len()];
        assert_eq!(image.read_at(&inode, 0, &mut back).unwrap(), app.len());
        assert!(back == app);
    }
}
