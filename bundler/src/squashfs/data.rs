//! File contents: read in tree order, deduplicated, cut into blocks and fragments,
//! compressed on worker threads and written in the order they were cut.
//!
//! ```text
//!  cutter thread ──jobs──▶ compressor threads ──done──▶ placer (calling thread) ──▶ image
//!        ▲                                                  │
//!        └───────────── tokens: blocks in flight ◀──────────┘
//! ```
//!
//! The cutter numbers every piece it hands out and the placer writes them in that order,
//! whichever compressor finishes first, so the image never depends on thread timing. The
//! cutter takes a token per piece and the placer returns it once the piece is written:
//! however large the tree, only a few MiB of it are in memory at once.
//!
//! Holes are never read: a host file's holes are found with `SEEK_DATA`, and a block that
//! lies in one goes to the image as a hole (size word 0, no bytes) without being read,
//! compared or compressed, so a 100 GiB sparse file costs what its data costs.
//!
//! Duplicates are found before compression, not after (mksquashfs compresses a duplicate,
//! then throws the result away): only files whose size another file shares are hashed, and
//! a hash match is confirmed byte by byte, so a collision can never merge two files.

use super::codec::Codec;
use super::{Options, Sink};
use crate::tree::Source;
use anyhow::{bail, Context, Result};
use bundle_squashfs::layout::{DATA_UNCOMPRESSED, NO_FRAGMENT};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Mutex;
use xxhash_rust::xxh3::Xxh3;

/// Where a file's bytes ended up: what its inode records.
#[derive(Debug, Clone, Default)]
pub struct FileData {
    pub size: u64,
    /// Position of the first data block; 0 for a file without blocks, as in mksquashfs.
    pub start: u64,
    /// Size word of each data block (see [`DATA_UNCOMPRESSED`]); 0 for a hole.
    pub blocks: Vec<u32>,
    pub fragment: u32,
    pub fragment_offset: u32,
    /// Bytes stored as holes (all-zero blocks).
    pub sparse: u64,
}

/// The outcome of writing all file contents.
pub struct Data {
    contents: Vec<FileData>,
    /// For each file (in the order given to [`write`]), its content.
    content_of: Vec<usize>,
    /// Position and size word of each fragment block.
    pub fragments: Vec<(u64, u32)>,
    /// Files whose content an earlier file already stored.
    pub duplicates: u64,
}

impl Data {
    pub fn file(&self, index: usize) -> &FileData {
        &self.contents[self.content_of[index]]
    }
}

/// Files whose size another file shares are read whole into memory up to this size, to be
/// hashed and then compressed from one read; larger ones are read twice.
const HOLD_LIMIT: u64 = 1 << 20;

/// Writes the contents of `files`, in order, at the sink's position.
pub fn write(
    files: &[&Source],
    sink: &mut Sink,
    opts: &Options,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Data> {
    // Enough pieces queued that no compressor waits while the placer writes or the cutter
    // opens the next file; few enough (a few MiB) that memory stays flat.
    let in_flight = 4 * threads + 4;
    let (job_tx, job_rx) = sync_channel::<Job>(in_flight);
    let (done_tx, done_rx) = channel::<Done>();
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    let job_rx = Mutex::new(job_rx);
    let codecs = (0..threads).map(|_| Codec::new(opts.level)).collect::<Result<Vec<_>>>()?;
    let cutter = Cutter::new(opts, job_tx, token_tx, progress);

    std::thread::scope(|s| {
        let cut = s.spawn(move || cutter.run(files));
        for codec in codecs {
            let (jobs, done) = (&job_rx, done_tx.clone());
            s.spawn(move || compress_all(jobs, done, codec));
        }
        drop(done_tx);
        // The placer's error comes first: when it fails, the cutter only sees that no one
        // takes its pieces any more.
        let placed = place_all(done_rx, token_rx, sink);
        let cut = cut.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let placed = placed?;
        Ok(merge(cut?, placed))
    })
}

/// Where a piece goes.
#[derive(Debug, Clone, Copy)]
enum Dest {
    /// The next data block of a content.
    Block(usize),
    Fragment(u32),
}

struct Job {
    seq: u64,
    dest: Dest,
    data: Chunk,
}

struct Done {
    seq: u64,
    dest: Dest,
    raw_len: usize,
    word: u32,
    bytes: Vec<u8>,
}

/// Reads the files, decides what is a duplicate, a block or a fragment, and hands the
/// pieces out in a fixed order.
struct Cutter<'a> {
    block_size: usize,
    tail_ends: bool,
    jobs: SyncSender<Job>,
    tokens: SyncSender<()>,
    seq: u64,
    fragment: Vec<u8>,
    fragment_count: u32,
    /// Size and fragment place of each content; the placer adds the blocks.
    contents: Vec<FileData>,
    content_of: Vec<usize>,
    /// Contents a later file of the same size may duplicate, by (size, hash).
    known: HashMap<(u64, u128), Vec<(usize, &'a Source)>>,
    duplicates: u64,
    consumed: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<'a> Cutter<'a> {
    fn new(
        opts: &Options,
        jobs: SyncSender<Job>,
        tokens: SyncSender<()>,
        progress: &'a (dyn Fn(u64) + Sync),
    ) -> Cutter<'a> {
        let block_size = opts.block_size as usize;
        Cutter {
            block_size,
            tail_ends: opts.tail_ends,
            jobs,
            tokens,
            seq: 0,
            fragment: Vec::with_capacity(block_size),
            fragment_count: 0,
            contents: Vec::new(),
            content_of: Vec::new(),
            known: HashMap::new(),
            duplicates: 0,
            consumed: 0,
            progress,
        }
    }

    fn run(mut self, files: &[&'a Source]) -> Result<Cut> {
        let sizes = files.iter().map(|s| source_size(s)).collect::<Result<Vec<u64>>>()?;
        let mut same_size = HashMap::<u64, u32>::new();
        for &size in &sizes {
            *same_size.entry(size).or_default() += 1;
        }
        for (src, &size) in files.iter().zip(&sizes) {
            let c = if size > 0 && same_size[&size] > 1 {
                self.add_maybe_duplicate(src, size)?
            } else {
                self.store(Pieces::open(src, size, self.block_size)?, size)?
            };
            self.content_of.push(c);
        }
        self.flush_fragment()?;
        Ok(Cut { contents: self.contents, content_of: self.content_of, duplicates: self.duplicates })
    }

    /// A file that may repeat an earlier one: hash it first, so that a duplicate is never
    /// compressed. Returns its content.
    fn add_maybe_duplicate(&mut self, src: &'a Source, size: u64) -> Result<usize> {
        let held = if size <= HOLD_LIMIT {
            let pieces = Pieces::open(src, size, self.block_size)?;
            Some(pieces.collect::<Result<Vec<_>>>()?)
        } else {
            None
        };
        let hash = match &held {
            Some(pieces) => hash(pieces.iter().map(|p| Ok(p.clone())))?,
            None => hash(Pieces::open(src, size, self.block_size)?)?,
        };
        if let Some(c) = self.find_duplicate(src, size, hash)? {
            self.duplicates += 1;
            self.advance(size);
            return Ok(c);
        }
        let c = match held {
            Some(pieces) => self.store(pieces.into_iter().map(Ok), size)?,
            None => {
                // Read a second time: check that it is still what was hashed, or a later
                // duplicate of the first reading would be given this file's blocks.
                let mut h = Xxh3::new();
                let pieces = Pieces::open(src, size, self.block_size)?.inspect(|p| {
                    if let Ok(c) = p {
                        c.feed(&mut h)
                    }
                });
                let c = self.store(pieces, size)?;
                if h.digest128() != hash {
                    bail!("{} changed while it was being read", describe(src));
                }
                c
            }
        };
        self.known.entry((size, hash)).or_default().push((c, src));
        Ok(c)
    }

    fn find_duplicate(&self, src: &Source, size: u64, hash: u128) -> Result<Option<usize>> {
        for &(c, earlier) in self.known.get(&(size, hash)).into_iter().flatten() {
            if same_bytes(earlier, src, size, self.block_size)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Stores a new content: full blocks become data blocks, the rest a fragment.
    fn store(&mut self, pieces: impl Iterator<Item = Result<Chunk>>, size: u64) -> Result<usize> {
        let c = self.contents.len();
        self.contents.push(FileData { size, fragment: NO_FRAGMENT, ..FileData::default() });
        let bs = self.block_size as u64;
        // A file smaller than a block always goes to a fragment; the last, partial block of
        // a larger one only with `tail_ends`.
        let blocks = if size < bs || self.tail_ends { size / bs } else { size.div_ceil(bs) };
        for (k, piece) in pieces.enumerate() {
            let piece = piece?;
            self.advance(piece.len() as u64);
            if (k as u64) < blocks {
                self.dispatch(Dest::Block(c), piece)?;
            } else {
                self.add_fragment(c, &piece.into_bytes())?;
            }
        }
        Ok(c)
    }

    fn add_fragment(&mut self, c: usize, tail: &[u8]) -> Result<()> {
        if self.fragment.len() + tail.len() > self.block_size {
            self.flush_fragment()?;
        }
        self.contents[c].fragment = self.fragment_count;
        self.contents[c].fragment_offset = self.fragment.len() as u32;
        self.fragment.extend_from_slice(tail);
        Ok(())
    }

    fn flush_fragment(&mut self) -> Result<()> {
        if self.fragment.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.fragment, Vec::with_capacity(self.block_size));
        self.dispatch(Dest::Fragment(self.fragment_count), Chunk::Data(data))?;
        self.fragment_count += 1;
        Ok(())
    }

    fn dispatch(&mut self, dest: Dest, data: Chunk) -> Result<()> {
        let seq = self.seq;
        self.seq += 1;
        let job = Job { seq, dest, data };
        // Either send fails only when the placer has stopped on an error of its own.
        if self.tokens.send(()).is_err() || self.jobs.send(job).is_err() {
            bail!("the image writer stopped");
        }
        Ok(())
    }

    fn advance(&mut self, bytes: u64) {
        self.consumed += bytes;
        (self.progress)(self.consumed);
    }
}

/// What the cutter decided.
struct Cut {
    contents: Vec<FileData>,
    content_of: Vec<usize>,
    duplicates: u64,
}

fn compress_all(jobs: &Mutex<Receiver<Job>>, done: Sender<Done>, mut codec: Codec) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return, // another worker panicked; the scope reports it
        };
        let Ok(job) = job else { return };
        if done.send(compress(job, &mut codec)).is_err() {
            return;
        }
    }
}

fn compress(job: Job, codec: &mut Codec) -> Done {
    let raw_len = job.data.len();
    let block = matches!(job.dest, Dest::Block(_));
    let (word, bytes) = match job.data {
        // A hole, as mksquashfs stores it: no bytes, size word 0.
        Chunk::Hole(_) if block => (0, Vec::new()),
        Chunk::Data(data) if block && is_zero(&data) => (0, Vec::new()),
        data => {
            let data = data.into_bytes();
            let mut out = Vec::new();
            if codec.compress(&data, &mut out) {
                (out.len() as u32, out)
            } else {
                (raw_len as u32 | DATA_UNCOMPRESSED, data)
            }
        }
    };
    Done { seq: job.seq, dest: job.dest, raw_len, word, bytes }
}

fn is_zero(data: &[u8]) -> bool {
    // Chunks keep the inner loop branch-free (vectorised) while still stopping early.
    data.chunks(4096).all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// The blocks of one content, as the placer wrote them.
#[derive(Default)]
struct Blocks {
    start: u64,
    words: Vec<u32>,
    sparse: u64,
}

#[derive(Default)]
struct Placed {
    blocks: Vec<Blocks>,
    fragments: Vec<(u64, u32)>,
}

/// Writes compressed pieces in the cutter's order, returning a token for each.
fn place_all(done: Receiver<Done>, tokens: Receiver<()>, sink: &mut Sink) -> Result<Placed> {
    let mut placed = Placed::default();
    let mut waiting = BTreeMap::new();
    let mut next = 0;
    for d in done {
        waiting.insert(d.seq, d);
        while let Some(d) = waiting.remove(&next) {
            placed.place(d, sink)?;
            next += 1;
            let _ = tokens.recv();
        }
    }
    debug_assert!(waiting.is_empty());
    Ok(placed)
}

impl Placed {
    fn place(&mut self, d: Done, sink: &mut Sink) -> Result<()> {
        match d.dest {
            Dest::Block(c) => {
                if c >= self.blocks.len() {
                    self.blocks.resize_with(c + 1, Blocks::default);
                }
                let b = &mut self.blocks[c];
                if b.words.is_empty() {
                    b.start = sink.pos();
                }
                b.words.push(d.word);
                if d.word == 0 {
                    b.sparse += d.raw_len as u64;
                }
            }
            Dest::Fragment(i) => {
                debug_assert_eq!(i as usize, self.fragments.len());
                self.fragments.push((sink.pos(), d.word));
            }
        }
        sink.write(&d.bytes)
    }
}

fn merge(cut: Cut, placed: Placed) -> Data {
    let mut contents = cut.contents;
    for (content, blocks) in contents.iter_mut().zip(placed.blocks) {
        content.start = blocks.start;
        content.blocks = blocks.words;
        content.sparse = blocks.sparse;
    }
    Data { contents, content_of: cut.content_of, fragments: placed.fragments, duplicates: cut.duplicates }
}

fn source_size(src: &Source) -> Result<u64> {
    match src {
        Source::Bytes(b) => Ok(b.len() as u64),
        Source::Host(path) => {
            let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
            if !meta.is_file() {
                bail!("{} is not a regular file", path.display());
            }
            Ok(meta.len())
        }
    }
}

fn describe(src: &Source) -> String {
    match src {
        Source::Host(path) => path.display().to_string(),
        Source::Bytes(_) => "in-memory file".into(),
    }
}

/// One block-sized piece of a source: bytes, or a hole of that many zeros.
#[derive(Clone)]
enum Chunk {
    Data(Vec<u8>),
    Hole(usize),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Data(d) => d.len(),
            Chunk::Hole(n) => *n,
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            Chunk::Data(d) => d,
            Chunk::Hole(n) => vec![0; n],
        }
    }

    fn feed(&self, h: &mut Xxh3) {
        match self {
            Chunk::Data(d) => h.update(d),
            Chunk::Hole(n) => {
                const ZEROS: [u8; 4096] = [0; 4096];
                let mut left = *n;
                while left > 0 {
                    let k = left.min(ZEROS.len());
                    h.update(&ZEROS[..k]);
                    left -= k;
                }
            }
        }
    }

    fn same(&self, other: &Chunk) -> bool {
        match (self, other) {
            (Chunk::Data(a), Chunk::Data(b)) => a == b,
            (Chunk::Hole(a), Chunk::Hole(b)) => a == b,
            (Chunk::Data(d), Chunk::Hole(n)) | (Chunk::Hole(n), Chunk::Data(d)) => d.len() == *n && is_zero(d),
        }
    }
}

/// A source read in pieces of one block, the unit of compression. It yields exactly the
/// size it was opened with: a file that has shrunk since is an error, one that has grown
/// is cut at that size (its inode records that size).
struct Pieces<'a> {
    input: Input<'a>,
    pos: u64,
    left: u64,
    piece: usize,
}

enum Input<'a> {
    Host {
        file: File,
        path: &'a Path,
        /// Where the next data after a hole starts, as `SEEK_DATA` last said.
        data_at: u64,
    },
    Memory(&'a [u8]),
}

impl<'a> Pieces<'a> {
    fn open(src: &'a Source, size: u64, piece: usize) -> Result<Pieces<'a>> {
        let input = match src {
            Source::Bytes(b) => Input::Memory(b),
            Source::Host(path) => Input::Host {
                file: File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
                path,
                data_at: 0,
            },
        };
        Ok(Pieces { input, pos: 0, left: size, piece })
    }

    fn read_piece(&mut self) -> Result<Chunk> {
        let n = self.left.min(self.piece as u64) as usize;
        let pos = self.pos;
        self.left -= n as u64;
        self.pos += n as u64;
        match &mut self.input {
            Input::Memory(b) => {
                let (piece, rest) = b.split_at(n);
                *b = rest;
                Ok(Chunk::Data(piece.to_vec()))
            }
            Input::Host { file, path, data_at } => {
                if *data_at <= pos {
                    *data_at = next_data(file, pos);
                }
                if *data_at >= pos + n as u64 {
                    return Ok(Chunk::Hole(n));
                }
                let mut buf = vec![0; n];
                file.read_exact_at(&mut buf, pos).map_err(|e| match e.kind() {
                    ErrorKind::UnexpectedEof => {
                        anyhow::anyhow!("{} shrank while it was being read", path.display())
                    }
                    _ => anyhow::Error::new(e).context(format!("cannot read {}", path.display())),
                })?;
                Ok(Chunk::Data(buf))
            }
        }
    }
}

/// The first position at or after `pos` that holds data (`u64::MAX` when only a hole
/// follows). A file system without `SEEK_DATA` says `pos`: all data, read as before.
fn next_data(file: &File, pos: u64) -> u64 {
    let Ok(at) = libc::off_t::try_from(pos) else { return pos };
    // SAFETY: lseek on a descriptor we own; pread does not use the file offset it moves.
    match unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) } {
        -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => u64::MAX,
        -1 => pos,
        n => n as u64,
    }
}

impl Iterator for Pieces<'_> {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        (self.left > 0).then(|| self.read_piece())
    }
}

fn hash(pieces: impl Iterator<Item = Result<Chunk>>) -> Result<u128> {
    let mut h = Xxh3::new();
    for p in pieces {
        p?.feed(&mut h);
    }
    Ok(h.digest128())
}

fn same_bytes(a: &Source, b: &Source, size: u64, piece: usize) -> Result<bool> {
    if let (Source::Bytes(x), Source::Bytes(y)) = (a, b) {
        return Ok(x == y);
    }
    let mut b = Pieces::open(b, size, piece)?;
    for x in Pieces::open(a, size, piece)? {
        let Some(y) = b.next() else { return Ok(false) };
        if !x?.same(&y?) {
            return Ok(false);
        }
    }
    Ok(true)
}
