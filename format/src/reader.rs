//! Opening a bundle: trailer, then metadata, each checked before use.

use crate::{hex, Metadata, Trailer, TrailerError, TRAILER_LEN};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// An opened bundle whose trailer and metadata have been validated.
pub struct Bundle {
    pub file: File,
    pub trailer: Trailer,
    pub metadata: Metadata,
}

#[derive(Debug)]
pub enum OpenError {
    Io(io::Error),
    Trailer(TrailerError),
    MetadataDigest,
    MetadataJson(String),
    ImageDigest { expected: String, actual: String },
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
        Ok(Bundle { file, trailer, metadata })
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
        let actual: [u8; 32] = hasher.finalize().into();
        if actual != self.trailer.image_sha256 {
            return Err(OpenError::ImageDigest { expected: hex(&self.trailer.image_sha256), actual: hex(&actual) });
        }
        Ok(())
    }
}
