//! Random access to the squashfs image inside our own file.
//!
//! `backhand` parses the inode and directory tables once; from then on every read is a
//! `pread` of one compressed block at a known position and a zstd decompression, so the
//! FUSE server's threads never contend for a shared file cursor. Decompressed blocks
//! are kept in a small shared cache: small files share fragment blocks, and page-sized
//! reads (mmap of a library) would otherwise decompress the same 128 KiB block again
//! for every 4 KiB page.

use backhand::{FilesystemReader, InnerNode, Node, SquashfsFileReader};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// Index of a node in [`Image::nodes`]; the root is 0.
pub type NodeId = usize;

/// Decompressed blocks kept: 64 × 128 KiB = 8 MiB with the default block size.
const CACHE_BLOCKS: usize = 64;

pub struct Image {
    file: File,
    offset: u64,
    pub block_size: u32,
    pub nodes: Vec<Node<SquashfsFileReader>>,
    /// Direct children of each directory node, in name order (empty for other nodes).
    pub children: Vec<Vec<NodeId>>,
    fragments: Vec<backhand::Fragment>,
    /// Disk position of every data block of a file, computed on first use.
    block_starts: Vec<OnceLock<Box<[u64]>>>,
    cache: Mutex<BlockCache>,
}

impl Image {
    /// Reads the tables of the image that starts at `offset` in `file`.
    pub fn open(file: &File, offset: u64) -> io::Result<Image> {
        let reader = BufReader::new(file.try_clone()?);
        let fs = FilesystemReader::from_reader_with_offset(reader, offset)
            .map_err(|e| corrupt(&format!("cannot read the squashfs image ({e})")))?;
        use backhand::traits::Compressor;
        if !matches!(fs.compressor, Some(Compressor::Zstd | Compressor::Uncompressed) | None) {
            return Err(io::Error::other(format!(
                "image compression {:?} is not supported (only zstd)",
                fs.compressor
            )));
        }
        let block_size = fs.block_size;
        let fragments = fs.fragments.clone().unwrap_or_default();
        let nodes = fs.root.nodes;
        let children = index_children(&nodes);
        Ok(Image {
            file: file.try_clone()?,
            offset,
            block_size,
            block_starts: nodes.iter().map(|_| OnceLock::new()).collect(),
            children,
            fragments,
            nodes,
            cache: Mutex::new(BlockCache::default()),
        })
    }

    pub fn name(&self, id: NodeId) -> &OsStr {
        self.nodes[id].fullpath.file_name().unwrap_or(OsStr::new("/"))
    }

    /// The child of `dir` called `name`, by binary search (children are in name order).
    pub fn child(&self, dir: NodeId, name: &OsStr) -> Option<NodeId> {
        let kids = self.children.get(dir)?;
        kids.binary_search_by(|&k| self.name(k).as_bytes().cmp(name.as_bytes())).ok().map(|i| kids[i])
    }

    /// Walks an absolute path from the root without following symlinks.
    pub fn lookup(&self, path: &Path) -> Option<NodeId> {
        path.components().skip(1).try_fold(0, |dir, c| self.child(dir, c.as_os_str()))
    }

    pub fn inner(&self, id: NodeId) -> &InnerNode<SquashfsFileReader> {
        &self.nodes[id].inner
    }

    /// Copies up to `buf.len()` bytes of file `id` from `pos`; returns how many.
    pub fn read_at(&self, id: NodeId, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let Some(piece) = self.piece_at(id, pos + done as u64)? else { break };
            let n = piece.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&piece[..n]);
            done += n;
        }
        Ok(done)
    }

    /// The bytes of file `id` from `pos` to the end of the block that holds `pos`, without
    /// a copy (the FUSE server replies straight from it); `None` at or past the end.
    pub fn piece_at(&self, id: NodeId, pos: u64) -> io::Result<Option<Piece>> {
        let InnerNode::File(file) = &self.nodes[id].inner else {
            return Err(io::Error::other("not a regular file"));
        };
        let len = file.file_len() as u64;
        if pos >= len {
            return Ok(None);
        }
        let bs = self.block_size as u64;
        let index = pos / bs;
        let Piece { block, start, end } = self.file_block(id, file, index as usize, len)?;
        Ok(Some(Piece { block, start: start + (pos - index * bs) as usize, end }))
    }

    /// Block `index` of a file: a data block, or its tail inside a fragment block.
    fn file_block(&self, id: NodeId, file: &SquashfsFileReader, index: usize, len: u64) -> io::Result<Piece> {
        let bs = self.block_size as u64;
        let sizes = file.block_sizes();
        if index < sizes.len() {
            let size = sizes[index];
            let expect = (len - index as u64 * bs).min(bs) as usize;
            if size.size() == 0 {
                return Ok(Piece::whole(Arc::new(vec![0; expect])));
            }
            let starts = self.block_starts[id].get_or_init(|| {
                let mut pos = file.blocks_start();
                sizes
                    .iter()
                    .map(|s| {
                        let here = pos;
                        pos += s.size() as u64;
                        here
                    })
                    .collect()
            });
            let block = self.block(starts[index], size.size(), !size.uncompressed(), expect)?;
            if block.len() != expect {
                return Err(corrupt("a data block has the wrong size"));
            }
            return Ok(Piece::whole(block));
        }
        let frag = self.fragments.get(file.frag_index()).ok_or_else(|| corrupt("fragment index out of range"))?;
        let block = self.block(frag.start, frag.size.size(), !frag.size.uncompressed(), self.block_size as usize)?;
        let start = file.block_offset() as usize;
        let end = start + (len - index as u64 * bs) as usize;
        if end > block.len() {
            return Err(corrupt("fragment shorter than the file's tail"));
        }
        Ok(Piece { block, start, end })
    }

    /// One block from disk, through the cache.
    fn block(&self, start: u64, size: u32, compressed: bool, max: usize) -> io::Result<Arc<Vec<u8>>> {
        if let Some(b) = self.cache.lock().unwrap().get(start) {
            return Ok(b);
        }
        let mut raw = vec![0u8; size as usize];
        self.file.read_exact_at(&mut raw, self.offset + start)?;
        let data = if compressed { decompress(&raw, max)? } else { raw };
        let data = Arc::new(data);
        self.cache.lock().unwrap().put(start, data.clone());
        Ok(data)
    }
}

/// A range of a decompressed block, shared with the block cache.
pub struct Piece {
    block: Arc<Vec<u8>>,
    start: usize,
    end: usize,
}

impl Piece {
    fn whole(block: Arc<Vec<u8>>) -> Piece {
        let end = block.len();
        Piece { block, start: 0, end }
    }
}

impl std::ops::Deref for Piece {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.block[self.start..self.end]
    }
}

/// zstd with one decompression context per thread: making a context costs more than
/// decompressing a small block.
fn decompress(raw: &[u8], max: usize) -> io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new()?);
        }
        let d = c.as_mut().expect("just made");
        d.decompress(raw, max).map_err(|_| corrupt("a block does not decompress"))
    })
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: the image is corrupted"))
}

/// One pass over the nodes, which backhand keeps sorted by path (a directory comes
/// right before everything under it): a stack of open directories gives each node's parent.
fn index_children(nodes: &[Node<SquashfsFileReader>]) -> Vec<Vec<NodeId>> {
    let mut children = vec![Vec::new(); nodes.len()];
    let mut open: Vec<NodeId> = vec![0];
    for (id, node) in nodes.iter().enumerate().skip(1) {
        while let [_, .., top] = open[..] {
            if node.fullpath.starts_with(&nodes[top].fullpath) {
                break;
            }
            open.pop();
        }
        children[open[open.len() - 1]].push(id);
        if matches!(node.inner, InnerNode::Dir(_)) {
            open.push(id);
        }
    }
    children
}

/// A small FIFO cache of decompressed blocks keyed by their position in the image.
#[derive(Default)]
struct BlockCache {
    map: HashMap<u64, Arc<Vec<u8>>>,
    order: VecDeque<u64>,
}

impl BlockCache {
    fn get(&self, key: u64) -> Option<Arc<Vec<u8>>> {
        self.map.get(&key).cloned()
    }

    fn put(&mut self, key: u64, block: Arc<Vec<u8>>) {
        if self.map.insert(key, block).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > CACHE_BLOCKS {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}
