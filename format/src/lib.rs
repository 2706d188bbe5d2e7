//! The on-disk layout of a bundle, shared by the `bundle` CLI and the runtime stub.
//!
//! ```text
//! +--------------------------+  offset 0
//! | runtime stub (static ELF)|
//! +--------------------------+  padded with zeros to a 4096-byte boundary
//! | squashfs image           |
//! +--------------------------+
//! | chunk table (version 2)  |  SHA-256 of each 64 KiB of the image
//! +--------------------------+
//! | table index (version 3)  |  SHA-256 of each 4 KiB page of the chunk table
//! +--------------------------+
//! | metadata (JSON)          |  holds the chunk table's and the stub's digests
//! +--------------------------+
//! | signatures (version 2)   |  sshsig over the trailer's two digests; appendable
//! +--------------------------+
//! | trailer (128 bytes)      |  always the last bytes of the file
//! +--------------------------+
//! ```
//!
//! `docs/format.md` describes every field so that another tool can read a bundle.

mod bind;
mod chunks;
mod metadata;
mod reader;
pub mod signatures;
mod trailer;
pub mod tree;

pub use bind::BindSpec;
pub use chunks::{index_len, table_len, ChunkTable, CHUNK_SIZE, TABLE_PAGE};
pub use metadata::{HostPackage, ImageInfo, Input, Integrity, Metadata, ProvidedFile};
pub use reader::{Bundle, OpenError};
pub use trailer::{Trailer, TrailerError, FORMAT_VERSION, MAGIC, OLDEST_VERSION, TRAILER_LEN};

/// The image starts on this boundary so that a loop device can map it in place.
pub const IMAGE_ALIGN: u64 = 4096;

/// Rounds `n` up to the next multiple of [`IMAGE_ALIGN`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(IMAGE_ALIGN) * IMAGE_ALIGN
}

/// Lower-case hex of a digest, the form used in metadata, cache names and messages.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
