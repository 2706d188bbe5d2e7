//! Opening a bundle: trailer, then metadata, each checked before use.

use crate::{hex, index_len, table_len, ChunkTable, Integrity, Metadata, Trailer, TrailerError, TRAILER_LEN};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Chunk sizes a reader accepts: what it allocates to check one chunk stays bounded.
const CHUNK_SIZES: std::ops::RangeInclusive<u64> = 4096..=16 << 20;

/// An opened bundle whose trailer and metadata have been validated.
pub struct Bundle {
    pub file: File,
    pub trailer: Trailer,
    pub metadata: Metadata,
    /// The metadata as it is in the file (what `metadata` was parsed from).
    pub metadata_json: Vec<u8>,
    /// The signatures region as it is in the file (empty when unsigned or version 1).
    pub signatures: Vec<u8>,
}

#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    Trailer(TrailerError),
    MetadataDigest,
    MetadataJson(String),
    ImageDigest {
        expected: String,
        actual: String,
    },
    /// A version-2 or 3 bundle whose chunk table, its index or the stub digest is
    /// missing or wrong.
    Integrity(String),
    /// Chunk `index`, at `offset` in the file, is not what the chunk table says.
    ChunkDigest {
        index: u64,
        offset: u64,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => write!(f, "{e}"),
            OpenError::Trailer(e) => write!(f, "{e}"),
            OpenError::MetadataDigest => {
                write!(f, "metadata digest mismatch: the bundle is corrupted")
            }
            OpenError::MetadataJson(e) => write!(f, "metadata is not valid: {e}"),
            OpenError::ImageDigest { expected, actual } => {
                write!(f, "image digest mismatch (expected sha256 {expected}, found {actual}): the bundle is corrupted")
            }
            OpenError::Integrity(why) => write!(f, "{why}: the bundle is corrupted"),
            OpenError::ChunkDigest { index, offset } => write!(
                f,
                "image chunk {index} (at byte {offset} of the file) does not match its digest: the bundle is corrupted"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

impl Bundle {
    pub fn open(path: &Path) -> Result<Bundle, OpenError> {
        Bundle::from_file(File::open(path)?)
    }

    pub fn from_file(file: File) -> Result<Bundle, OpenError> {
        let len = file.metadata()?.len();
        if len < TRAILER_LEN as u64 {
            return Err(OpenError::Trailer(TrailerError::TooShort(len)));
        }
        let mut raw = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut raw, len - TRAILER_LEN as u64)?;
        let trailer = Trailer::decode(&raw, len).map_err(OpenError::Trailer)?;
        let mut json = vec![0u8; trailer.metadata_size as usize];
        file.read_exact_at(&mut json, trailer.metadata_offset)?;
        if Sha256::digest(&json).as_slice() != trailer.metadata_sha256 {
            return Err(OpenError::MetadataDigest);
        }
        let metadata = Metadata::from_json(&json).map_err(|e| OpenError::MetadataJson(e.to_string()))?;
        let mut signatures = vec![0u8; trailer.signatures_size as usize];
        file.read_exact_at(&mut signatures, trailer.signatures_offset())?;
        let bundle = Bundle { file, trailer, metadata, metadata_json: json, signatures };
        bundle.check_table_place()?;
        Ok(bundle)
    }

    /// A version-2 or 3 bundle's metadata names its chunk size, and the table (and in
    /// version 3 its index, whose digest the metadata then has) fills the gap between
    /// image and metadata exactly.
    fn check_table_place(&self) -> Result<(), OpenError> {
        let t = &self.trailer;
        let gap = t.metadata_offset - (t.image_offset + t.image_size);
        let bad = |why: &str| Err(OpenError::Integrity(why.into()));
        let i = match (t.version, &self.metadata.integrity) {
            (1, _) => return Ok(()),
            (_, None) => return bad("the metadata has no integrity digests"),
            (_, Some(i)) => i,
        };
        if !CHUNK_SIZES.contains(&i.chunk_size) || !i.chunk_size.is_power_of_two() {
            return bad(&format!("chunk size {} is not a power of two from 4 KiB to 16 MiB", i.chunk_size));
        }
        if (t.version >= 3) == i.index_sha256.is_empty() {
            return bad("the metadata's chunk table index digest does not fit the format version");
        }
        let table = table_len(t.image_size, i.chunk_size);
        let index = if t.version >= 3 { index_len(table) } else { 0 };
        if table + index != gap {
            return bad("the chunk table does not fit between image and metadata");
        }
        Ok(())
    }

    fn integrity(&self) -> Option<&Integrity> {
        self.metadata.integrity.as_ref().filter(|_| self.trailer.version >= 2)
    }

    /// The chunk table, checked against the digests in the metadata; `None` for a
    /// version-1 bundle, which has none. Version 2: read and checked whole; version 3:
    /// its index read and checked, its pages each when first needed.
    pub fn chunk_table(&self) -> Result<Option<ChunkTable>, OpenError> {
        let Some(integrity) = self.integrity() else { return Ok(None) };
        let t = &self.trailer;
        let at = t.image_offset + t.image_size;
        let table_len = table_len(t.image_size, integrity.chunk_size);
        let wrong_length = || OpenError::Integrity("the chunk table has the wrong length".into());
        if t.version < 3 {
            let raw = self.checked_region(at, table_len, &integrity.chunks_sha256, "chunk table")?;
            return ChunkTable::decode(&raw, integrity.chunk_size, t.image_size).map(Some).ok_or_else(wrong_length);
        }
        let index =
            self.checked_region(at + table_len, index_len(table_len), &integrity.index_sha256, "chunk table index")?;
        let file = self.file.try_clone()?;
        ChunkTable::paged(file, at, &index, integrity.chunk_size, t.image_size).map(Some).ok_or_else(wrong_length)
    }

    /// `len` bytes at `at`, whose hex SHA-256 must be `want`.
    fn checked_region(&self, at: u64, len: u64, want: &str, what: &str) -> Result<Vec<u8>, OpenError> {
        let mut raw = vec![0u8; len as usize];
        self.file.read_exact_at(&mut raw, at)?;
        if hex(&Sha256::digest(&raw)) != want {
            return Err(OpenError::Integrity(format!("{what} digest mismatch")));
        }
        Ok(raw)
    }

    /// Checks every byte a digest covers: the stub, the image (whole and chunk by
    /// chunk) and the chunk table. The metadata was checked when the bundle was opened;
    /// signatures are checked by whoever holds the allowed signers.
    pub fn verify_all(&self) -> Result<(), OpenError> {
        let Some(integrity) = self.integrity() else { return self.verify_image() };
        let mut stub = vec![0u8; self.trailer.image_offset as usize];
        self.file.read_exact_at(&mut stub, 0)?;
        if hex(&Sha256::digest(&stub)) != integrity.stub_sha256 {
            return Err(OpenError::Integrity("runtime stub digest mismatch".into()));
        }
        let table = self.chunk_table()?.expect("versions 2 and 3 have a table");
        // Version 3 checked only the index so far: the whole table's digest too (version
        // 2's `chunk_table` checked it).
        if self.trailer.version >= 3 {
            let at = self.trailer.image_offset + self.trailer.image_size;
            let table_len = crate::table_len(self.trailer.image_size, table.chunk_size());
            self.checked_region(at, table_len, &integrity.chunks_sha256, "chunk table")?;
        }
        let mut whole = Sha256::new();
        let mut buf = vec![0u8; table.chunk_size() as usize];
        for i in 0..table.count() {
            let (start, len) = table.range(i);
            let offset = self.trailer.image_offset + start;
            self.file.read_exact_at(&mut buf[..len], offset)?;
            if !table.matches(i, &buf[..len]) {
                return Err(OpenError::ChunkDigest { index: i, offset });
            }
            whole.update(&buf[..len]);
        }
        self.check_image_digest(whole.finalize().into())
    }

    fn check_image_digest(&self, actual: [u8; 32]) -> Result<(), OpenError> {
        if actual != self.trailer.image_sha256 {
            return Err(OpenError::ImageDigest { expected: hex(&self.trailer.image_sha256), actual: hex(&actual) });
        }
        Ok(())
    }

    /// Hex sha256 of the image as recorded in the trailer; names the extraction cache.
    pub fn image_digest(&self) -> String {
        hex(&self.trailer.image_sha256)
    }

    /// Re-reads the whole image and compares its sha256 with the trailer's.
    pub fn verify_image(&self) -> Result<(), OpenError> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let (mut pos, end) = (self.trailer.image_offset, self.trailer.image_offset + self.trailer.image_size);
        while pos < end {
            let want = buf.len().min((end - pos) as usize);
            self.file.read_exact_at(&mut buf[..want], pos)?;
            hasher.update(&buf[..want]);
            pos += want as u64;
        }
        self.check_image_digest(hasher.finalize().into())
    }
}
