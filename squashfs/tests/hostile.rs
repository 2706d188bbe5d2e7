//! Hand-made hostile images, each with the exact error the reader must give: an image
//! made by mksquashfs with stored tables (`-noI -noD -noF`), where a field can be found
//! and patched in place, then truncated, pointed out of range, looped, and given absurd
//! sizes and counts.

mod common;

use common::*;
use std::path::Path;

/// The stored-table image of the sample tree, as bytes (made once per test binary).
fn stored() -> Vec<u8> {
    static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let d = tempfile::tempdir().unwrap();
            std::fs::read(image(d.path(), "stored.sqfs", STORED)).unwrap()
        })
        .clone()
}

fn put16(b: &mut [u8], at: u64, v: u16) {
    b[at as usize..at as usize + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: u64, v: u32) {
    b[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// Where in the file the inode at `path` starts (stored blocks: a 2-byte header, then
/// the inode table's bytes as they are).
fn inode_at(b: &[u8], path: &str) -> u64 {
    let image = open(b).unwrap();
    let r = image.lookup_path(Path::new(path)).unwrap().unwrap().reference.0;
    tables(b).inode_table + (r >> 16) + 2 + (r & 0xFFFF)
}

/// Where in the file the directory entry named `name` is (its 8 bytes before the name).
fn entry_at(b: &[u8], name: &str) -> u64 {
    let t = tables(b);
    let table = &b[t.directory_table as usize..t.fragment_blocks.min(t.id_blocks) as usize];
    let hits: Vec<usize> =
        table.windows(name.len()).enumerate().filter(|(_, w)| *w == name.as_bytes()).map(|(i, _)| i).collect();
    assert_eq!(hits.len(), 1, "the name {name} once in the directory table");
    t.directory_table + hits[0] as u64 - 8
}

/// The error opening, or else walking and reading everything, gives.
fn error(b: &[u8]) -> String {
    match open(b) {
        Err(e) => e.to_string(),
        Ok(image) => match exercise(&image) {
            Ok(n) => panic!("a hostile image read without error ({n} entries)"),
            Err(e) => e.to_string(),
        },
    }
}

#[test]
fn the_untouched_image_reads_whole() {
    let b = stored();
    assert_eq!(exercise(&open(&b).unwrap()).unwrap(), 6 + 6 + 800);
}

#[test]
fn a_truncated_copy() {
    let b = stored();
    let n = b.len();
    assert_eq!(
        error(&b[..n - 100]),
        format!("the image is corrupted: it says it has {n} bytes but only {} are there (a truncated copy?)", n - 100)
    );
    assert_eq!(error(&b[..50]), "cannot read the squashfs superblock: the image is corrupted: it ends before byte 96");
}

#[test]
fn tables_cut_short_or_outside_the_image() {
    let b = stored();
    let t = tables(&b);
    // The image ends inside the id table's index.
    let mut cut = b[..t.id_table as usize + 4].to_vec();
    put64(&mut cut, 40, t.id_table + 4);
    assert_eq!(error(&cut), "the image is corrupted: the id table's index runs past the end");
    let mut far = b.clone();
    put64(&mut far, 72, t.bytes_used + 1);
    assert_eq!(error(&far), "the image is corrupted: the directory table is outside the image");
    let mut before = b.clone();
    put64(&mut before, 72, t.inode_table);
    assert_eq!(error(&before), "the image is corrupted: the directory table starts before the inode table");
}

#[test]
fn references_out_of_range() {
    let b = stored();
    let t = tables(&b);
    let mut root = b.clone();
    put64(&mut root, 32, 0xFFFF_0000);
    assert_eq!(
        error(&root),
        format!("the image is corrupted: a metadata block at byte {} is outside its table", t.inode_table + 0xFFFF)
    );
    let mut offset = b.clone();
    put64(&mut offset, 32, 0x2000);
    assert_eq!(error(&offset), "the image is corrupted: inode reference 0x2000 is not valid");
    // An entry's inode offset past its block's bytes.
    let mut entry = b.clone();
    put16(&mut entry, entry_at(&b, "only-child"), 0x2000);
    assert_eq!(error(&entry), "the image is corrupted: a directory entry points past its inode's metadata block");
    // A file's fragment beyond the fragment count.
    let mut frag = b.clone();
    put32(&mut frag, inode_at(&b, "/usr/bin/app") + 20, 1000);
    assert_eq!(error(&frag), "the image is corrupted: a file's fragment 1000 is beyond the fragment count");
}

#[test]
fn a_directory_whose_entry_is_its_own_parent_is_a_loop() {
    let b = stored();
    let image = open(&b).unwrap();
    let parent = image.lookup_path(Path::new("/loopdir")).unwrap().unwrap().reference.0;
    drop(image);
    // loopdir holds one entry, child-loop, under one header: point both at loopdir.
    let entry = entry_at(&b, "child-loop");
    let mut looped = b.clone();
    put16(&mut looped, entry, (parent & 0xFFFF) as u16);
    put32(&mut looped, entry - 12 + 4, (parent >> 16) as u32);
    assert_eq!(error(&looped), "the image is corrupted: the directory /loopdir/child-loop appears twice (a loop?)");
}

#[test]
fn absurd_sizes_and_counts() {
    let b = stored();
    // A file of 2^63 bytes (the sparse file has an extended inode: a 64-bit size).
    let mut huge = b.clone();
    put64(&mut huge, inode_at(&b, "/sparse") + 24, 1 << 63);
    assert_eq!(
        error(&huge),
        "the image is corrupted: a file of 9223372036854775808 bytes has more blocks than the inode table can list"
    );
    // A listing of 4 GiB (`many` has an extended inode: a 32-bit size).
    let mut listing = b.clone();
    put32(&mut listing, inode_at(&b, "/many") + 20, u32::MAX);
    assert_eq!(
        error(&listing),
        "the image is corrupted: a directory listing of 4294967292 bytes is larger than its table"
    );
    // A header counting more than 256 entries.
    let mut header = b.clone();
    put32(&mut header, entry_at(&b, "only-child") - 12, 299);
    assert_eq!(error(&header), "the image is corrupted: a directory header counts 300 entries");
    // No ids at all.
    let mut ids = b.clone();
    put16(&mut ids, 26, 0);
    assert_eq!(error(&ids), "the image is corrupted: the id table is empty");
    // 2^32 - 1 fragments: an index of 64 MiB in an image of a few KB.
    let mut fragments = b.clone();
    put32(&mut fragments, 16, u32::MAX);
    assert_eq!(error(&fragments), "the image is corrupted: the fragment table's index runs past the end");
    // A block size of 2^31 and a name of 64 KiB.
    let mut block = b.clone();
    put32(&mut block, 12, 1 << 31);
    assert_eq!(error(&block), "the image is corrupted: block size 2147483648 (log 12) is not valid");
    let mut name = b.clone();
    put16(&mut name, entry_at(&b, "only-child") + 6, u16::MAX);
    assert_eq!(error(&name), "the image is corrupted: a file name of 65536 bytes");
}
