//! A property of the reader: whatever byte of whatever table is damaged, opening,
//! walking, looking up, reading and extracting end in `Ok` or `Err`, never a panic, a
//! hang or an absurd allocation.
//!
//! Images: mksquashfs with compressed tables (zstd) and with stored tables (`-noI -noD
//! -noF`, where damage reaches the structures rather than the decompressor), and an
//! image written by `bundle build` (from the fuzz corpus). Each case damages one table
//! (superblock, inode, directory, fragment or id table, index included) at a random
//! place with a random byte, a flipped bit or a boundary value, then reads everything
//! under a watchdog. Runs for `BUNDLE_CORRUPTION_SECONDS` (15 by default) in all; the
//! seed of each case is in the failure message.

mod common;

use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// No image justifies one allocation this large (a data block is at most 1 MiB).
const ALLOC_LIMIT: usize = 256 << 20;

struct Bounded;

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// An allocator must not unwind: over the limit, say so (the case label is printed
/// before each case when BUNDLE_CORRUPTION_VERBOSE is set) and abort.
fn check(size: usize) {
    if size > ALLOC_LIMIT {
        let msg = b"corruption test: one allocation of more than 256 MiB (rerun with BUNDLE_CORRUPTION_VERBOSE=1 to see the case)\n";
        std::io::Write::write_all(&mut std::io::stderr(), msg).ok();
        std::process::abort();
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// Longest one case may take (a debug build reads these images in milliseconds).
const CASE_LIMIT: Duration = Duration::from_secs(10);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The byte ranges of each table, as the superblock places them.
fn regions(b: &[u8]) -> Vec<(&'static str, u64, u64)> {
    let t = tables(b);
    let has_fragments = u32::from_le_bytes(b[16..20].try_into().unwrap()) > 0;
    let dir_end = if has_fragments { t.fragment_blocks } else { t.id_blocks };
    let mut r = vec![
        ("superblock", 0, 96),
        ("inode table", t.inode_table, t.directory_table),
        ("directory table", t.directory_table, dir_end),
        ("id table", t.id_blocks, t.id_table + 8),
    ];
    if has_fragments {
        r.push(("fragment table", t.fragment_blocks, t.fragment_table + 8));
    }
    r
}

const BOUNDARY: &[u64] = &[
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x1FFF,
    0x2000,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    1 << 63,
    u64::MAX,
];

/// Damages one place of one table; returns what was done, for the message.
fn corrupt(b: &mut [u8], rng: &mut Rng) -> String {
    let regions = regions(b);
    let (table, start, end) = regions[rng.below(regions.len() as u64) as usize];
    let at = (start + rng.below(end - start)) as usize;
    match rng.below(3) {
        0 => {
            b[at] = rng.next() as u8;
            format!("{table}: byte {at} set to {:#x}", b[at])
        }
        1 => {
            let bit = rng.below(8);
            b[at] ^= 1 << bit;
            format!("{table}: bit {bit} of byte {at} flipped")
        }
        _ => {
            let v = BOUNDARY[rng.below(BOUNDARY.len() as u64) as usize];
            let width = [2usize, 4, 8][rng.below(3) as usize];
            let end = (at + width).min(b.len());
            b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            format!("{table}: {width} bytes at {at} set to {v:#x}")
        }
    }
}

/// One damaged image read whole, under a watchdog; extracted too, now and then.
fn case(name: &str, good: &[u8], seed: u64, scratch: &Path) -> bool {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut b = good.to_vec();
    let what = corrupt(&mut b, &mut rng);
    let label = format!("{name}, seed {seed}: {what}");
    if std::env::var_os("BUNDLE_CORRUPTION_VERBOSE").is_some() {
        eprintln!("{label}");
    }
    let (done, watch) = mpsc::channel::<()>();
    let dog_label = label.clone();
    let dog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(CASE_LIMIT) {
            eprintln!("corruption test: {dog_label}: still running after {CASE_LIMIT:?} (a hang)");
            std::process::abort();
        }
    });
    let extract = seed.is_multiple_of(32);
    let result = std::panic::catch_unwind(|| {
        let Ok(image) = open(&b) else { return false };
        let ok = exercise(&image).is_ok();
        if extract {
            let out = scratch.join(format!("x{seed}"));
            let _ = bundle_squashfs::extract::to_dir(&image, &out);
            let _ = std::fs::remove_dir_all(&out).or_else(|_| make_writable_and_remove(&out));
        }
        ok
    });
    let _ = done.send(());
    dog.join().unwrap();
    match result {
        Ok(read_whole) => read_whole,
        Err(_) => panic!("corruption test: {label}: the reader panicked"),
    }
}

/// Extraction leaves directories with the image's modes, read-only ones included.
fn make_writable_and_remove(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::process::Command::new("chmod").arg("-R").arg("u+rwx").arg(dir).status();
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    std::fs::remove_dir_all(dir)
}

#[test]
fn damaged_tables_give_errors_never_panics_hangs_or_huge_allocations() {
    let seconds: u64 = std::env::var("BUNDLE_CORRUPTION_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let d = tempfile::tempdir().unwrap();
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/squashfs/bundle.sqfs");
    let images = [
        ("mksquashfs -comp zstd", std::fs::read(image(d.path(), "zstd.sqfs", ZSTD)).unwrap()),
        ("mksquashfs -noI -noD -noF", std::fs::read(image(d.path(), "stored.sqfs", STORED)).unwrap()),
        ("bundle build", std::fs::read(&bundle).unwrap()),
    ];
    for (name, good) in &images {
        assert!(exercise(&open(good).unwrap()).is_ok(), "{name}: the undamaged image reads whole");
    }
    let scratch = d.path().join("extract");
    std::fs::create_dir(&scratch).unwrap();
    let per_image = Duration::from_secs(seconds) / images.len() as u32;
    for (name, good) in &images {
        let start = Instant::now();
        let (mut cases, mut whole) = (0u64, 0u64);
        while start.elapsed() < per_image {
            whole += u64::from(case(name, good, cases, &scratch));
            cases += 1;
        }
        eprintln!("{name}: {cases} damaged images, {whole} of them still read whole, none panicked or hung");
        assert!(cases >= 20, "{name}: only {cases} cases in {per_image:?}");
    }
}
