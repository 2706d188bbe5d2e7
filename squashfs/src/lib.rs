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

/// A path for a one-line message: whole up to 200 bytes, else its start and its end
/// around how much was left out. An image can nest names 6 KB deep, and a message that
/// quotes all of it is a screenful nobody reads.
pub fn short_path(path: &std::path::Path) -> String {
    const KEEP: usize = 90;
    let s = path.display().to_string();
    if s.len() <= 200 {
        return s;
    }
    let mut head = KEEP;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - KEEP;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}...({} bytes)...{}", &s[..head], tail - head, &s[tail..])
}
