//! The on-disk vocabulary of squashfs 4.0: constants and the superblock, little endian, as
//! the kernel's `fs/squashfs/squashfs_fs.h` defines them. Nothing here decides anything.

pub const MAGIC: u32 = 0x7371_7368;
pub const SUPERBLOCK_SIZE: usize = 96;

/// Uncompressed size of a metadata block (inode, directory, fragment and id tables).
pub const METADATA_SIZE: usize = 8192;
/// Bit 15 of a metadata block's 2-byte header: the block is stored uncompressed.
pub const META_UNCOMPRESSED: u16 = 1 << 15;
/// Bit 24 of a data or fragment block's size word: the block is stored uncompressed.
pub const DATA_UNCOMPRESSED: u32 = 1 << 24;

pub const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
pub const NO_XATTR: u32 = 0xFFFF_FFFF;
/// Position of a table the image does not have (export and xattr tables).
pub const NO_TABLE: u64 = u64::MAX;

pub const COMPRESSOR_ZSTD: u16 = 6;
/// The level the kernel and unsquashfs assume when no compressor options are stored;
/// mksquashfs writes options only for other levels, and so do we.
pub const ZSTD_DEFAULT_LEVEL: i32 = 15;

/// Superblock flags (only those this writer sets).
pub const FLAG_ALWAYS_FRAGMENTS: u16 = 0x0020;
pub const FLAG_DUPLICATES: u16 = 0x0040;
pub const FLAG_COMPRESSOR_OPTIONS: u16 = 0x0400;

/// Inode types. Directory entries always carry the basic type, even for an extended inode.
pub const BASIC_DIR: u16 = 1;
pub const BASIC_FILE: u16 = 2;
pub const BASIC_SYMLINK: u16 = 3;
pub const EXTENDED_DIR: u16 = 8;
pub const EXTENDED_FILE: u16 = 9;

/// Entries one directory header may cover (the kernel rejects more).
pub const DIR_HEADER_MAX: usize = 256;
/// Longest file name the kernel accepts.
pub const NAME_MAX: usize = 256;

/// Little-endian appends, so that records read like their C definitions.
pub trait Put {
    fn put16(&mut self, v: u16) -> &mut Self;
    fn put32(&mut self, v: u32) -> &mut Self;
    fn put64(&mut self, v: u64) -> &mut Self;
}

impl Put for Vec<u8> {
    fn put16(&mut self, v: u16) -> &mut Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn put32(&mut self, v: u32) -> &mut Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn put64(&mut self, v: u64) -> &mut Self {
        self.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// The fields of the superblock this writer varies; positions are relative to the image
/// start, like every position in the image.
#[derive(Debug, Default)]
pub struct Superblock {
    pub inode_count: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE);
        b.put32(MAGIC)
            .put32(self.inode_count)
            .put32(self.mkfs_time)
            .put32(self.block_size)
            .put32(self.fragment_count)
            .put16(COMPRESSOR_ZSTD)
            .put16(self.block_size.trailing_zeros() as u16)
            .put16(self.flags)
            .put16(self.id_count)
            .put16(4) // version 4.0
            .put16(0)
            .put64(self.root_inode)
            .put64(self.bytes_used)
            .put64(self.id_table)
            .put64(NO_TABLE) // xattr id table
            .put64(self.inode_table)
            .put64(self.directory_table)
            .put64(self.fragment_table)
            .put64(NO_TABLE); // export table: no NFS export
        debug_assert_eq!(b.len(), SUPERBLOCK_SIZE);
        b
    }
}

/// The zstd compressor-options block: one uncompressed metadata block holding the level.
pub fn zstd_options(level: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(6);
    b.put16(4 | META_UNCOMPRESSED).put32(level as u32);
    b
}
