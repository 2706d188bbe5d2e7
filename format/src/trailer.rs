//! The fixed-size trailer: the last [`TRAILER_LEN`] bytes of every bundle.
//!
//! All integers are little-endian. The layout is written out in `docs/format.md`.

use std::fmt;

/// First eight bytes of the trailer.
pub const MAGIC: [u8; 8] = *b"BUNDLE\x00\x01";
/// Last eight bytes of the trailer, so that a truncated tail is recognised as such.
pub const END_MAGIC: [u8; 8] = *b"\x01\x00ELDNUB";
/// Bumped on any incompatible change of the layout. Version 2 added the chunk table
/// after the image and the signatures before the trailer; version 3 the table's index
/// after the table. Versions 1 and 2 are still read.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest version this crate reads.
pub const OLDEST_VERSION: u32 = 1;
pub const TRAILER_LEN: usize = 128;
/// At most this many bytes of signatures (about 3,000 ed25519 signatures): a reader
/// loads them whole.
pub const MAX_SIGNATURES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub version: u32,
    pub image_offset: u64,
    pub image_size: u64,
    pub metadata_offset: u64,
    pub metadata_size: u64,
    pub image_sha256: [u8; 32],
    pub metadata_sha256: [u8; 32],
    /// Bytes of signatures between the metadata and the trailer (always 0 in version 1).
    pub signatures_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailerError {
    /// The file is shorter than a trailer.
    TooShort(u64),
    /// Neither magic matches: this is not a bundle (or it was cut short).
    NotABundle,
    /// The trailer's end magic is missing although the start matches: damaged tail.
    Damaged,
    /// Written by a newer (or older) `bundle` whose layout this one cannot read.
    Version(u32),
    /// Offsets and sizes do not fit inside the file.
    Layout(String),
}

impl fmt::Display for TrailerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrailerError::TooShort(n) => write!(f, "file is only {n} bytes, too short to be a bundle"),
            TrailerError::NotABundle => write!(f, "no bundle trailer at the end of the file (not a bundle, or truncated)"),
            TrailerError::Damaged => write!(f, "bundle trailer is damaged"),
            TrailerError::Version(v) => write!(
                f,
                "bundle format version {v} is not supported (this runtime reads versions {OLDEST_VERSION} to {FORMAT_VERSION}); rebuild the bundle or use a matching `bundle`"
            ),
            TrailerError::Layout(why) => write!(f, "bundle layout is inconsistent ({why}); the file is truncated or corrupted"),
        }
    }
}

impl std::error::Error for TrailerError {}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(TRAILER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.image_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.image_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.metadata_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.metadata_size.to_le_bytes());
        b[48..80].copy_from_slice(&self.image_sha256);
        b[80..112].copy_from_slice(&self.metadata_sha256);
        b[112..120].copy_from_slice(&self.signatures_size.to_le_bytes());
        b[120..128].copy_from_slice(&END_MAGIC);
        b
    }

    /// Parses the trailer of a file of `file_len` bytes and checks that the regions it
    /// describes lie in order inside the file.
    pub fn decode(b: &[u8; TRAILER_LEN], file_len: u64) -> Result<Trailer, TrailerError> {
        let start_ok = b[0..8] == MAGIC;
        let end_ok = b[120..128] == END_MAGIC;
        match (start_ok, end_ok) {
            (true, true) => {}
            (true, false) => return Err(TrailerError::Damaged),
            (false, _) => return Err(TrailerError::NotABundle),
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let version = u32_at(8);
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(TrailerError::Version(version));
        }
        if u32_at(12) as usize != TRAILER_LEN {
            return Err(TrailerError::Damaged);
        }
        let t = Trailer {
            version,
            image_offset: u64_at(16),
            image_size: u64_at(24),
            metadata_offset: u64_at(32),
            metadata_size: u64_at(40),
            image_sha256: b[48..80].try_into().unwrap(),
            metadata_sha256: b[80..112].try_into().unwrap(),
            // Reserved (zero) in version 1.
            signatures_size: if version >= 2 { u64_at(112) } else { 0 },
        };
        t.check_layout(file_len)?;
        Ok(t)
    }

    fn check_layout(&self, file_len: u64) -> Result<(), TrailerError> {
        let layout = |why: &str| Err(TrailerError::Layout(why.to_string()));
        if file_len < TRAILER_LEN as u64 {
            return Err(TrailerError::TooShort(file_len));
        }
        if !self.image_offset.is_multiple_of(crate::IMAGE_ALIGN) {
            return layout("image offset is not 4096-aligned");
        }
        let Some(image_end) = self.image_offset.checked_add(self.image_size) else {
            return layout("image size overflows");
        };
        if image_end > self.metadata_offset {
            return layout("image overlaps metadata");
        }
        let Some(meta_end) = self.metadata_offset.checked_add(self.metadata_size) else {
            return layout("metadata size overflows");
        };
        if self.signatures_size > MAX_SIGNATURES {
            return layout("the signatures are larger than 1 MiB");
        }
        // The signatures' and the trailer's lengths are added checked too: an end within
        // a few bytes of 2^64 must be an error, not an overflow.
        let Some(expected) = meta_end.checked_add(self.signatures_size).and_then(|n| n.checked_add(TRAILER_LEN as u64))
        else {
            return layout("signatures size overflows");
        };
        if expected != file_len {
            return layout(&format!("expected {expected} bytes, file has {file_len}"));
        }
        Ok(())
    }

    /// Where the signatures start: right after the metadata.
    pub fn signatures_offset(&self) -> u64 {
        self.metadata_offset + self.metadata_size
    }

    /// What a signature signs: the image and metadata digests, bytes 48..112 of the
    /// trailer (`tail -c 80 APP | head -c 64`). The metadata holds the chunk table's
    /// and the stub's digests, so this covers every byte but the signatures themselves.
    pub fn signed_message(&self) -> [u8; 64] {
        let mut m = [0u8; 64];
        m[..32].copy_from_slice(&self.image_sha256);
        m[32..].copy_from_slice(&self.metadata_sha256);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Trailer {
        Trailer {
            version: FORMAT_VERSION,
            image_offset: 8192,
            image_size: 1000,
            metadata_offset: 9192,
            metadata_size: 50,
            image_sha256: [1; 32],
            metadata_sha256: [2; 32],
            signatures_size: 0,
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let len = 9192 + 50 + TRAILER_LEN as u64;
        assert_eq!(Trailer::decode(&t.encode(), len).unwrap(), t);
    }

    #[test]
    fn rejects_wrong_length_and_magic() {
        let t = sample();
        let len = 9192 + 50 + TRAILER_LEN as u64;
        assert!(matches!(Trailer::decode(&t.encode(), len - 1), Err(TrailerError::Layout(_))));
        assert!(matches!(Trailer::decode(&[0; TRAILER_LEN], len), Err(TrailerError::NotABundle)));
        let mut b = t.encode();
        b[127] ^= 1;
        assert_eq!(Trailer::decode(&b, len), Err(TrailerError::Damaged));
        let mut b = t.encode();
        b[8] = 9;
        assert_eq!(Trailer::decode(&b, len), Err(TrailerError::Version(9)));
    }

    // Found writing the `trailer` fuzz target: offset + size + 128 overflowed (a panic in a
    // debug build, a wrong comparison in a release build).
    #[test]
    fn a_metadata_end_near_2_to_the_64_is_an_overflow_error() {
        let mut t = sample();
        t.metadata_offset = 9192;
        t.metadata_size = u64::MAX - 9192 - 10;
        assert_eq!(
            Trailer::decode(&t.encode(), 9192 + 50 + 128),
            Err(TrailerError::Layout("signatures size overflows".into()))
        );
    }

    #[test]
    fn signatures_lie_between_metadata_and_trailer() {
        let t = Trailer { signatures_size: 300, ..sample() };
        let len = 9192 + 50 + 300 + TRAILER_LEN as u64;
        assert_eq!(Trailer::decode(&t.encode(), len).unwrap(), t);
        assert_eq!(t.signatures_offset(), 9242);
        assert_eq!(&t.signed_message()[..], &t.encode()[48..112]);
        assert!(Trailer::decode(&t.encode(), len - 300).is_err());
    }

    #[test]
    fn version_1_has_no_signatures() {
        let t = Trailer { version: 1, ..sample() };
        let mut b = t.encode();
        b[112..120].copy_from_slice(&7u64.to_le_bytes());
        let back = Trailer::decode(&b, 9192 + 50 + TRAILER_LEN as u64).unwrap();
        assert_eq!(back.signatures_size, 0);
    }

    #[test]
    fn rejects_overlap_and_misalignment() {
        let mut t = sample();
        t.image_size = 2000;
        assert!(Trailer::decode(&t.encode(), 9192 + 50 + 128).is_err());
        let mut t = sample();
        t.image_offset = 100;
        assert!(Trailer::decode(&t.encode(), 9192 + 50 + 128).is_err());
    }
}
