//! The on-disk vocabulary of squashfs 4.0: constants and the superblock, little endian, as
//! the kernel's `fs/squashfs/squashfs_fs.h` defines them. The writer (in the bundler) and
//! the reader ([`crate::Image`]) both speak it; nothing here decides anything.

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

/// The compressor ids of the superblock, by name, for messages.
pub fn compressor_name(id: u16) -> &'static str {
    match id {
        1 => "gzip",
        2 => "lzma",
        3 => "lzo",
        4 => "xz",
        5 => "lz4",
        6 => "zstd",
        _ => "an unknown compressor",
    }
}
/// The level the kernel and unsquashfs assume when no compressor options are stored;
/// mksquashfs writes options only for other levels, and so do we.
pub const ZSTD_DEFAULT_LEVEL: i32 = 15;

/// Superblock flags. The first three say that nothing of that kind is compressed.
pub const FLAG_UNCOMPRESSED_INODES: u16 = 0x0001;
pub const FLAG_UNCOMPRESSED_DATA: u16 = 0x0002;
pub const FLAG_UNCOMPRESSED_FRAGMENTS: u16 = 0x0008;
pub const FLAG_ALWAYS_FRAGMENTS: u16 = 0x0020;
pub const FLAG_DUPLICATES: u16 = 0x0040;
pub const FLAG_COMPRESSOR_OPTIONS: u16 = 0x0400;

/// Inode types. Directory entries always carry the basic type, even for an extended inode.
pub const BASIC_DIR: u16 = 1;
pub const BASIC_FILE: u16 = 2;
pub const BASIC_SYMLINK: u16 = 3;
pub const BASIC_BLOCK_DEVICE: u16 = 4;
pub const BASIC_CHAR_DEVICE: u16 = 5;
pub const BASIC_FIFO: u16 = 6;
pub const BASIC_SOCKET: u16 = 7;
pub const EXTENDED_DIR: u16 = 8;
pub const EXTENDED_FILE: u16 = 9;
pub const EXTENDED_SYMLINK: u16 = 10;
pub const EXTENDED_BLOCK_DEVICE: u16 = 11;
pub const EXTENDED_CHAR_DEVICE: u16 = 12;
pub const EXTENDED_FIFO: u16 = 13;
pub const EXTENDED_SOCKET: u16 = 14;

/// Bytes of one fragment table entry (start, size word, unused) and one id.
pub const FRAGMENT_ENTRY_SIZE: usize = 16;
pub const ID_ENTRY_SIZE: usize = 4;

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

/// The superblock; positions are relative to the image start, like every position in
/// the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub inode_count: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compressor: u16,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub xattr_table: u64,
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
    pub export_table: u64,
}

impl Default for Superblock {
    fn default() -> Superblock {
        Superblock {
            inode_count: 0,
            mkfs_time: 0,
            block_size: 128 * 1024,
            fragment_count: 0,
            compressor: COMPRESSOR_ZSTD,
            flags: 0,
            id_count: 0,
            root_inode: 0,
            bytes_used: 0,
            id_table: 0,
            xattr_table: NO_TABLE,
            inode_table: 0,
            directory_table: 0,
            fragment_table: 0,
            export_table: NO_TABLE,
        }
    }
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE);
        b.put32(MAGIC)
            .put32(self.inode_count)
            .put32(self.mkfs_time)
            .put32(self.block_size)
            .put32(self.fragment_count)
            .put16(self.compressor)
            .put16(self.block_size.trailing_zeros() as u16)
            .put16(self.flags)
            .put16(self.id_count)
            .put16(4) // version 4.0
            .put16(0)
            .put64(self.root_inode)
            .put64(self.bytes_used)
            .put64(self.id_table)
            .put64(self.xattr_table)
            .put64(self.inode_table)
            .put64(self.directory_table)
            .put64(self.fragment_table)
            .put64(self.export_table);
        debug_assert_eq!(b.len(), SUPERBLOCK_SIZE);
        b
    }

    /// Reads the 96 bytes of a superblock. Checks only what makes the fields
    /// meaningful (magic, version, block size); the reader checks the positions.
    pub fn decode(b: &[u8; SUPERBLOCK_SIZE]) -> Result<Superblock, String> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(0) != MAGIC {
            return Err("no squashfs superblock (wrong magic)".into());
        }
        let (major, minor) = (u16_at(28), u16_at(30));
        if (major, minor) != (4, 0) {
            return Err(format!("squashfs version {major}.{minor} is not supported (only 4.0)"));
        }
        let block_size = u32_at(12);
        let block_log = u16_at(22);
        if !block_size.is_power_of_two()
            || !(4096..=1 << 20).contains(&block_size)
            || u32::from(block_log) != block_size.trailing_zeros()
        {
            return Err(format!("block size {block_size} (log {block_log}) is not valid"));
        }
        Ok(Superblock {
            inode_count: u32_at(4),
            mkfs_time: u32_at(8),
            block_size,
            fragment_count: u32_at(16),
            compressor: u16_at(20),
            flags: u16_at(24),
            id_count: u16_at(26),
            root_inode: u64_at(32),
            bytes_used: u64_at(40),
            id_table: u64_at(48),
            xattr_table: u64_at(56),
            inode_table: u64_at(64),
            directory_table: u64_at(72),
            fragment_table: u64_at(80),
            export_table: u64_at(88),
        })
    }
}

/// The zstd compressor-options block: one uncompressed metadata block holding the level.
pub fn zstd_options(level: i32) -> Vec<u8> {
    let mut b = Vec::with_capacity(6);
    b.put16(4 | META_UNCOMPRESSED).put32(level as u32);
    b
}
