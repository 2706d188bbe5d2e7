//! Checking the image as it is read: every byte the reader takes from the file comes
//! from a chunk whose digest was checked the first time the chunk was read.
//!
//! The digests themselves are the caller's (the bundle format's chunk table): the
//! reader only knows chunk boundaries and asks [`Chunks::check`] for each new chunk, so
//! this crate needs no hash implementation. A chunk is hashed once: a bitmap of atomic
//! bits records the chunks found good, and a chunk being checked is held under one of a
//! few locks so that two threads that want it at once do not both hash it.
//!
//! Once checked, a chunk is read again straight from the file (its decompressed blocks
//! fall out of the caches). Those bytes are trusted because the file is not expected
//! to change under a running bundle; to notice when it does (a copy over the same
//! inode, a truncation), every such read is followed by an `fstat` that compares size,
//! modification and change time with what they were at open: any difference is an
//! error, never the new bytes.

use super::corrupt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// `check(index, bytes)`: whether `bytes` are all of chunk `index`.
pub type ChunkCheck = Box<dyn Fn(u64, &[u8]) -> bool + Send + Sync>;

/// What the caller knows of the image: its chunk size, its length, and a way to check
/// a chunk (`check(index, bytes)` is true when `bytes` are all of chunk `index`).
pub struct Chunks {
    pub size: u64,
    pub image_size: u64,
    pub check: ChunkCheck,
}

thread_local! {
    /// The chunk a thread is checking, kept for the next one: a fresh buffer each time
    /// cost its allocation, zeroing and page faults (about 20 us a 64 KiB chunk, half
    /// as much again as hashing it), on the path of every first read of a chunk. One
    /// chunk (64 KiB) a reading thread.
    static CHUNK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Locks for chunks being checked, chosen by chunk index.
const STRIPES: usize = 16;

pub(crate) struct Verifier {
    chunks: Chunks,
    /// One bit a chunk: checked and good.
    good: Vec<AtomicU64>,
    /// One bit a chunk: checked and bad (it stays bad: it is not hashed again).
    bad: Vec<AtomicU64>,
    stripes: [Mutex<()>; STRIPES],
    /// The file as it was when opened.
    stamp: Stamp,
    changed: AtomicBool,
}

/// What a write to the file changes: its size or its modification time. Not its change
/// time: a hard link made or removed, a chmod or chown change that too, and a job
/// directory that hard-links a shared bundle must not break the jobs already using it.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
}

impl Stamp {
    fn of(file: &File) -> io::Result<Stamp> {
        let m = file.metadata()?;
        Ok(Stamp { len: m.len(), mtime: (m.mtime(), m.mtime_nsec()) })
    }
}

fn bit(bits: &[AtomicU64], i: u64) -> bool {
    bits[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
}

fn set(bits: &[AtomicU64], i: u64) {
    bits[(i / 64) as usize].fetch_or(1 << (i % 64), Ordering::Release);
}

impl Verifier {
    pub(crate) fn new(chunks: Chunks, file: &File) -> io::Result<Verifier> {
        if chunks.size == 0 {
            return Err(corrupt("the chunk size is zero"));
        }
        let words = chunks.image_size.div_ceil(chunks.size).div_ceil(64) as usize;
        let bitmap = || (0..words).map(|_| AtomicU64::new(0)).collect();
        Ok(Verifier {
            good: bitmap(),
            bad: bitmap(),
            stripes: std::array::from_fn(|_| Mutex::new(())),
            stamp: Stamp::of(file)?,
            changed: AtomicBool::new(false),
            chunks,
        })
    }

    /// Fills `buf` from image position `pos` (the image starts at `offset` in `file`),
    /// from checked chunks only. Returns the last chunk that this read checked, if it
    /// checked any: the caller may have the next one checked ahead ([`Verifier::check`]).
    pub(crate) fn read(&self, file: &File, offset: u64, buf: &mut [u8], pos: u64) -> io::Result<Option<u64>> {
        let end = pos + buf.len() as u64;
        if end > self.chunks.image_size {
            return Err(corrupt(format!("it ends before byte {end}")));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let size = self.chunks.size;
        let (first, last) = (pos / size, (end - 1) / size);
        if (first..=last).all(|i| bit(&self.good, i)) {
            file.read_exact_at(buf, offset + pos)?;
            return self.unchanged(file).map(|()| None);
        }
        let mut checked = None;
        for i in first..=last {
            let from = (i * size).max(pos);
            let to = ((i + 1) * size).min(end);
            let out = &mut buf[(from - pos) as usize..(to - pos) as usize];
            if self.read_in_chunk(file, offset, i, out, from)? {
                checked = Some(i);
            }
        }
        Ok(checked)
    }

    /// Checks chunk `i` now, if it was not checked before (and exists): what a read
    /// of it would do, minus the read. Errors are left for a read to report.
    pub(crate) fn check(&self, file: &File, offset: u64, i: u64) {
        if i < self.chunks.image_size.div_ceil(self.chunks.size) && !bit(&self.good, i) && !bit(&self.bad, i) {
            let _ = self.read_in_chunk(file, offset, i, &mut [], i * self.chunks.size);
        }
    }

    /// Part of chunk `i`: from the file if the chunk was checked before, else from the
    /// whole chunk, read and checked now (then `true`).
    fn read_in_chunk(&self, file: &File, offset: u64, i: u64, out: &mut [u8], from: u64) -> io::Result<bool> {
        let _held = self.stripes[i as usize % STRIPES].lock().unwrap_or_else(|p| p.into_inner());
        if bit(&self.good, i) {
            file.read_exact_at(out, offset + from)?;
            return self.unchanged(file).map(|()| false);
        }
        let start = i * self.chunks.size;
        if bit(&self.bad, i) {
            return Err(self.mismatch(offset, start));
        }
        let len = self.chunks.size.min(self.chunks.image_size - start) as usize;
        CHUNK.with_borrow_mut(|whole| {
            whole.resize(len, 0);
            file.read_exact_at(whole, offset + start)?;
            if !(self.chunks.check)(i, whole) {
                set(&self.bad, i);
                return Err(self.mismatch(offset, start));
            }
            set(&self.good, i);
            let at = (from - start) as usize;
            out.copy_from_slice(&whole[at..at + out.len()]);
            Ok(true)
        })
    }

    fn mismatch(&self, offset: u64, start: u64) -> io::Error {
        corrupt(format!(
            "the chunk at byte {} of the file does not match its digest (damaged, or changed while in use)",
            offset + start
        ))
    }

    /// An error once the file is not the one that was opened.
    fn unchanged(&self, file: &File) -> io::Result<()> {
        if !self.changed.load(Ordering::Relaxed) && Stamp::of(file)? == self.stamp {
            return Ok(());
        }
        self.changed.store(true, Ordering::Relaxed);
        Err(corrupt("the bundle file was changed while in use (replace bundles by renaming a new file over them)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// A verifier whose "digests" are the chunks' first bytes, counting its checks.
    fn verifier(file: &File, image: &[u8], calls: Arc<AtomicUsize>) -> Verifier {
        let want: Vec<u8> = image.chunks(10).map(|c| c[0]).collect();
        let check = Box::new(move |i: u64, b: &[u8]| {
            calls.fetch_add(1, Ordering::SeqCst);
            b[0] == want[i as usize]
        });
        Verifier::new(Chunks { size: 10, image_size: image.len() as u64, check }, file).unwrap()
    }

    #[test]
    fn each_chunk_is_checked_once_and_reads_span_chunks() {
        let image: Vec<u8> = (0..35).collect();
        let mut bytes = b"xx".to_vec();
        bytes.extend(&image);
        let f = file_with(&bytes);
        let calls = Arc::new(AtomicUsize::new(0));
        let v = verifier(&f, &image, calls.clone());
        let mut buf = [0u8; 15];
        assert_eq!(v.read(&f, 2, &mut buf, 5).unwrap(), Some(1), "checked chunks 0 and 1");
        assert_eq!(buf.to_vec(), (5..20).collect::<Vec<u8>>());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Checking ahead: chunk 2 now, once; chunk 1 again, and a chunk past the end, not.
        v.check(&f, 2, 2);
        v.check(&f, 2, 2);
        v.check(&f, 2, 1);
        v.check(&f, 2, 4);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(v.read(&f, 2, &mut buf, 5).unwrap(), None, "nothing left to check there");
        v.read(&f, 2, &mut buf, 15).unwrap();
        assert_eq!(buf.to_vec(), (15..30).collect::<Vec<u8>>());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let mut tail = [0u8; 5];
        v.read(&f, 2, &mut tail, 30).unwrap();
        assert_eq!(tail, [30, 31, 32, 33, 34]);
        assert!(v.read(&f, 2, &mut tail, 31).is_err(), "past the image");
    }

    #[test]
    fn a_bad_chunk_is_an_error_and_others_still_read() {
        let image: Vec<u8> = (0..30).collect();
        let mut bytes = image.clone();
        bytes[20] = 99;
        let f = file_with(&bytes);
        let calls = Arc::new(AtomicUsize::new(0));
        let v = verifier(&f, &image, calls.clone());
        let mut buf = [0u8; 5];
        let e = v.read(&f, 0, &mut buf, 22).unwrap_err();
        assert!(e.to_string().contains("byte 20 of the file"), "{e}");
        assert!(v.read(&f, 0, &mut buf, 22).is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a bad chunk is not hashed again");
        v.read(&f, 0, &mut buf, 3).unwrap();
        assert_eq!(buf, [3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_file_changed_after_a_check_is_an_error() {
        let image: Vec<u8> = (0..30).collect();
        let mut f = file_with(&image);
        let v = verifier(&f, &image, Arc::new(AtomicUsize::new(0)));
        let mut buf = [0u8; 5];
        v.read(&f, 0, &mut buf, 0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        f.write_all_at(&[7], 1).unwrap();
        f.flush().unwrap();
        let e = v.read(&f, 0, &mut buf, 0).unwrap_err();
        assert!(e.to_string().contains("changed while in use"), "{e}");
    }
}
