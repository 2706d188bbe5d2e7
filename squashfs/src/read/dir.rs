//! Directory listings, read back: runs of up to 256 entries, each run under a header
//! naming the metadata block of its inodes and a base inode number (see the writer's
//! `inodes.rs`). Names are sorted, so a lookup can stop at the first name past the one
//! it wants; the directory index says which metadata block to start in, as the kernel
//! uses it, so a lookup in a directory of 70,000 entries reads one or two blocks.

use super::inode::{DirInfo, Inode, InodeRef, Kind};
use super::meta::{Cursor, MetaLoc};
use super::{corrupt, Image, Inner};
use crate::layout::{DIR_HEADER_MAX, METADATA_SIZE, NAME_MAX};
use std::io;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub inode: InodeRef,
    /// The inode's number, as the listing gives it.
    pub number: u32,
    pub kind: Kind,
}

/// Where to resume a listing: 0 is its start. Opaque, stable for the life of the image,
/// and a `u64` so that FUSE can hand it back as a readdir offset: the byte offset of a
/// run's header in the listing, and how many of the run's entries were already given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirCookie(pub u64);

impl DirCookie {
    fn new(header: u32, done: u32) -> DirCookie {
        DirCookie(u64::from(header) << 9 | u64::from(done))
    }

    fn parts(self) -> io::Result<(u32, u32)> {
        let done = (self.0 & 0x1FF) as u32;
        let header = u32::try_from(self.0 >> 9).map_err(|_| invalid_cookie())?;
        if done as usize > DIR_HEADER_MAX {
            return Err(invalid_cookie());
        }
        Ok((header, done))
    }
}

fn invalid_cookie() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a position in this directory")
}

struct Run {
    /// Entries of the run not yet read.
    left: u32,
    /// Where the run's inodes are, relative to the inode table.
    inode_block: u32,
    base: u32,
    /// Offset of the run's header in the listing.
    header: u32,
    /// Entries of the run already read.
    done: u32,
}

/// The entries of one directory, from a cookie on, each with the cookie that resumes
/// after it.
pub struct Entries<'a> {
    cursor: Cursor<'a>,
    /// Bytes of the listing read so far, and in all.
    consumed: u32,
    size: u32,
    run: Option<Run>,
    failed: bool,
}

impl Image {
    /// The entries of directory `dir`, from `from` on.
    pub fn entries(&self, dir: &Inode, from: DirCookie) -> io::Result<Entries<'_>> {
        let (header, done) = from.parts()?;
        let d = dir.dir()?;
        if header > d.listing {
            return Err(invalid_cookie());
        }
        let mut e = Entries::at_or_before(&self.inner, dir, header)?;
        // Walk whole runs up to the one the cookie names.
        while e.consumed < header {
            e.read_header()?;
            e.skip_run()?;
        }
        if e.consumed != header {
            return Err(invalid_cookie());
        }
        if header < d.listing && done > 0 {
            e.read_header()?;
            for _ in 0..done {
                e.next_raw()?.ok_or_else(invalid_cookie)?;
            }
        }
        Ok(e)
    }

    /// The entry called `name` in directory `dir`.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> io::Result<Option<Entry>> {
        if name.is_empty() || name.len() > NAME_MAX {
            return Ok(None);
        }
        let start = self.inner.index_lookup(dir.dir()?, name)?;
        let mut e = Entries::from_loc(&self.inner, dir.dir()?, start.0, start.1);
        while let Some(entry) = e.next_raw()? {
            match entry.name.as_slice().cmp(name) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return Ok(Some(entry)),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }
}

impl Inner {
    /// Where in the listing to start looking for `name`: the last index entry whose first
    /// name is not after it (or the start).
    fn index_lookup(&self, d: &DirInfo, name: &[u8]) -> io::Result<(MetaLoc, u32)> {
        let mut best = (d.start, 0u32);
        let Some((count, at)) = d.index else { return Ok(best) };
        let mut c = Cursor::new(self, self.inodes, at);
        for _ in 0..count {
            let (loc, offset, first) = self.index_entry(&mut c, d)?;
            if first.as_slice() > name {
                break;
            }
            best = (loc, offset);
        }
        Ok(best)
    }

    /// Where in the listing to resume at byte `header`: the last index entry at or
    /// before it.
    fn index_seek(&self, d: &DirInfo, header: u32) -> io::Result<(MetaLoc, u32)> {
        let mut best = (d.start, 0u32);
        let Some((count, at)) = d.index else { return Ok(best) };
        let mut c = Cursor::new(self, self.inodes, at);
        for _ in 0..count {
            let (loc, offset, _) = self.index_entry(&mut c, d)?;
            if offset > header {
                break;
            }
            best = (loc, offset);
        }
        Ok(best)
    }

    /// One entry of a directory index: where the run it names starts, its offset in the
    /// listing, and its first name.
    fn index_entry(&self, c: &mut Cursor, d: &DirInfo) -> io::Result<(MetaLoc, u32, Vec<u8>)> {
        let offset = c.u32()?;
        let block = c.u32()?;
        let len = c.u32()? as usize + 1;
        if len > NAME_MAX || offset > d.listing {
            return Err(corrupt("a directory index entry is not valid"));
        }
        let name = c.bytes(len)?;
        let at = self.directories.start + u64::from(block);
        if at >= self.directories.end {
            return Err(corrupt("a directory index entry points outside the directory table"));
        }
        // The listing is one stream of 8 KiB blocks from its start: byte `offset` of
        // it lies in the block the entry names, at this offset.
        let in_block = (offset as usize + d.start.offset as usize) % METADATA_SIZE;
        Ok((MetaLoc { block: at, offset: in_block as u32 }, offset, name))
    }
}

impl<'a> Entries<'a> {
    fn from_loc(inner: &'a Inner, d: &DirInfo, loc: MetaLoc, consumed: u32) -> Entries<'a> {
        Entries {
            cursor: Cursor::new(inner, inner.directories, loc),
            consumed,
            size: d.listing,
            run: None,
            failed: false,
        }
    }

    fn at_or_before(inner: &'a Inner, dir: &Inode, header: u32) -> io::Result<Entries<'a>> {
        let d = dir.dir()?;
        let (loc, consumed) = inner.index_seek(d, header)?;
        Ok(Entries::from_loc(inner, d, loc, consumed))
    }

    fn take(&mut self, n: u32) -> io::Result<()> {
        if self.size - self.consumed < n {
            return Err(corrupt("a directory entry runs past the end of its listing"));
        }
        self.consumed += n;
        Ok(())
    }

    fn read_header(&mut self) -> io::Result<()> {
        let header = self.consumed;
        self.take(12)?;
        let count = self.cursor.u32()? as usize + 1;
        let inode_block = self.cursor.u32()?;
        let base = self.cursor.u32()?;
        if count > DIR_HEADER_MAX {
            return Err(corrupt(format!("a directory header counts {count} entries")));
        }
        self.run = Some(Run { left: count as u32, inode_block, base, header, done: 0 });
        Ok(())
    }

    fn skip_run(&mut self) -> io::Result<()> {
        while self.run.as_ref().is_some_and(|r| r.left > 0) {
            self.next_in_run()?;
        }
        self.run = None;
        Ok(())
    }

    fn next_in_run(&mut self) -> io::Result<Entry> {
        self.take(8)?;
        let offset = self.cursor.u16()?;
        let delta = self.cursor.u16()? as i16;
        let t = self.cursor.u16()?;
        let len = usize::from(self.cursor.u16()?) + 1;
        if len > NAME_MAX {
            return Err(corrupt(format!("a file name of {len} bytes")));
        }
        self.take(len as u32)?;
        let name = self.cursor.bytes(len)?;
        if name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(corrupt(format!("the file name {:?} is not valid", String::from_utf8_lossy(&name))));
        }
        let kind = Kind::from_basic(t).ok_or_else(|| corrupt(format!("a directory entry of unknown type {t}")))?;
        if usize::from(offset) >= METADATA_SIZE {
            return Err(corrupt("a directory entry points past its inode's metadata block"));
        }
        let run = self.run.as_mut().expect("inside a run");
        run.left -= 1;
        run.done += 1;
        let inode = InodeRef(u64::from(run.inode_block) << 16 | u64::from(offset));
        let number = run.base.wrapping_add(delta as i32 as u32);
        Ok(Entry { name, inode, number, kind })
    }

    /// The next entry, or `None` at the end of the listing.
    fn next_raw(&mut self) -> io::Result<Option<Entry>> {
        loop {
            if self.run.as_ref().is_some_and(|r| r.left > 0) {
                return self.next_in_run().map(Some);
            }
            self.run = None;
            if self.consumed >= self.size {
                return Ok(None);
            }
            self.read_header()?;
        }
    }

    /// Where the listing resumes after what was read last.
    fn cookie(&self) -> DirCookie {
        match &self.run {
            Some(r) => DirCookie::new(r.header, r.done),
            None => DirCookie::new(self.consumed, 0),
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = io::Result<(Entry, DirCookie)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_raw() {
            Ok(Some(e)) => Some(Ok((e, self.cookie()))),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
