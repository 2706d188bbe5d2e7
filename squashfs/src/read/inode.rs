//! Inodes, decoded one at a time from the inode table by reference.

use super::meta::{Cursor, MetaLoc};
use super::{corrupt, Inner};
use crate::layout::*;
use std::io;

/// Where an inode is: its metadata block (relative to the inode table) in the upper 32
/// bits, the offset in that block's decompressed bytes in the lower 16. Unique per
/// inode, so it is the inode's identity: hard links share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeRef(pub u64);

impl InodeRef {
    fn loc(self, table: u64) -> io::Result<MetaLoc> {
        let offset = (self.0 & 0xFFFF) as u32;
        let block = self.0 >> 16;
        if offset as usize >= METADATA_SIZE || block >= 1 << 32 {
            return Err(corrupt(format!("inode reference {:#x} is not valid", self.0)));
        }
        Ok(MetaLoc { block: table + block, offset })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
}

impl Kind {
    /// The kind a directory entry's basic type names.
    pub(crate) fn from_basic(t: u16) -> Option<Kind> {
        Some(match t {
            BASIC_DIR => Kind::Dir,
            BASIC_FILE => Kind::File,
            BASIC_SYMLINK => Kind::Symlink,
            BASIC_BLOCK_DEVICE => Kind::BlockDevice,
            BASIC_CHAR_DEVICE => Kind::CharDevice,
            BASIC_FIFO => Kind::Fifo,
            BASIC_SOCKET => Kind::Socket,
            _ => return None,
        })
    }
}

/// One decoded inode.
#[derive(Debug, Clone)]
pub struct Inode {
    pub reference: InodeRef,
    /// The inode number the image gives it (1 to the inode count).
    pub number: u32,
    pub kind: Kind,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub nlink: u32,
    /// Bytes of a file, of a link target, of a directory listing.
    pub size: u64,
    /// Device number of a device node.
    pub rdev: u32,
    pub(crate) detail: Detail,
}

#[derive(Debug, Clone)]
pub(crate) enum Detail {
    Dir(DirInfo),
    File(FileInfo),
    Symlink(Vec<u8>),
    Other,
}

/// Where a directory's listing is.
#[derive(Debug, Clone)]
pub(crate) struct DirInfo {
    /// The listing's first metadata block (image position) and offset in it.
    pub start: MetaLoc,
    /// Bytes of headers and entries (the inode's size less the 3 of `.` and `..`).
    pub listing: u32,
    /// The directory index, when it has one: `(count, where it starts)`.
    pub index: Option<(u16, MetaLoc)>,
    /// The parent directory's inode number.
    pub parent: u32,
}

/// Where a regular file's bytes are.
#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    /// Image position of the first data block.
    pub blocks_start: u64,
    pub block_count: u64,
    /// Where the size words of the blocks begin, right after the inode.
    pub sizes: MetaLoc,
    /// The fragment holding the file's tail: `(fragment index, offset in it)`.
    pub fragment: Option<(u32, u32)>,
}

/// The longest link target accepted (Linux's PATH_MAX).
const LINK_MAX: u32 = 4096;

impl Inode {
    /// A symlink's target.
    pub fn link_target(&self) -> Option<&[u8]> {
        match &self.detail {
            Detail::Symlink(t) => Some(t),
            _ => None,
        }
    }

    /// The directory's parent's inode number (the root's is one past the inode count).
    pub fn parent_number(&self) -> Option<u32> {
        match &self.detail {
            Detail::Dir(d) => Some(d.parent),
            _ => None,
        }
    }

    pub(crate) fn dir(&self) -> io::Result<&DirInfo> {
        match &self.detail {
            Detail::Dir(d) => Ok(d),
            _ => Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")),
        }
    }

    pub(crate) fn file(&self) -> io::Result<&FileInfo> {
        match &self.detail {
            Detail::File(f) => Ok(f),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")),
        }
    }
}

impl Inner {
    pub(super) fn inode(&self, r: InodeRef) -> io::Result<Inode> {
        let mut c = Cursor::new(self, self.inodes, r.loc(self.inodes.start)?);
        let t = c.u16()?;
        let mode = c.u16()?;
        let uid = self.id(c.u16()?)?;
        let gid = self.id(c.u16()?)?;
        let mtime = c.u32()?;
        let number = c.u32()?;
        let mut inode = Inode {
            reference: r,
            number,
            kind: Kind::File,
            mode: mode & 0o7777,
            uid,
            gid,
            mtime,
            nlink: 1,
            size: 0,
            rdev: 0,
            detail: Detail::Other,
        };
        match t {
            BASIC_DIR => {
                let start = c.u32()?;
                inode.nlink = c.u32()?;
                let size = c.u16()?;
                let offset = c.u16()?;
                let parent = c.u32()?;
                inode.detail = Detail::Dir(self.dir_info(start, u32::from(size), offset, parent, None)?);
                inode.kind = Kind::Dir;
                inode.size = u64::from(size);
            }
            EXTENDED_DIR => {
                inode.nlink = c.u32()?;
                let size = c.u32()?;
                let start = c.u32()?;
                let parent = c.u32()?;
                let count = c.u16()?;
                let offset = c.u16()?;
                let _xattr = c.u32()?;
                let index = (count > 0).then(|| (count, c.loc()));
                inode.detail = Detail::Dir(self.dir_info(start, size, offset, parent, index)?);
                inode.kind = Kind::Dir;
                inode.size = u64::from(size);
            }
            BASIC_FILE => {
                let blocks_start = u64::from(c.u32()?);
                let fragment = c.u32()?;
                let offset = c.u32()?;
                let size = u64::from(c.u32()?);
                inode.detail = Detail::File(self.file_info(blocks_start, size, fragment, offset, c.loc())?);
                inode.size = size;
            }
            EXTENDED_FILE => {
                let blocks_start = c.u64()?;
                let size = c.u64()?;
                let _sparse = c.u64()?;
                inode.nlink = c.u32()?;
                let fragment = c.u32()?;
                let offset = c.u32()?;
                let _xattr = c.u32()?;
                inode.detail = Detail::File(self.file_info(blocks_start, size, fragment, offset, c.loc())?);
                inode.size = size;
            }
            BASIC_SYMLINK | EXTENDED_SYMLINK => {
                inode.nlink = c.u32()?;
                let len = c.u32()?;
                if len == 0 || len > LINK_MAX {
                    return Err(corrupt(format!("a symlink target of {len} bytes")));
                }
                let target = c.bytes(len as usize)?;
                if target.contains(&0) {
                    return Err(corrupt("a symlink target holds a NUL byte"));
                }
                inode.kind = Kind::Symlink;
                inode.size = u64::from(len);
                inode.detail = Detail::Symlink(target);
            }
            BASIC_BLOCK_DEVICE | BASIC_CHAR_DEVICE | EXTENDED_BLOCK_DEVICE | EXTENDED_CHAR_DEVICE => {
                inode.nlink = c.u32()?;
                inode.rdev = c.u32()?;
                let block = matches!(t, BASIC_BLOCK_DEVICE | EXTENDED_BLOCK_DEVICE);
                inode.kind = if block { Kind::BlockDevice } else { Kind::CharDevice };
            }
            BASIC_FIFO | BASIC_SOCKET | EXTENDED_FIFO | EXTENDED_SOCKET => {
                inode.nlink = c.u32()?;
                inode.kind = if matches!(t, BASIC_FIFO | EXTENDED_FIFO) { Kind::Fifo } else { Kind::Socket };
            }
            _ => return Err(corrupt(format!("inode {:#x} has the unknown type {t}", r.0))),
        }
        Ok(inode)
    }

    fn dir_info(
        &self,
        start: u32,
        size: u32,
        offset: u16,
        parent: u32,
        index: Option<(u16, MetaLoc)>,
    ) -> io::Result<DirInfo> {
        // mksquashfs counts 3 bytes for `.` and `..`, which are not stored.
        if size < 3 {
            return Err(corrupt(format!("a directory listing of {size} bytes")));
        }
        if usize::from(offset) >= METADATA_SIZE {
            return Err(corrupt("a directory listing starts past its metadata block"));
        }
        let at = self.directories.start + u64::from(start);
        if at >= self.directories.end {
            return Err(corrupt("a directory listing is outside the directory table"));
        }
        let listing = size - 3;
        if u64::from(listing) > self.directories.most_bytes() {
            return Err(corrupt(format!("a directory listing of {listing} bytes is larger than its table")));
        }
        Ok(DirInfo { start: MetaLoc { block: at, offset: u32::from(offset) }, listing, index, parent })
    }

    fn file_info(&self, start: u64, size: u64, fragment: u32, offset: u32, sizes: MetaLoc) -> io::Result<FileInfo> {
        let bs = u64::from(self.sb.block_size);
        let fragment = (fragment != NO_FRAGMENT).then_some((fragment, offset));
        let block_count = if fragment.is_some() { size / bs } else { size.div_ceil(bs) };
        if fragment.is_some_and(|(i, _)| i >= self.sb.fragment_count) {
            return Err(corrupt(format!("a file's fragment {} is beyond the fragment count", fragment.unwrap().0)));
        }
        if fragment.is_some_and(|(_, o)| u64::from(o) + size % bs > bs) {
            return Err(corrupt("a file's tail runs past the end of its fragment"));
        }
        // Every block has a 4-byte size word in the inode table: a size the table
        // cannot describe is a lie, however large the file claims to be.
        if block_count.saturating_mul(4) > self.inodes.most_bytes() {
            return Err(corrupt(format!("a file of {size} bytes has more blocks than the inode table can list")));
        }
        if start >= self.sb.bytes_used && block_count > 0 {
            return Err(corrupt("a file's blocks start outside the image"));
        }
        Ok(FileInfo { blocks_start: start, block_count, sizes, fragment })
    }
}
