//! Issue 9, end to end: the lazy squashfs reader (`bundle-squashfs`) against `unsquashfs`,
//! on images made by `mksquashfs -comp zstd` (with compressed and with stored tables)
//! and by `bundle build`; the fault probes that found today's reader wanting; and holes
//! and hard links through `bundle extract` and through the FUSE server.
//!
//! The sample tree holds every shape the reader must get right: empty files, fragments,
//! whole blocks, tail-ends, stored (incompressible) blocks, a sparse file, hard links,
//! symlinks (relative, absolute, dangling), a fifo, setuid/sticky modes, owners, times, a
//! directory of 300 entries (two listing headers) and one of 70,000 (a directory index),
//! a 255-byte name, and directories nested 500 deep.

use bundle_squashfs::{DirCookie, Image, Inode, Kind};
use e2e::*;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::hash::Hasher;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MIB: u64 = 1 << 20;
const BIG_DIR: usize = 70_000;
const DEPTH: usize = 500;

/// What both readers must agree on for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    target: Option<Vec<u8>>,
    content: Option<u64>,
}

struct Listing {
    entries: BTreeMap<PathBuf, Meta>,
    /// Paths that are one inode, each group sorted, groups sorted.
    hard_links: Vec<Vec<PathBuf>>,
}

/// Builds the sample tree once per test binary.
fn sample_tree() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let root = shared_dir().join("sample-tree");
        make_sample_tree(&root);
        root
    })
}

/// Compressible bytes: numbered lines, different for each seed.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("file {seed} line {line} of the sample tree\n").as_bytes());
        line += 1;
    }
    out.truncate(len);
    out
}

/// Bytes that do not compress (splitmix64), so their blocks are stored as they are.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(p: &Path, bytes: &[u8], mode: u32) {
    fs::write(p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(p: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let f = File::options().write(true).open(p).or_else(|_| File::open(p)).unwrap();
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)).unwrap();
}

fn make_sample_tree(root: &Path) {
    let bs = 128 * 1024;
    fs::create_dir_all(root.join("sub/dir300")).unwrap();
    write(&root.join("empty"), b"", 0o644);
    write(&root.join("small"), &text(100, 1), 0o644);
    write(&root.join("exact"), &text(bs, 2), 0o755);
    write(&root.join("multi"), &text(3 * bs + 5000, 3), 0o640);
    write(&root.join("noise"), &noise(2 * bs + 777, 4), 0o600);
    write(&root.join("locked"), b"no one may read me\n", 0o000);
    write(&root.join("setuid"), &text(300, 5), 0o4755);
    // A sparse file: a hole, data, a hole, data at the very end.
    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 * MIB).unwrap();
    sparse.write_all_at(&text(3 * bs, 6), 20 * MIB).unwrap();
    sparse.write_all_at(b"the end", 64 * MIB - 7).unwrap();
    drop(sparse);
    // Two hard-link sets, one across directories.
    write(&root.join("linked"), &text(5000, 7), 0o644);
    fs::hard_link(root.join("linked"), root.join("sub/linked-too")).unwrap();
    fs::hard_link(root.join("linked"), root.join("sub/dir300/linked-three")).unwrap();
    write(&root.join("pair-a"), &text(200_000, 8), 0o644);
    fs::hard_link(root.join("pair-a"), root.join("pair-b")).unwrap();
    symlink("small", root.join("rel-link")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    for i in 0..300 {
        write(&root.join(format!("sub/dir300/entry-{i:04}")), format!("{i}\n").as_bytes(), 0o644);
    }
    let big = root.join("big");
    fs::create_dir(&big).unwrap();
    for i in 0..BIG_DIR {
        // Names of several lengths, so that listing headers and the index vary.
        let name = format!("{}{i:06}", "n".repeat(i % 7));
        let f = File::create(big.join(name)).unwrap();
        if i % 1000 == 0 {
            f.write_all_at(format!("{i}").as_bytes(), 0).unwrap();
        }
    }
    let long = root.join("long");
    fs::create_dir(&long).unwrap();
    write(&long.join("x".repeat(255)), b"a 255-byte name\n", 0o644);
    let mut deep = root.join("deep");
    for _ in 0..DEPTH {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("bottom"), b"500 levels down\n", 0o644);
    if is_root() {
        std::os::unix::fs::lchown(root.join("small"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("abs-link"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(root.join("sub"), Some(65534), Some(100)).unwrap();
    }
    for (i, p) in ["small", "exact", "multi", "sub", "sub/dir300", "long", "sparse"].iter().enumerate() {
        set_mtime(&root.join(p), 1_600_000_000 + i as u64 * 86_400);
    }
    set_mtime(root, 1_500_000_000);
}

fn content_hash(mut read: impl FnMut(u64, &mut [u8]) -> usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = read(pos, &mut buf);
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
        pos += n as u64;
    }
    h.write_u64(pos);
    h.finish()
}

/// The tree `unsquashfs` unpacked, read back from the file system.
fn list_unpacked(root: &Path) -> Listing {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::from("/")];
    while let Some(rel) = stack.pop() {
        let host = root.join(rel.strip_prefix("/").unwrap());
        let m = fs::symlink_metadata(&host).unwrap();
        let t = m.file_type();
        let (kind, target, content) = if t.is_dir() {
            for e in fs::read_dir(&host).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
            ('d', None, None)
        } else if t.is_symlink() {
            ('l', Some(fs::read_link(&host).unwrap().as_os_str().as_bytes().to_vec()), None)
        } else if t.is_file() {
            if m.nlink() > 1 {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            let f = File::open(&host).unwrap();
            ('-', None, Some(content_hash(|pos, buf| f.read_at(buf, pos).unwrap())))
        } else {
            ('p', None, None)
        };
        let size = if matches!(kind, '-' | 'l') { m.size() } else { 0 };
        let meta =
            Meta { kind, mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), mtime: m.mtime(), size, target, content };
        entries.insert(rel, meta);
    }
    Listing { entries, hard_links: groups(inodes.into_values()) }
}

fn groups(sets: impl Iterator<Item = Vec<PathBuf>>) -> Vec<Vec<PathBuf>> {
    let mut g: Vec<Vec<PathBuf>> = sets
        .map(|mut s| {
            s.sort();
            s
        })
        .collect();
    g.sort();
    g
}

fn reader_meta(image: &Image, n: &Inode) -> Meta {
    let kind = match n.kind {
        Kind::Dir => 'd',
        Kind::File => '-',
        Kind::Symlink => 'l',
        Kind::Fifo => 'p',
        k => panic!("unexpected kind {k:?}"),
    };
    let content = (n.kind == Kind::File).then(|| content_hash(|pos, buf| image.read_at(n, pos, buf).unwrap()));
    Meta {
        kind,
        mode: u32::from(n.mode),
        uid: n.uid,
        gid: n.gid,
        mtime: i64::from(n.mtime),
        size: if matches!(n.kind, Kind::File | Kind::Symlink) { n.size } else { 0 },
        target: n.link_target().map(<[u8]>::to_vec),
        content,
    }
}

/// The tree as our reader sees it.
fn list_with_reader(image: &Image) -> Listing {
    let mut entries = BTreeMap::new();
    let root = image.root_inode().unwrap();
    entries.insert(PathBuf::from("/"), reader_meta(image, &root));
    let mut refs: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    image
        .walk(|p, n| {
            if n.kind == Kind::File && n.nlink > 1 {
                refs.entry(n.reference.0).or_default().push(p.to_path_buf());
            }
            entries.insert(p.to_path_buf(), reader_meta(image, n));
            Ok(())
        })
        .unwrap();
    Listing { entries, hard_links: groups(refs.into_values()) }
}

#[track_caller]
fn assert_same(ours: &Listing, theirs: &Listing, what: &str) {
    let mut diffs = Vec::new();
    for (p, m) in &theirs.entries {
        match ours.entries.get(p) {
            None => diffs.push(format!("{}: missing from our reader", p.display())),
            Some(o) if o != m => diffs.push(format!("{}: ours {o:?}, unsquashfs {m:?}", p.display())),
            _ => {}
        }
    }
    for p in ours.entries.keys().filter(|p| !theirs.entries.contains_key(*p)) {
        diffs.push(format!("{}: only our reader has it", p.display()));
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences, first ones:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n")
    );
    assert_eq!(ours.hard_links, theirs.hard_links, "{what}: hard links");
}

fn unsquashfs(image: &Path, offset: u64, out: &Path) {
    let mut c = Command::new("unsquashfs");
    c.args(["-no-progress", "-quiet", "-no-xattrs", "-o", &offset.to_string(), "-d"]).arg(out).arg(image);
    let r = run(&mut c);
    assert!(
        r.status.success(),
        "unsquashfs (Debian package squashfs-tools) failed (run the suite with ./scripts/test)\n{r}"
    );
}

fn mksquashfs(tree: &Path, out: &Path, extra: &[&str]) {
    let mut c = Command::new("mksquashfs");
    c.arg(tree).arg(out).args(["-noappend", "-quiet", "-no-progress", "-no-xattrs"]).args(extra);
    let r = run(&mut c);
    assert!(
        r.status.success(),
        "mksquashfs (Debian package squashfs-tools) failed (run the suite with ./scripts/test)\n{r}"
    );
}

/// Checks everything the reader can be asked, on one image at `offset` of `file`.
fn check_image(file: &Path, offset: u64, what: &str) {
    let t = TestDir::new("squashfs-check");
    let out = t.join("unpacked");
    unsquashfs(file, offset, &out);
    let theirs = list_unpacked(&out);
    let image = Image::open(&File::open(file).unwrap(), offset).unwrap();
    let ours = list_with_reader(&image);
    assert_same(&ours, &theirs, what);
    assert_eq!(ours.entries.len(), theirs.entries.len());
    assert!(ours.entries.len() > BIG_DIR + DEPTH, "{what}: the sample tree is all there");

    // Every path is found by lookup, as the walk found it.
    for (p, m) in &ours.entries {
        let n = image.lookup_path(p).unwrap().unwrap_or_else(|| panic!("{what}: lookup of {} failed", p.display()));
        assert_eq!(reader_meta(&image, &n).kind, m.kind, "{what}: {}", p.display());
    }
    for missing in ["/nope", "/big/zzz", "/big/n000000", "/big/a", "/sub/dir300/entry-0300", "/small/x"] {
        let found = image.lookup_path(Path::new(missing));
        assert!(matches!(found, Ok(None)) || missing == "/small/x", "{what}: {missing}: {found:?}");
    }

    // A listing resumes at any cookie with exactly what follows it.
    for dir in ["/sub/dir300", "/big"] {
        let d = image.lookup_path(Path::new(dir)).unwrap().unwrap();
        let all: Vec<_> = image.entries(&d, DirCookie::default()).unwrap().map(Result::unwrap).collect();
        let step = if all.len() > 1000 { 997 } else { 1 };
        for k in (0..all.len()).step_by(step) {
            let rest: Vec<_> = image.entries(&d, all[k].1).unwrap().map(|e| e.unwrap().0).collect();
            let want: Vec<_> = all[k + 1..].iter().map(|(e, _)| e.clone()).collect();
            assert!(rest == want, "{what}: {dir} resumed after entry {k}");
        }
    }

    // Holes are holes, and the hard links one inode with its link count.
    let sparse = image.lookup_path(Path::new("/sparse")).unwrap().unwrap();
    assert_eq!(image.next_hole(&sparse, 0).unwrap(), 0, "{what}: the sparse file starts with a hole");
    assert_eq!(image.next_data(&sparse, 0).unwrap(), Some(20 * MIB), "{what}: its data starts at 20 MiB");
    assert_eq!(image.next_hole(&sparse, 20 * MIB).unwrap(), 20 * MIB + 3 * 128 * 1024);
    assert!(image.next_data(&sparse, 64 * MIB - 7).unwrap().is_some());
    let linked = image.lookup_path(Path::new("/sub/linked-too")).unwrap().unwrap();
    assert_eq!(linked.nlink, 3, "{what}: nlink");
    assert_eq!(linked.reference, image.lookup_path(Path::new("/linked")).unwrap().unwrap().reference);
}

#[test]
fn reader_matches_unsquashfs_on_mksquashfs_images() {
    let t = TestDir::new("squashfs-mk");
    let img = t.join("zstd.sqfs");
    mksquashfs(sample_tree(), &img, &["-comp", "zstd"]);
    check_image(&img, 0, "mksquashfs -comp zstd");
    // Stored tables, tail-ends in fragments and small blocks: other shapes of listing,
    // more index entries, more fragments.
    let img = t.join("stored.sqfs");
    mksquashfs(sample_tree(), &img, &["-comp", "zstd", "-noI", "-noD", "-noF", "-always-use-fragments", "-b", "4096"]);
    check_image(&img, 0, "mksquashfs -noI -noD -noF -always-use-fragments -b 4096");
}

#[test]
fn reader_matches_unsquashfs_on_images_inside_a_larger_file() {
    let t = TestDir::new("squashfs-offset");
    let img = t.join("plain.sqfs");
    mksquashfs(sample_tree(), &img, &["-comp", "zstd", "-Xcompression-level", "3"]);
    let mut bytes = vec![0x5Au8; 12_345];
    bytes.extend(fs::read(&img).unwrap());
    let inside = t.join("inside.bin");
    fs::write(&inside, bytes).unwrap();
    check_image(&inside, 12_345, "an image at an odd offset");
}

#[test]
fn reader_matches_unsquashfs_on_bundles() {
    let t = TestDir::new("squashfs-bundle");
    let out = t.join("sample.sif");
    Build::new().dir(sample_tree()).entrypoint("/exact").args(["--no-closure", "--level", "3"]).build(&out);
    check_image(&out, read_trailer(&out).image_offset, "bundle build");
    let out = t.join("small-blocks.sif");
    Build::new().dir(sample_tree()).entrypoint("/exact").args(["--no-closure", "--block-size", "4096"]).build(&out);
    check_image(&out, read_trailer(&out).image_offset, "bundle build --block-size 4096");
}

#[test]
fn other_compressors_are_named() {
    let t = TestDir::new("squashfs-comp");
    let tree = t.join("tree");
    fs::create_dir(&tree).unwrap();
    write(&tree.join("a"), &text(50_000, 9), 0o644);
    for comp in ["gzip", "xz", "lz4", "lzo"] {
        let img = t.join(format!("{comp}.sqfs"));
        mksquashfs(&tree, &img, &["-comp", comp]);
        let err = Image::open(&File::open(&img).unwrap(), 0).err().unwrap_or_else(|| panic!("{comp} image opened"));
        let msg = err.to_string();
        assert!(msg.contains(comp) && msg.contains("only zstd"), "{comp}: {msg}");
    }
    // Stored throughout: readable whatever compressor the superblock names.
    let img = t.join("stored-gzip.sqfs");
    mksquashfs(&tree, &img, &["-comp", "gzip", "-noI", "-noD", "-noF", "-noX"]);
    let image = Image::open(&File::open(&img).unwrap(), 0).unwrap();
    let a = image.lookup_path(Path::new("/a")).unwrap().unwrap();
    let mut buf = vec![0; 50_000];
    assert_eq!(image.read_at(&a, 0, &mut buf).unwrap(), 50_000);
    assert_eq!(buf, text(50_000, 9));
}

/// The position of the directory table in a bundle's image, from its superblock.
fn directory_table(bundle: &Path) -> u64 {
    let tr = read_trailer(bundle);
    let mut sb = [0u8; 8];
    File::open(bundle).unwrap().read_exact_at(&mut sb, tr.image_offset + 72).unwrap();
    tr.image_offset + u64::from_le_bytes(sb)
}

#[test]
fn a_damaged_directory_table_is_an_error_for_list_and_extract() {
    let t = TestDir::new("squashfs-damaged");
    let root = t.join("root");
    make_rootfs(&root);
    let good = Build::new().dir(&root).entrypoint("/bin/probe").build(&t.join("good.sif"));
    let at = directory_table(&good);
    // The zstd frame of the first listing block (its first byte is the frame's magic),
    // then its 2-byte length.
    for (name, pos) in [("frame", at + 2), ("length", at + 1)] {
        let bad = patched_copy(&good, &t.join(format!("{name}.sif")), |b| b[pos as usize] ^= 0x40);
        run(bundle(&[OsStr::new("list"), bad.as_os_str()])).assert_bundle_error("corrupted");
        let dest = t.join(format!("{name}-out"));
        run(bundle(&[OsStr::new("extract"), bad.as_os_str(), dest.as_os_str()])).assert_bundle_error("corrupted");
    }
}

#[test]
fn a_100_gib_sparse_file_stays_sparse() {
    let t = Test::new("squashfs-sparse");
    let root = t.dir.join("root");
    make_rootfs(&root);
    let big = File::create(root.join("big")).unwrap();
    let size = 100 << 30;
    big.set_len(size).unwrap();
    big.write_all_at(b"middle", 50 << 30).unwrap();
    big.write_all_at(b"end", size - 3).unwrap();
    drop(big);
    let sif = Build::new().dir(&root).entrypoint("/bin/probe").build(&t.dir.join("sparse.sif"));
    // The writer read only the data: the bundle is the size of busybox and the probe.
    let len = fs::metadata(&sif).unwrap().len();
    assert!(len < 16 * MIB, "a 100 GiB sparse file made a {len}-byte bundle");

    // bundle extract keeps the holes.
    let dest = t.dir.join("extracted");
    run(bundle(&[OsStr::new("extract"), sif.as_os_str(), dest.as_os_str()])).assert_success();
    let m = fs::metadata(dest.join("big")).unwrap();
    assert_eq!(m.len(), size);
    assert!(m.blocks() * 512 < 4 * MIB, "extracted with {} bytes allocated", m.blocks() * 512);
    let mut end = [0u8; 3];
    File::open(dest.join("big")).unwrap().read_exact_at(&mut end, size - 3).unwrap();
    assert_eq!(&end, b"end");

    // The FUSE server answers SEEK_DATA and SEEK_HOLE: two data blocks in 100 GiB.
    require_fuse();
    let out = run(&mut t.app(&sif, Mode::Fuse, &["holes", "/big"]));
    out.assert_success();
    let bs = 128 * 1024;
    let want = format!("{} {}\n{} {}\nsize {size}\n", 50u64 << 30, (50u64 << 30) + bs, size - bs, size);
    assert_eq!(out.stdout(), want, "{out}");
    // Extract mode's cache keeps them too.
    let out = run(&mut t.app(&sif, Mode::Extract, &["holes", "/big"]));
    out.assert_success();
    let cached: Vec<_> =
        fs::read_dir(t.cache.join("images")).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert_eq!(cached.len(), 1);
    let m = fs::metadata(cached[0].path().join("big")).unwrap();
    assert!(m.blocks() * 512 < 4 * MIB, "cached with {} bytes allocated", m.blocks() * 512);
}

#[test]
fn hard_links_are_one_inode_in_fuse_and_extract_mode() {
    let t = Test::new("squashfs-links");
    let root = t.dir.join("root");
    make_rootfs(&root);
    fs::create_dir(root.join("sub")).unwrap();
    write(&root.join("one"), b"linked\n", 0o644);
    fs::hard_link(root.join("one"), root.join("two")).unwrap();
    fs::hard_link(root.join("one"), root.join("sub/three")).unwrap();
    let sif = Build::new().dir(&root).entrypoint("/bin/probe").build(&t.dir.join("links.sif"));
    require_fuse();
    for mode in [Mode::Extract, Mode::Fuse] {
        let out = run(&mut t.app(&sif, mode, &["inode", "/one", "/two", "/sub/three", "/bin/busybox"]));
        out.assert_success();
        let lines = out.lines();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], lines[1], "{mode:?}: {out}");
        assert_eq!(lines[0], lines[2], "{mode:?}: {out}");
        assert!(lines[0].ends_with(" 3"), "{mode:?}: nlink 3\n{out}");
        assert!(lines[3].ends_with(" 1") && lines[3] != lines[0], "{mode:?}: {out}");
    }
}
