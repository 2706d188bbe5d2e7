//! The chunk table: the SHA-256 of every fixed-size chunk of the image, so that a reader
//! can check each part of the image the first time it reads it, instead of hashing the
//! whole image before it starts (format version 2).
//!
//! The table is the digests one after another, 32 bytes each, chunk 0 first; the last
//! chunk may be shorter than the others. Its own digest is in the metadata
//! (`integrity.chunks_sha256`), which the trailer's metadata digest covers: one digest
//! stands for every byte of the image.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The chunk size `bundle build` writes: small enough that the first read of a file
/// hashes little more than it needs, large enough that the table is 1/2048 of the image.
pub const CHUNK_SIZE: u64 = 64 << 10;
pub const DIGEST_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTable {
    chunk_size: u64,
    image_size: u64,
    digests: Vec<[u8; DIGEST_LEN]>,
}

/// Bytes of the table of an image of `image_size` bytes in chunks of `chunk_size`.
pub fn table_len(image_size: u64, chunk_size: u64) -> u64 {
    image_size.div_ceil(chunk_size) * DIGEST_LEN as u64
}

impl ChunkTable {
    /// Hashes the image of `image_size` bytes at `offset` in `file`.
    pub fn of_image(file: &File, offset: u64, image_size: u64, chunk_size: u64) -> io::Result<ChunkTable> {
        let mut table = ChunkTable { chunk_size, image_size, digests: Vec::new() };
        let mut buf = vec![0u8; chunk_size as usize];
        for i in 0..table.count() {
            let (start, len) = table.range(i);
            file.read_exact_at(&mut buf[..len], offset + start)?;
            table.digests.push(Sha256::digest(&buf[..len]).into());
        }
        Ok(table)
    }

    /// Parses a table read from a bundle; `None` if its length does not fit the image.
    pub fn decode(bytes: &[u8], chunk_size: u64, image_size: u64) -> Option<ChunkTable> {
        if chunk_size == 0 || bytes.len() as u64 != table_len(image_size, chunk_size) {
            return None;
        }
        let digests = bytes.chunks_exact(DIGEST_LEN).map(|d| d.try_into().expect("32 bytes")).collect();
        Some(ChunkTable { chunk_size, image_size, digests })
    }

    pub fn encode(&self) -> Vec<u8> {
        self.digests.concat()
    }

    /// The digest the metadata records for this table.
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        Sha256::digest(self.encode()).into()
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn image_size(&self) -> u64 {
        self.image_size
    }

    /// Number of chunks.
    pub fn count(&self) -> u64 {
        self.image_size.div_ceil(self.chunk_size)
    }

    /// Where chunk `i` starts in the image, and its length.
    pub fn range(&self, i: u64) -> (u64, usize) {
        let start = i * self.chunk_size;
        (start, self.chunk_size.min(self.image_size - start) as usize)
    }

    /// Whether `bytes` are all of chunk `i`, as it was built.
    pub fn matches(&self, i: u64, bytes: &[u8]) -> bool {
        let Some(want) = self.digests.get(i as usize) else { return false };
        bytes.len() == self.range(i).1 && Sha256::digest(bytes).as_slice() == want
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn table_of_an_image_with_a_short_last_chunk() {
        let mut f = tempfile();
        let image: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        f.write_all(b"stub").unwrap();
        f.write_all(&image).unwrap();
        let t = ChunkTable::of_image(&f, 4, image.len() as u64, 4096).unwrap();
        assert_eq!(t.count(), 3);
        assert_eq!(t.range(2), (8192, 10_000 - 8192));
        assert!(t.matches(2, &image[8192..]));
        assert!(!t.matches(2, &image[8191..]));
        let mut flipped = image[..4096].to_vec();
        flipped[100] ^= 1;
        assert!(!t.matches(0, &flipped));
        assert!(!t.matches(3, &[]));
        let back = ChunkTable::decode(&t.encode(), 4096, image.len() as u64).unwrap();
        assert_eq!(back, t);
        assert!(ChunkTable::decode(&t.encode()[1..], 4096, image.len() as u64).is_none());
    }

    fn tempfile() -> File {
        let path = std::env::temp_dir().join(format!("chunks-test-{}", std::process::id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
