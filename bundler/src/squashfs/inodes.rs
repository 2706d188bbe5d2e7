//! The tree as squashfs sees it (inodes with numbers, directories with sorted entries, hard
//! links resolved) and the writing of the inode and directory tables.
//!
//! Order of the inode table: for each directory, depth first, the inodes of its
//! subdirectories' contents come first, then its own children's inodes, in name order,
//! then its listing goes to the directory table. The root comes last. So:
//! - a directory's listing is written after its children's inodes (it names where they
//!   are), and its own inode after its listing (it names where that is);
//! - a directory's children sit side by side in the inode table with consecutive numbers,
//!   so one listing header covers up to 256 of them;
//! - inodes are numbered in table order, the root gets the last number and, as in
//!   mksquashfs, its `..` is one past it.

use super::data::Data;
use super::meta::{MetaPos, MetaWriter};
use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use anyhow::{bail, Context, Result};
use bundle_squashfs::layout::*;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const ROOT: usize = 0;

pub struct Layout<'t> {
    inodes: Vec<Inode<'t>>,
    /// Contents of the regular files, in tree order: the order their data is written.
    files: Vec<&'t Source>,
    /// Inode numbers (index = inode), assigned by [`Layout::schedule`].
    numbers: Vec<u32>,
    steps: Vec<Step>,
}

struct Inode<'t> {
    /// Mode, owner and time. A hard link's own entry is not used: it is its target's inode.
    entry: &'t Entry,
    what: What<'t>,
}

enum What<'t> {
    Dir {
        parent: usize,
        children: Vec<Child<'t>>,
    },
    /// `index` into [`Layout::files`].
    File {
        index: usize,
        nlink: u32,
    },
    Symlink(&'t [u8]),
}

struct Child<'t> {
    name: &'t [u8],
    inode: usize,
}

/// One step of writing the tables.
#[derive(Debug, Clone, Copy)]
enum Step {
    Inode(usize),
    Listing(usize),
}

/// The written tables, positions relative to each table's start.
pub struct Tables {
    pub inodes: Vec<u8>,
    pub directories: Vec<u8>,
    pub ids: Vec<u32>,
    pub root: MetaPos,
    pub inode_count: u32,
}

/// Where a directory's listing is, what the directory's inode records.
#[derive(Debug, Clone, Default)]
struct Listing {
    start: MetaPos,
    /// Bytes of headers and entries (the inode adds 3 for `.` and `..`).
    size: u32,
    index: Vec<IndexEntry>,
}

/// Lets the kernel skip to the right part of a long listing when it looks a name up: one
/// for each header that starts in a new metadata block of the directory table.
#[derive(Debug, Clone)]
struct IndexEntry {
    /// The header's offset in the listing.
    offset: u32,
    /// The metadata block it starts in, relative to the directory table.
    block: u64,
    /// The header's first name.
    name: Vec<u8>,
}

impl<'t> Layout<'t> {
    pub fn new(tree: &'t Tree) -> Result<Layout<'t>> {
        let mut b = Builder::default();
        for (path, entry) in tree.iter() {
            b.add(path, entry)?;
        }
        b.add_hard_links()?;
        // The kernel finds names by walking a sorted listing. Tree order already sorts
        // siblings by name; hard links were appended out of order.
        for inode in &mut b.inodes {
            if let What::Dir { children, .. } = &mut inode.what {
                children.sort_by(|a, b| a.name.cmp(b.name));
            }
        }
        let mut layout =
            Layout { numbers: vec![0; b.inodes.len()], inodes: b.inodes, files: b.files, steps: Vec::new() };
        layout.schedule();
        Ok(layout)
    }

    pub fn files(&self) -> &[&'t Source] {
        &self.files
    }

    /// Numbers the inodes and orders the table writes as the module comment describes.
    fn schedule(&mut self) {
        let mut steps = Vec::with_capacity(self.inodes.len() * 2);
        let mut numbers = vec![0; self.inodes.len()];
        let mut next = 1;
        // Depth first without recursion: (directory, next child to look at).
        let mut stack = vec![(ROOT, 0)];
        while let Some(top) = stack.last_mut() {
            let (dir, cursor) = *top;
            let children = self.children(dir);
            let subdir = (cursor..children.len()).find(|&k| self.is_dir(children[k].inode));
            if let Some(k) = subdir {
                top.1 = k + 1;
                stack.push((children[k].inode, 0));
                continue;
            }
            for child in children {
                // A hard-linked inode is numbered and written once, where it is first met.
                if numbers[child.inode] == 0 {
                    numbers[child.inode] = next;
                    next += 1;
                    steps.push(Step::Inode(child.inode));
                }
            }
            steps.push(Step::Listing(dir));
            stack.pop();
        }
        numbers[ROOT] = next;
        steps.push(Step::Inode(ROOT));
        self.numbers = numbers;
        self.steps = steps;
    }

    fn children(&self, dir: usize) -> &[Child<'t>] {
        match &self.inodes[dir].what {
            What::Dir { children, .. } => children,
            _ => &[],
        }
    }

    fn is_dir(&self, inode: usize) -> bool {
        matches!(self.inodes[inode].what, What::Dir { .. })
    }

    fn inode_count(&self) -> u32 {
        self.numbers[ROOT]
    }

    /// Writes the inode and directory tables; `data` says where each file's bytes are.
    pub fn write_tables(&self, data: &Data, level: i32) -> Result<Tables> {
        let mut inode_table = MetaWriter::new(level)?;
        let mut dir_table = MetaWriter::new(level)?;
        let mut ids = Ids::default();
        let mut places = vec![MetaPos::default(); self.inodes.len()];
        let mut listings = vec![Listing::default(); self.inodes.len()];
        let mut buf = Vec::new();
        for &step in &self.steps {
            match step {
                Step::Listing(dir) => listings[dir] = self.write_listing(dir, &places, &mut dir_table),
                Step::Inode(i) => {
                    places[i] = inode_table.pos();
                    buf.clear();
                    self.encode_inode(i, &listings[i], data, &mut ids, &mut buf)?;
                    inode_table.write(&buf);
                }
            }
        }
        Ok(Tables {
            inodes: inode_table.finish().0,
            directories: dir_table.finish().0,
            ids: ids.list,
            root: places[ROOT],
            inode_count: self.inode_count(),
        })
    }

    fn encode_inode(&self, i: usize, listing: &Listing, data: &Data, ids: &mut Ids, b: &mut Vec<u8>) -> Result<()> {
        let Inode { entry, what } = &self.inodes[i];
        let header = |b: &mut Vec<u8>, kind: u16, ids: &mut Ids| -> Result<()> {
            b.put16(kind)
                .put16((entry.mode & 0o7777) as u16)
                .put16(ids.index(entry.uid)?)
                .put16(ids.index(entry.gid)?)
                .put32(entry.mtime)
                .put32(self.numbers[i]);
            Ok(())
        };
        match what {
            What::Dir { parent, children } => {
                let subdirs = children.iter().filter(|c| self.is_dir(c.inode)).count() as u32;
                let nlink = 2 + subdirs;
                let parent = if i == ROOT { self.inode_count() + 1 } else { self.numbers[*parent] };
                let size = listing.size + 3;
                let start = u32::try_from(listing.start.block).context("directory table over 4 GiB")?;
                if listing.index.is_empty() && size <= 0xFFFF {
                    header(b, BASIC_DIR, ids)?;
                    b.put32(start).put32(nlink).put16(size as u16).put16(listing.start.offset).put32(parent);
                } else {
                    header(b, EXTENDED_DIR, ids)?;
                    b.put32(nlink)
                        .put32(size)
                        .put32(start)
                        .put32(parent)
                        .put16(listing.index.len() as u16)
                        .put16(listing.start.offset)
                        .put32(NO_XATTR);
                    for e in &listing.index {
                        b.put32(e.offset).put32(e.block as u32).put32(e.name.len() as u32 - 1);
                        b.extend_from_slice(&e.name);
                    }
                }
            }
            What::File { index, nlink } => {
                let d = data.file(*index);
                if *nlink == 1 && d.start < 1 << 32 && d.size < 1 << 32 {
                    header(b, BASIC_FILE, ids)?;
                    b.put32(d.start as u32).put32(d.fragment).put32(d.fragment_offset).put32(d.size as u32);
                } else {
                    header(b, EXTENDED_FILE, ids)?;
                    b.put64(d.start)
                        .put64(d.size)
                        .put64(d.sparse)
                        .put32(*nlink)
                        .put32(d.fragment)
                        .put32(d.fragment_offset)
                        .put32(NO_XATTR);
                }
                for &w in &d.blocks {
                    b.put32(w);
                }
            }
            What::Symlink(target) => {
                header(b, BASIC_SYMLINK, ids)?;
                b.put32(1).put32(target.len() as u32);
                b.extend_from_slice(target);
            }
        }
        Ok(())
    }

    /// Writes a directory's entries: runs of at most 256 under a header that holds their
    /// inodes' metadata block and a base number; each entry holds its inode's offset in that
    /// block and its number as a 16-bit difference from the base.
    fn write_listing(&self, dir: usize, places: &[MetaPos], table: &mut MetaWriter) -> Listing {
        let children = self.children(dir);
        let mut listing = Listing { start: table.pos(), ..Listing::default() };
        let mut indexed_block = listing.start.block;
        let mut buf = Vec::new();
        let mut k = 0;
        while k < children.len() {
            let first = &children[k];
            let block = places[first.inode].block;
            let base = self.numbers[first.inode];
            let run = children[k..]
                .iter()
                .take(DIR_HEADER_MAX)
                .take_while(|c| {
                    let delta = i64::from(self.numbers[c.inode]) - i64::from(base);
                    places[c.inode].block == block && i16::try_from(delta).is_ok()
                })
                .count();

            let here = table.pos();
            if here.block != indexed_block {
                listing.index.push(IndexEntry { offset: listing.size, block: here.block, name: first.name.to_vec() });
                indexed_block = here.block;
            }
            buf.clear();
            buf.put32(run as u32 - 1).put32(block as u32).put32(base);
            for c in &children[k..k + run] {
                let delta = self.numbers[c.inode].wrapping_sub(base) as u16; // an i16, two's complement
                buf.put16(places[c.inode].offset)
                    .put16(delta)
                    .put16(self.basic_type(c.inode))
                    .put16(c.name.len() as u16 - 1);
                buf.extend_from_slice(c.name);
            }
            table.write(&buf);
            listing.size += buf.len() as u32;
            k += run;
        }
        listing
    }

    fn basic_type(&self, inode: usize) -> u16 {
        match self.inodes[inode].what {
            What::Dir { .. } => BASIC_DIR,
            What::File { .. } => BASIC_FILE,
            What::Symlink(_) => BASIC_SYMLINK,
        }
    }
}

/// Turns tree entries into inodes, in tree order.
#[derive(Default)]
struct Builder<'t> {
    inodes: Vec<Inode<'t>>,
    files: Vec<&'t Source>,
    at: HashMap<&'t Path, usize>,
    /// Hard links wait until the whole tree is known: a target may come after its link.
    links: Vec<(&'t ImagePath, &'t ImagePath)>,
}

impl<'t> Builder<'t> {
    fn add(&mut self, path: &'t ImagePath, entry: &'t Entry) -> Result<()> {
        if path.is_root() {
            if entry.kind != Kind::Dir {
                bail!("the image root must be a directory");
            }
            let dir = What::Dir { parent: ROOT, children: Vec::new() };
            self.push(path, entry, dir);
            return Ok(());
        }
        if self.inodes.is_empty() {
            bail!("the tree has no root directory");
        }
        let what = match &entry.kind {
            Kind::Dir => What::Dir { parent: self.parent_of(path)?, children: Vec::new() },
            Kind::File(src) => {
                self.files.push(src);
                What::File { index: self.files.len() - 1, nlink: 1 }
            }
            Kind::Symlink(target) => What::Symlink(target.as_os_str().as_bytes()),
            Kind::HardLink(target) => {
                self.links.push((path, target));
                return Ok(());
            }
        };
        let inode = self.push(path, entry, what);
        self.add_child(path, inode)
    }

    fn push(&mut self, path: &'t ImagePath, entry: &'t Entry, what: What<'t>) -> usize {
        let inode = self.inodes.len();
        self.inodes.push(Inode { entry, what });
        self.at.insert(path.as_path(), inode);
        inode
    }

    fn add_hard_links(&mut self) -> Result<()> {
        for (path, target) in std::mem::take(&mut self.links) {
            let inode = self.at.get(target.as_path()).copied();
            match inode.map(|i| &mut self.inodes[i].what) {
                Some(What::File { nlink, .. }) => *nlink += 1,
                _ => bail!(
                    "hard link {} points at {}, which is not a regular file of the tree",
                    path.absolute(),
                    target.absolute()
                ),
            }
            self.add_child(path, inode.unwrap())?;
        }
        Ok(())
    }

    fn add_child(&mut self, path: &'t ImagePath, inode: usize) -> Result<()> {
        let name = path.file_name().unwrap_or_default().as_bytes();
        if name.is_empty() || name.len() > NAME_MAX {
            bail!("{}: names must have 1 to {NAME_MAX} bytes", path.absolute());
        }
        let parent = self.parent_of(path)?;
        match &mut self.inodes[parent].what {
            What::Dir { children, .. } => children.push(Child { name, inode }),
            _ => bail!("{}: its parent is not a directory", path.absolute()),
        }
        Ok(())
    }

    fn parent_of(&self, path: &ImagePath) -> Result<usize> {
        let parent = path.as_path().parent().unwrap_or(Path::new(""));
        self.at.get(parent).copied().with_context(|| format!("{}: its directory is not in the tree", path.absolute()))
    }
}

/// uids and gids share one table; inodes hold 16-bit indexes into it.
#[derive(Default)]
struct Ids {
    list: Vec<u32>,
    index: HashMap<u32, u16>,
}

impl Ids {
    fn index(&mut self, id: u32) -> Result<u16> {
        if let Some(&i) = self.index.get(&id) {
            return Ok(i);
        }
        // The superblock counts ids in 16 bits.
        let i = u16::try_from(self.list.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .context("more than 65535 distinct uids and gids")?;
        self.list.push(id);
        self.index.insert(id, i);
        Ok(i)
    }
}
