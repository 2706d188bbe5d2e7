//! The chunk table: the SHA-256 of every fixed-size chunk of the image, so that a reader
//! can check each part of the image the first time it reads it, instead of hashing the
//! whole image before it starts (format versions 2 and 3).
//!
//! The table is the digests one after another, 32 bytes each, chunk 0 first; the last
//! chunk may be shorter than the others. Its own digest is in the metadata
//! (`integrity.chunks_sha256`), which the trailer's metadata digest covers: one digest
//! stands for every byte of the image.
//!
//! Version 3 follows the table with its *index*: the SHA-256 of each page of
//! [`TABLE_PAGE`] bytes of the table (128 digests: 8 MiB of image), whose digest is
//! `integrity.index_sha256`. A reader then checks the index at open and each page of
//! the table the first time it needs one: the open reads 1/128 of the table, not all of
//! it (a 2 GiB image's table is 1 MiB, whose reading and hashing cost 2.2 ms at every
//! fresh container in version 2; its index is 8 KiB).

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// The chunk size `bundle build` writes: small enough that the first read of a file
/// hashes little more than it needs, large enough that the table is 1/2048 of the image.
pub const CHUNK_SIZE: u64 = 64 << 10;
pub const DIGEST_LEN: usize = 32;
/// Bytes of the table that one digest of the index (version 3) covers.
pub const TABLE_PAGE: u64 = 4096;
const PER_PAGE: u64 = TABLE_PAGE / DIGEST_LEN as u64;

type Digest32 = [u8; DIGEST_LEN];

#[derive(Debug)]
pub struct ChunkTable {
    chunk_size: u64,
    image_size: u64,
    digests: Digests,
}

#[derive(Debug)]
enum Digests {
    /// Every digest in memory: a table being built, or read and checked whole.
    Loaded(Vec<Digest32>),
    /// The table in the file at `at`, read a page at a time, each page checked against
    /// its digest in `index` the first time a chunk of it is checked.
    Paged { file: File, at: u64, index: Vec<Digest32>, pages: Vec<OnceLock<Vec<Digest32>>> },
}

/// Bytes of the table of an image of `image_size` bytes in chunks of `chunk_size`.
pub fn table_len(image_size: u64, chunk_size: u64) -> u64 {
    image_size.div_ceil(chunk_size) * DIGEST_LEN as u64
}

/// Bytes of the index (version 3) of a table of `table_len` bytes.
pub fn index_len(table_len: u64) -> u64 {
    table_len.div_ceil(TABLE_PAGE) * DIGEST_LEN as u64
}

fn digests(bytes: &[u8]) -> Vec<Digest32> {
    bytes.chunks_exact(DIGEST_LEN).map(|d| d.try_into().expect("32 bytes")).collect()
}

impl ChunkTable {
    /// Hashes the image of `image_size` bytes at `offset` in `file`.
    pub fn of_image(file: &File, offset: u64, image_size: u64, chunk_size: u64) -> io::Result<ChunkTable> {
        let mut all = Vec::new();
        let mut buf = vec![0u8; chunk_size as usize];
        let mut start = 0;
        while start < image_size {
            let len = chunk_size.min(image_size - start) as usize;
            file.read_exact_at(&mut buf[..len], offset + start)?;
            all.push(Sha256::digest(&buf[..len]).into());
            start += chunk_size;
        }
        Ok(ChunkTable { chunk_size, image_size, digests: Digests::Loaded(all) })
    }

    /// Parses a whole table read from a bundle; `None` if its length does not fit the
    /// image.
    pub fn decode(bytes: &[u8], chunk_size: u64, image_size: u64) -> Option<ChunkTable> {
        if chunk_size == 0 || bytes.len() as u64 != table_len(image_size, chunk_size) {
            return None;
        }
        Some(ChunkTable { chunk_size, image_size, digests: Digests::Loaded(digests(bytes)) })
    }

    /// The table at `at` in `file`, to be read page by page and checked against
    /// `index` (the index as it is in the file, already checked); `None` if the index's
    /// length does not fit the image.
    pub fn paged(file: File, at: u64, index: &[u8], chunk_size: u64, image_size: u64) -> Option<ChunkTable> {
        if chunk_size == 0 || index.len() as u64 != index_len(table_len(image_size, chunk_size)) {
            return None;
        }
        let index = digests(index);
        let pages = index.iter().map(|_| OnceLock::new()).collect();
        Some(ChunkTable { chunk_size, image_size, digests: Digests::Paged { file, at, index, pages } })
    }

    /// The table's bytes (of a table in memory: empty for a paged one).
    pub fn encode(&self) -> Vec<u8> {
        match &self.digests {
            Digests::Loaded(all) => all.concat(),
            Digests::Paged { .. } => Vec::new(),
        }
    }

    /// The digest the metadata records for this table (in memory, as built).
    pub fn digest(&self) -> Digest32 {
        Sha256::digest(self.encode()).into()
    }

    /// The index of the table (version 3): the digest of each page of it (in memory, as
    /// built).
    pub fn index(&self) -> Vec<u8> {
        self.encode().chunks(TABLE_PAGE as usize).flat_map(|page| <Digest32>::from(Sha256::digest(page))).collect()
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

    /// Whether `bytes` are all of chunk `i`, as it was built. A page of a paged table
    /// that cannot be read, or does not match its index digest, matches nothing.
    pub fn matches(&self, i: u64, bytes: &[u8]) -> bool {
        if i >= self.count() || bytes.len() != self.range(i).1 {
            return false;
        }
        let want = match &self.digests {
            Digests::Loaded(all) => Some(all[i as usize]),
            Digests::Paged { .. } => self.paged_digest(i),
        };
        want.is_some_and(|want| Sha256::digest(bytes).as_slice() == want)
    }

    /// Chunk `i`'s digest from its page, read and checked the first time. Two threads
    /// may both read a page the first time: both check it, one keeps it.
    fn paged_digest(&self, i: u64) -> Option<Digest32> {
        let Digests::Paged { file, at, index, pages } = &self.digests else { return None };
        let (p, k) = ((i / PER_PAGE) as usize, (i % PER_PAGE) as usize);
        if let Some(page) = pages[p].get() {
            return page.get(k).copied();
        }
        let start = p as u64 * TABLE_PAGE;
        let len = TABLE_PAGE.min(table_len(self.image_size, self.chunk_size) - start) as usize;
        let mut raw = vec![0u8; len];
        file.read_exact_at(&mut raw, at + start).ok()?;
        if Sha256::digest(&raw).as_slice() != index[p] {
            return None;
        }
        let page = pages[p].get_or_init(|| digests(&raw));
        page.get(k).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

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
        assert_eq!(back.encode(), t.encode());
        assert!(ChunkTable::decode(&t.encode()[1..], 4096, image.len() as u64).is_none());
    }

    #[test]
    fn a_paged_table_checks_each_page_against_the_index() {
        // 300 chunks of 16 bytes: a table of 9,600 bytes, three pages (the last short).
        let image: Vec<u8> = (0..300 * 16u32).map(|i| (i * 31 % 253) as u8).collect();
        let mut f = tempfile();
        f.write_all(&image).unwrap();
        let built = ChunkTable::of_image(&f, 0, image.len() as u64, 16).unwrap();
        let (table, index) = (built.encode(), built.index());
        assert_eq!((table.len(), index.len() as u64), (9600, index_len(9600)));
        let mut file = tempfile();
        file.write_all(b"pad").unwrap();
        file.write_all(&table).unwrap();
        let paged = |index: &[u8]| ChunkTable::paged(file.try_clone().unwrap(), 3, index, 16, image.len() as u64);
        let t = paged(&index).unwrap();
        for i in [0u64, 127, 128, 299] {
            let at = i as usize * 16;
            assert!(t.matches(i, &image[at..at + 16]), "chunk {i}");
            let mut flipped = image[at..at + 16].to_vec();
            flipped[7] ^= 1;
            assert!(!t.matches(i, &flipped), "chunk {i}, a flipped byte");
        }
        assert!(!t.matches(300, &[]));
        assert!(paged(&index[1..]).is_none(), "an index of the wrong length");
        // A damaged page of the table: its chunks match nothing, the others still do.
        file.write_all_at(&[0xff], 3 + 4096 + 5).unwrap();
        let t = paged(&index).unwrap();
        assert!(!t.matches(130, &image[130 * 16..131 * 16]));
        assert!(t.matches(5, &image[5 * 16..6 * 16]));
        assert!(t.matches(299, &image[299 * 16..]));
    }

    fn tempfile() -> File {
        // One name per call: tests run on several threads of one process.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("chunks-test-{}-{n}", std::process::id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
