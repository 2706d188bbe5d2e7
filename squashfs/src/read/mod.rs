//! The lazy reader: what [`Image::open`] reads, and what it leaves for later.
//!
//! Opening reads the superblock, the id table and the index of the fragment table: a few
//! hundred bytes whatever the image holds. Everything else is read when asked for, by
//! position, through bounded caches shared by all threads:
//!
//! - an inode, by its reference (metadata block and offset), from the inode table;
//! - a name, from its directory's listing: the directory index says which metadata
//!   block of the listing to start in, and the sorted entries say when to stop;
//! - a file's bytes, one data block or fragment at a time, `pread` at a known position
//!   and decompressed; the next blocks of a file being read are decompressed ahead on
//!   a thread of their own.
//!
//! Every position and size read from the image is checked against the table it must
//! lie in before it is used, so a damaged or hostile image gives an error naming what
//! is wrong, in bounded time and memory, never a panic or a read elsewhere.

mod cache;
mod data;
mod dir;
mod inode;
mod meta;
mod verify;
mod walk;

pub use data::Piece;
pub use dir::{DirCookie, Entries, Entry};
pub use inode::{Inode, InodeRef, Kind};
pub use verify::Chunks;

use crate::layout::*;
use cache::Cache;
use data::{Ahead, DataBlock, FileMap};
use meta::{MetaBlock, Region};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};
use verify::Verifier;

/// Decompressed metadata blocks kept: 256 × 8 KiB = 2 MiB, the inodes and listings of
/// tens of thousands of entries.
const META_CACHE_BYTES: usize = 2 << 20;
/// Decompressed data blocks kept: 8 MiB (64 blocks of 128 KiB).
const DATA_CACHE_BYTES: usize = 8 << 20;
/// File block maps kept (a few dozen bytes for most files).
const MAP_CACHE_BYTES: usize = 1 << 20;

/// An error that says the image is damaged, and what was found wrong.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the image is corrupted: {what}"))
}

/// A squashfs image inside a file, read on demand. `Sync`: the FUSE server's threads
/// share one.
pub struct Image {
    inner: Arc<Inner>,
}

/// What the read-ahead thread shares with the readers.
struct Inner {
    file: File,
    /// Where the image starts in `file`.
    offset: u64,
    /// Checks chunks against their digests, for an image opened with them.
    verifier: Option<Verifier>,
    /// Read-ahead requests, once [`Image::start_readahead`] started its thread (which
    /// holds the image weakly, and ends with it).
    ahead: OnceLock<SyncSender<Ahead>>,
    sb: Superblock,
    inodes: Region,
    directories: Region,
    /// Where the fragment, id and export tables' metadata blocks are.
    lookup: Region,
    ids: Vec<u32>,
    /// Position of each metadata block of the fragment table.
    fragment_index: Vec<u64>,
    meta: Cache<Arc<MetaBlock>>,
    data: Cache<DataBlock>,
    maps: Cache<Arc<FileMap>>,
    /// One block of zeros, what a hole reads as.
    zeros: DataBlock,
}

impl Image {
    /// Opens the image that starts at `offset` in `file`, trusting its bytes.
    pub fn open(file: &File, offset: u64) -> io::Result<Image> {
        Image::open_with(file, offset, None)
    }

    /// Opens the image that starts at `offset` in `file`; no byte of it is used before
    /// the chunk that holds it matches its digest (see [`Chunks`]). A chunk that does
    /// not is an error for every read that needs it, and only for those.
    pub fn open_verified(file: &File, offset: u64, chunks: Chunks) -> io::Result<Image> {
        let verifier = Verifier::new(chunks, file)?;
        Image::open_with(file, offset, Some(verifier))
    }

    fn open_with(file: &File, offset: u64, verifier: Option<Verifier>) -> io::Result<Image> {
        let file = file.try_clone()?;
        let file_len = file.metadata()?.len();
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        read_image(&file, offset, verifier.as_ref(), &mut raw, 0)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read the squashfs superblock: {e}")))?;
        let sb = Superblock::decode(&raw).map_err(corrupt)?;
        check_compressor(&sb)?;
        let image_len = file_len.saturating_sub(offset);
        if sb.bytes_used > image_len {
            return Err(corrupt(format!(
                "it says it has {} bytes but only {image_len} are there (a truncated copy?)",
                sb.bytes_used
            )));
        }
        let bytes_used = sb.bytes_used;
        let in_image = |what: &str, pos: u64| {
            if pos < SUPERBLOCK_SIZE as u64 || pos >= bytes_used {
                Err(corrupt(format!("the {what} is outside the image")))
            } else {
                Ok(pos)
            }
        };
        let inode_start = in_image("inode table", sb.inode_table)?;
        let dir_start = in_image("directory table", sb.directory_table)?;
        in_image("id table", sb.id_table)?;
        if dir_start <= inode_start {
            return Err(corrupt("the directory table starts before the inode table"));
        }
        let mut inner = Inner {
            file,
            offset,
            verifier,
            ahead: OnceLock::new(),
            inodes: Region { start: inode_start, end: dir_start },
            directories: Region { start: dir_start, end: sb.bytes_used },
            lookup: Region { start: dir_start, end: sb.bytes_used },
            ids: Vec::new(),
            fragment_index: Vec::new(),
            meta: Cache::new(META_CACHE_BYTES),
            data: Cache::new(DATA_CACHE_BYTES),
            maps: Cache::new(MAP_CACHE_BYTES),
            zeros: Arc::new(vec![0; sb.block_size as usize]),
            sb,
        };
        let id_index = inner.read_index("id", inner.sb.id_table, usize::from(inner.sb.id_count), ID_ENTRY_SIZE)?;
        inner.fragment_index = if inner.sb.fragment_count == 0 {
            Vec::new()
        } else {
            in_image("fragment table", inner.sb.fragment_table)?;
            inner.read_index(
                "fragment",
                inner.sb.fragment_table,
                inner.sb.fragment_count as usize,
                FRAGMENT_ENTRY_SIZE,
            )?
        };
        // The listings end where the first of the lookup tables' blocks begins.
        let dir_end = id_index.iter().chain(inner.fragment_index.iter()).copied().filter(|&p| p > dir_start).min();
        let dir_end = dir_end.ok_or_else(|| corrupt("the lookup tables start before the directory table"))?;
        inner.directories.end = dir_end;
        inner.lookup.start = dir_end;
        inner.ids = inner.read_ids(&id_index)?;
        Ok(Image { inner: Arc::new(inner) })
    }

    pub fn block_size(&self) -> u32 {
        self.inner.sb.block_size
    }

    /// Inodes in the image, as its superblock counts them.
    pub fn inode_count(&self) -> u32 {
        self.inner.sb.inode_count
    }

    /// The image's creation time (seconds since the epoch).
    pub fn mkfs_time(&self) -> u32 {
        self.inner.sb.mkfs_time
    }

    pub fn root(&self) -> InodeRef {
        InodeRef(self.inner.sb.root_inode)
    }

    /// Decodes the inode at `r`.
    pub fn inode(&self, r: InodeRef) -> io::Result<Inode> {
        self.inner.inode(r)
    }

    /// The root directory's inode.
    pub fn root_inode(&self) -> io::Result<Inode> {
        let root = self.inode(self.root())?;
        if root.kind != Kind::Dir {
            return Err(corrupt("the root is not a directory"));
        }
        Ok(root)
    }

    /// Walks an absolute path from the root without following symlinks.
    pub fn lookup_path(&self, path: &Path) -> io::Result<Option<Inode>> {
        let mut cur = self.root_inode()?;
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => continue,
                Component::Normal(name) => {
                    let Some(entry) = self.lookup(&cur, name.as_encoded_bytes())? else { return Ok(None) };
                    cur = self.inode(entry.inode)?;
                }
                Component::ParentDir | Component::Prefix(_) => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Decompresses the blocks of files being read ahead of the reader, on a thread of
    /// its own (the FUSE server asks for this; a one-pass extraction does not need it).
    pub fn start_readahead(&self) {
        self.inner.ahead.get_or_init(|| data::spawn_readahead(Arc::downgrade(&self.inner)));
    }
}

/// Only zstd is decompressed here; an image whose blocks are all stored uncompressed
/// (mksquashfs `-noI -noD -noF`) is readable whatever compressor it names.
fn check_compressor(sb: &Superblock) -> io::Result<()> {
    let all_raw = FLAG_UNCOMPRESSED_INODES | FLAG_UNCOMPRESSED_DATA | FLAG_UNCOMPRESSED_FRAGMENTS;
    if sb.compressor == COMPRESSOR_ZSTD || sb.flags & all_raw == all_raw {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "the image is compressed with {}; only zstd is supported (rebuild it with `bundle build`, or \
             `mksquashfs ... -comp zstd`)",
            compressor_name(sb.compressor)
        ),
    ))
}

/// Every read of the image: through the verifier when there is one. Returns the last
/// chunk the read checked, if it checked one.
fn read_image(
    file: &File,
    offset: u64,
    verifier: Option<&Verifier>,
    buf: &mut [u8],
    pos: u64,
) -> io::Result<Option<u64>> {
    let read = match verifier {
        Some(v) => v.read(file, offset, buf, pos),
        None => file.read_exact_at(buf, offset + pos).map(|()| None),
    };
    read.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(format!("it ends before byte {}", pos + buf.len() as u64)),
        io::ErrorKind::InvalidData => e,
        _ => io::Error::new(e.kind(), format!("cannot read the image at byte {pos}: {e}")),
    })
}

impl Inner {
    /// Reads `len` bytes at `pos` of the image. A read that checked a chunk has the
    /// read-ahead thread, if there is one, check the next: a file read in order, or the
    /// next files of a walk, then find their chunks checked, the hashing done on
    /// another core than the reader's.
    fn pread(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let checked = read_image(&self.file, self.offset, self.verifier.as_ref(), buf, pos)?;
        if let (Some(i), Some(ahead)) = (checked, self.ahead.get()) {
            let _ = ahead.try_send(Ahead::Chunk(i + 1));
        }
        Ok(())
    }

    /// Checks chunk `i` if it was not checked yet (the read-ahead thread's work).
    fn check_chunk(&self, i: u64) {
        if let Some(v) = &self.verifier {
            v.check(&self.file, self.offset, i);
        }
    }

    /// The array of metadata block positions that locates the entries of a lookup table.
    fn read_index(&self, what: &str, at: u64, count: usize, entry: usize) -> io::Result<Vec<u64>> {
        let blocks = (count * entry).div_ceil(METADATA_SIZE);
        let bytes = blocks as u64 * 8;
        if at.checked_add(bytes).is_none_or(|end| end > self.sb.bytes_used) {
            return Err(corrupt(format!("the {what} table's index runs past the end")));
        }
        let mut raw = vec![0u8; bytes as usize];
        self.pread(&mut raw, at)?;
        let index: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        if index.iter().any(|&p| p >= at || p < SUPERBLOCK_SIZE as u64) {
            return Err(corrupt(format!("the {what} table's index points outside the table")));
        }
        Ok(index)
    }

    fn read_ids(&self, index: &[u64]) -> io::Result<Vec<u32>> {
        let count = usize::from(self.sb.id_count);
        if count == 0 {
            return Err(corrupt("the id table is empty"));
        }
        let mut ids = Vec::with_capacity(count);
        let mut raw = [0u8; ID_ENTRY_SIZE];
        for i in 0..count {
            self.lookup_entry(index, i, &mut raw, "id")?;
            ids.push(u32::from_le_bytes(raw));
        }
        Ok(ids)
    }

    /// Entry `i` of a lookup table of fixed-size entries (which never straddle blocks:
    /// 4, 8 and 16 divide 8192).
    fn lookup_entry(&self, index: &[u64], i: usize, out: &mut [u8], what: &str) -> io::Result<()> {
        let at = i * out.len();
        let block = *index
            .get(at / METADATA_SIZE)
            .ok_or_else(|| corrupt(format!("{what} {i} is beyond the end of the {what} table")))?;
        let b = self.meta_block(self.lookup, block)?;
        let from = at % METADATA_SIZE;
        let got = b.data.get(from..from + out.len()).ok_or_else(|| corrupt(format!("{what} {i} is missing")))?;
        out.copy_from_slice(got);
        Ok(())
    }

    fn id(&self, index: u16) -> io::Result<u32> {
        self.ids.get(usize::from(index)).copied().ok_or_else(|| corrupt(format!("id index {index} out of range")))
    }
}
