//! The shape of a package's two headers, checked before the `rpm` crate parses them.
//!
//! rpm 0.30 trusts the counts and offsets of a header: a count near 2^32 makes it
//! allocate gigabytes (`Header::parse` sizes its buffer from the header) or overflow,
//! and an entry's data offset past the data section makes it index out of bounds
//! (`parse_header`, header.rs:111), a panic. So we read the lead and both header
//! intros ourselves and hold them to the limits rpm itself enforces (librpm's
//! `hdrchkTags` and `hdrchkData`: fewer than 65536 entries, less than 16 MiB of data),
//! and every entry to its data section (its count of items reserved before they are
//! read: `parse_entry_data_number`, header.rs:866), before the crate sees the file.

use anyhow::{bail, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The lead: a fixed 96 bytes before the signature header.
const LEAD: u64 = 96;
const HEADER_MAGIC: [u8; 4] = [0x8E, 0xAD, 0xE8, 0x01];
const MAX_ENTRIES: u32 = 0xFFFF;
const MAX_DATA: u32 = 0x00FF_FFFF;
const ENTRY: u64 = 16;

/// The size of one item of a header entry's type (a string at least its NUL).
fn item_size(kind: u32) -> u64 {
    match kind {
        3 => 2, // INT16
        4 => 4, // INT32
        5 => 8, // INT64
        0 => 0, // NULL
        _ => 1, // CHAR, INT8, BIN, and the string types
    }
}

/// Checks the signature header and the main header of the package in `f`.
pub fn check_headers(f: &File) -> Result<()> {
    let len = f.metadata()?.len();
    let signature_end = check_header(f, LEAD, len, "signature header")?;
    // The main header starts on the next 8-byte boundary.
    check_header(f, signature_end.next_multiple_of(8), len, "header")?;
    Ok(())
}

/// Checks one header at `at`; returns where it ends.
fn check_header(f: &File, at: u64, len: u64, what: &str) -> Result<u64> {
    let mut intro = [0u8; 16];
    if at + 16 > len {
        bail!("not a readable RPM package: the file ends before its {what}");
    }
    f.read_exact_at(&mut intro, at)?;
    if intro[..4] != HEADER_MAGIC {
        bail!("not a readable RPM package: no {what} at byte {at}");
    }
    let be = |i: usize| u32::from_be_bytes(intro[i..i + 4].try_into().expect("4 bytes"));
    let (entries, data) = (be(8), be(12));
    if entries > MAX_ENTRIES || data > MAX_DATA {
        bail!("not a readable RPM package: its {what} claims {entries} entries and {data} bytes of data");
    }
    let index_at = at + 16;
    let data_at = index_at + u64::from(entries) * ENTRY;
    let end = data_at + u64::from(data);
    if end > len {
        bail!("truncated RPM package: its {what} ends at byte {end}, the file at {len}");
    }
    let mut index = vec![0u8; (u64::from(entries) * ENTRY) as usize];
    f.read_exact_at(&mut index, index_at)?;
    for (i, e) in index.chunks_exact(ENTRY as usize).enumerate() {
        let be = |j: usize| u32::from_be_bytes(e[j..j + 4].try_into().expect("4 bytes"));
        let (kind, offset, count) = (be(4), be(8), be(12));
        // The least bytes `count` items of this type take: the crate reserves room for
        // `count` items before it reads them.
        let least = u64::from(count) * item_size(kind);
        if offset > data || least > u64::from(data - offset) {
            bail!("corrupted RPM package: entry {i} of its {what} points past its data");
        }
    }
    Ok(end)
}
