//! squashfs 4.0 as bundles use it: one vocabulary ([`layout`]) for the bundler's writer
//! and for the lazy reader ([`Image`]) that the runtime serves over FUSE, that extract
//! mode unpacks from, and that `bundle list` and `bundle extract` walk.
//!
//! Why our own reader: backhand (used before) decodes every inode and directory of an
//! image when it opens it, so start-up and memory grew with the image (826 ms and
//! 66 MiB at 200,000 entries); the lazy readers on crates.io were measured against
//! what the runtime needs (see `docs/squashfs-readers.md`). This one reads the
//! superblock and two small tables at open and everything else on demand, through
//! bounded caches.
//!
//! Only zstd (and stored) blocks are decompressed: the bundler writes zstd.

pub mod extract;
pub mod layout;
mod read;

pub use read::{Chunks, DirCookie, Entries, Entry, Image, Inode, InodeRef, Kind, Piece};
