//! What the hostile-image tests and the corruption property test share: images made by
//! mksquashfs from a small tree, the positions of their tables, and a reader that
//! touches everything an image has.

#![allow(dead_code)] // each test binary uses its own part

use bundle_squashfs::{DirCookie, Image, Inode, Kind};
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tree with one of each thing the tables describe: files in blocks and in
/// fragments, a sparse file (an extended inode, u64 size), a hard link, symlinks, a
/// directory with one child (one header), one of 800 long names (an extended inode
/// with a directory index), and a subdirectory to make a loop with.
pub fn make_tree(root: &Path) {
    let mk = |p: &str| fs::create_dir_all(root.join(p)).unwrap();
    mk("usr/bin");
    mk("loopdir/child-loop");
    mk("lonely");
    mk("many");
    fs::write(root.join("usr/bin/app"), (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
    fs::write(root.join("motd"), b"hello\n").unwrap();
    fs::write(root.join("lonely/only-child"), b"x").unwrap();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(100_000).unwrap();
    fs::hard_link(root.join("motd"), root.join("usr/motd-link")).unwrap();
    symlink("../motd", root.join("usr/motd")).unwrap();
    for i in 0..800 {
        fs::write(root.join(format!("many/a-rather-long-file-name-to-fill-the-listing-{i:04}")), b"").unwrap();
    }
}

/// `mksquashfs TREE IMAGE OPTIONS`, 4 KiB blocks, no padding, fixed times.
pub fn mksquashfs(tree: &Path, image: &Path, options: &[&str]) {
    let status = Command::new("mksquashfs")
        .arg(tree)
        .arg(image)
        .args(["-quiet", "-no-progress", "-nopad", "-b", "4096", "-noappend", "-all-time", "1700000000"])
        .args(["-mkfs-time", "1700000000", "-no-xattrs"])
        .args(options)
        .env_remove("SOURCE_DATE_EPOCH")
        .status()
        .expect("mksquashfs (scripts/test installs squashfs-tools)");
    assert!(status.success(), "mksquashfs failed");
}

pub const STORED: &[&str] = &["-noI", "-noD", "-noF"];
pub const ZSTD: &[&str] = &["-comp", "zstd"];

/// An image of the sample tree made with `options`, in `dir`.
pub fn image(dir: &Path, name: &str, options: &[&str]) -> PathBuf {
    let tree = dir.join("tree");
    if !tree.exists() {
        make_tree(&tree);
    }
    let path = dir.join(name);
    mksquashfs(&tree, &path, options);
    path
}

/// A few superblock fields, read by hand (the tests must not trust the reader).
pub struct Tables {
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
    pub id_table: u64,
    pub bytes_used: u64,
    /// Where the fragment table's and the id table's first metadata block are.
    pub fragment_blocks: u64,
    pub id_blocks: u64,
}

pub fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

pub fn tables(b: &[u8]) -> Tables {
    let t = Tables {
        bytes_used: u64_at(b, 40),
        id_table: u64_at(b, 48),
        inode_table: u64_at(b, 64),
        directory_table: u64_at(b, 72),
        fragment_table: u64_at(b, 80),
        fragment_blocks: 0,
        id_blocks: 0,
    };
    Tables { fragment_blocks: u64_at(b, t.fragment_table as usize), id_blocks: u64_at(b, t.id_table as usize), ..t }
}

/// Opens `bytes` as an image (from an unlinked temporary file).
pub fn open(bytes: &[u8]) -> io::Result<Image> {
    let mut f = tempfile::tempfile()?;
    io::Write::write_all(&mut f, bytes)?;
    Image::open(&f, 0)
}

/// Everything a reader can be asked, with a budget: the walk, paths looked up again, every file read, every directory listed from every cookie. Returns the first
/// error, as the product would show it.
pub fn exercise(image: &Image) -> io::Result<u64> {
    let root = image.root_inode()?;
    let mut visited = 0u64;
    let mut pieces = 20_000u32;
    readdir(image, &root)?;
    image.walk(|path, inode| {
        visited += 1;
        if visited > 100_000 {
            return Err(io::Error::other("budget spent"));
        }
        // Looking every path up again costs a listing scan each: every 16th will do.
        if visited % 16 == 1 {
            image.lookup_path(path)?;
        }
        match inode.kind {
            Kind::File => read_file(image, inode, &mut pieces)?,
            Kind::Dir => readdir(image, inode)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(visited)
}

fn read_file(image: &Image, inode: &Inode, pieces: &mut u32) -> io::Result<()> {
    let mut pos = 0;
    while let Some(piece) = image.piece_at(inode, pos)? {
        *pieces = pieces.checked_sub(1).ok_or_else(|| io::Error::other("budget spent"))?;
        pos = if piece.is_hole() {
            image.next_data(inode, pos)?.unwrap_or(inode.size).max(pos + piece.len() as u64)
        } else {
            pos + piece.len() as u64
        };
    }
    image.next_hole(inode, 0)?;
    Ok(())
}

fn readdir(image: &Image, dir: &Inode) -> io::Result<()> {
    let mut cookies = Vec::new();
    for e in image.entries(dir, DirCookie::default())?.take(300) {
        cookies.push(e?.1);
    }
    for c in cookies.into_iter().step_by(37) {
        if let Some(e) = image.entries(dir, c)?.next() {
            e?;
        }
    }
    Ok(())
}
