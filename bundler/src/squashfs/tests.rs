//! Images are read back with backhand and, where installed, unsquashfs, and compared entry by
//! entry with the tree they were written from.

use super::*;
use crate::tree::{Entry, ImagePath, Kind, Source};
use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Junk before the image, as the bundle's runtime stub would be.
const OFFSET: u64 = 8192;

fn entry(kind: Kind, mode: u32) -> Entry {
    Entry { kind, mode, uid: 0, gid: 0, mtime: 1_700_000_000 }
}

fn bytes(b: Vec<u8>) -> Kind {
    Kind::File(Source::Bytes(Arc::from(b)))
}

fn path(p: &str) -> ImagePath {
    ImagePath::new(p).unwrap()
}

/// Text-like bytes that compress, with a seed so that files differ.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words: [&[u8]; 6] = [b"squash ", b"block ", b"inode ", b"fragment ", b"zstd\n", b"tree "];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 33) as usize % words.len()]);
    }
    out.truncate(len);
    out
}

/// Bytes that do not compress: stored raw.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree with every kind of entry the writer must handle, some file contents on the host
/// (in `host`), some in memory.
fn sample_tree(host: &Path, bs: usize) -> Tree {
    let mut t = Tree::new(1_600_000_000);
    let mut add = |p: &str, e: Entry| t.insert(path(p), e).unwrap();
    let host_file = |name: &str, content: &[u8]| {
        let p = host.join(name);
        std::fs::write(&p, content).unwrap();
        Kind::File(Source::Host(p))
    };

    add("/empty", entry(Kind::Dir, 0o700));
    add("/sticky", entry(Kind::Dir, 0o1777));
    add("/files/size0", entry(bytes(vec![]), 0o644));
    add("/files/size0-again", entry(host_file("zero-len", b""), 0o644));
    add("/files/size1", entry(bytes(b"x".to_vec()), 0o644));
    add("/files/bs-1", entry(host_file("bs-1", &text(bs - 1, 1)), 0o644));
    add("/files/bs", entry(host_file("bs", &text(bs, 2)), 0o644));
    add("/files/3bs+17", entry(host_file("3bs17", &text(3 * bs + 17, 3)), 0o755));
    add("/files/noise", entry(host_file("noise", &noise(2 * bs + 5, 4)), 0o644));
    add("/files/zeros-1MiB", entry(bytes(vec![0; 1 << 20]), 0o644));
    // Duplicates: in memory and on the host, small and larger than the hold limit.
    add("/dup/a", entry(bytes(text(bs - 1, 1)), 0o600));
    add("/dup/b", entry(host_file("dup-3bs17", &text(3 * bs + 17, 3)), 0o644));
    let big = text((3 << 20) / 2, 5);
    add("/dup/big1", entry(host_file("big1", &big), 0o644));
    add("/dup/big2", entry(host_file("big2", &big), 0o644));
    // Same size, different bytes: must not be merged.
    add("/dup/same-size", entry(bytes(text(bs - 1, 99)), 0o644));
    add("/links/rel", entry(Kind::Symlink("../files/size1".into()), 0o777));
    add("/links/abs", entry(Kind::Symlink("/files/bs".into()), 0o777));
    add("/links/dangling", entry(Kind::Symlink("nowhere/at/all".into()), 0o777));
    // Hard links, one to a file that comes later in tree order.
    add("/links/hard", entry(Kind::HardLink(path("/files/bs")), 0o644));
    add("/links/hard2", entry(Kind::HardLink(path("/files/bs")), 0o644));
    add("/0first", entry(Kind::HardLink(path("/z/target")), 0o644));
    add("/z/target", entry(bytes(text(5000, 6)), 0o640));
    let mut suid = entry(host_file("suid", &text(300, 7)), 0o4755);
    suid.uid = 1000;
    suid.gid = 100;
    suid.mtime = 1_234_567_890;
    add("/bin/suid", suid);
    let mut owned = entry(Kind::Dir, 0o2750);
    owned.uid = 65534;
    owned.gid = 65534;
    add("/bin/owned", owned);
    for i in 0..300 {
        let name = format!("/many/entry-with-a-rather-long-name-{i:04}");
        let kind = match i % 3 {
            0 => bytes(text(i * 7, i as u64)),
            1 => Kind::Dir,
            _ => Kind::Symlink(format!("target-{i}").into()),
        };
        add(&name, entry(kind, 0o755));
    }
    add("/deep/a/b/c/d/e/f/g/h/leaf", entry(bytes(b"deep".to_vec()), 0o644));
    t
}

fn write_to_temp(tree: &Tree, opts: &Options) -> (tempfile::NamedTempFile, Stats) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.as_file_mut().write_all(&[0xAA; OFFSET as usize]).unwrap();
    let stats = write_image(tree, f.as_file_mut(), opts, &|_| {}).unwrap();
    let len = f.as_file().metadata().unwrap().len();
    assert_eq!(len, OFFSET + stats.bytes);
    assert_eq!(stats.bytes % 4096, 0);
    assert_eq!(f.as_file_mut().stream_position().unwrap(), len);
    (f, stats)
}

/// What the tree says a path must be: a hard link is its target.
fn expected<'t>(tree: &'t Tree, p: &ImagePath) -> &'t Entry {
    let e = tree.get(p).unwrap_or_else(|| panic!("{} is not in the tree", p.absolute()));
    match &e.kind {
        Kind::HardLink(target) => tree.get(target).unwrap(),
        _ => e,
    }
}

fn content(src: &Source) -> Vec<u8> {
    match src {
        Source::Bytes(b) => b.to_vec(),
        Source::Host(p) => std::fs::read(p).unwrap(),
    }
}

fn check_with_backhand(tree: &Tree, image: &Path) {
    let reader = BufReader::new(File::open(image).unwrap());
    let fs = backhand::FilesystemReader::from_reader_with_offset(reader, OFFSET).unwrap();
    let mut seen = 0;
    for node in fs.files() {
        let p = ImagePath::new(&node.fullpath).unwrap();
        let want = expected(tree, &p);
        let what = p.absolute();
        assert_eq!(u32::from(node.header.permissions), want.mode, "{what} mode");
        assert_eq!(node.header.uid, want.uid, "{what} uid");
        assert_eq!(node.header.gid, want.gid, "{what} gid");
        assert_eq!(node.header.mtime, want.mtime, "{what} mtime");
        match (&node.inner, &want.kind) {
            (backhand::InnerNode::Dir(_), Kind::Dir) => {}
            (backhand::InnerNode::File(f), Kind::File(src)) => {
                let mut got = Vec::new();
                fs.file(f).reader().read_to_end(&mut got).unwrap();
                assert!(got == content(src), "{what} content");
            }
            (backhand::InnerNode::Symlink(l), Kind::Symlink(target)) => {
                assert_eq!(&l.link, target, "{what} target");
            }
            (got, _) => panic!("{what}: found {got:?}, want {:?}", want.kind),
        }
        seen += 1;
    }
    assert_eq!(seen, tree.len(), "entries read back");
}

fn check_with_unsquashfs(tree: &Tree, image: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let run = Command::new("unsquashfs")
        .args(["-no-progress", "-o", &OFFSET.to_string(), "-d"])
        .arg(&root)
        .arg(image)
        .output();
    let out = match run {
        Ok(out) => out,
        Err(_) => {
            println!("note: unsquashfs not found, image not checked with it");
            return;
        }
    };
    assert!(out.status.success(), "unsquashfs: {}", String::from_utf8_lossy(&out.stderr));
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut names_of_inode = HashMap::<u64, u64>::new();
    for (p, e) in tree.iter() {
        let host = root.join(p.as_path());
        let m = std::fs::symlink_metadata(&host).unwrap();
        let want = expected(tree, p);
        let what = p.absolute();
        if !matches!(want.kind, Kind::Symlink(_)) {
            assert_eq!(m.permissions().mode() & 0o7777, want.mode, "{what} mode");
            assert_eq!(m.mtime(), i64::from(want.mtime), "{what} mtime");
        }
        if as_root {
            assert_eq!((m.uid(), m.gid()), (want.uid, want.gid), "{what} owner");
        }
        match &want.kind {
            Kind::Dir => assert!(m.is_dir(), "{what} is a directory"),
            Kind::File(src) => {
                assert!(m.is_file(), "{what} is a file");
                assert!(std::fs::read(&host).unwrap() == content(src), "{what} content");
                *names_of_inode.entry(m.ino()).or_default() += 1;
                if matches!(e.kind, Kind::HardLink(_)) {
                    assert!(m.nlink() > 1, "{what} is hard-linked");
                }
            }
            Kind::Symlink(target) => {
                assert_eq!(&std::fs::read_link(&host).unwrap(), target, "{what} target");
            }
            Kind::HardLink(_) => unreachable!(),
        }
    }
    // Every name of a file is one inode with that many links.
    for (p, e) in tree.iter() {
        if let Kind::File(_) | Kind::HardLink(_) = e.kind {
            let m = std::fs::symlink_metadata(root.join(p.as_path())).unwrap();
            assert_eq!(m.nlink(), names_of_inode[&m.ino()], "{} links", p.absolute());
        }
    }
}

fn check_round_trip(bs: u32, tail_ends: bool, threads: usize) {
    let host = tempfile::tempdir().unwrap();
    let tree = sample_tree(host.path(), bs as usize);
    let opts = Options { block_size: bs, tail_ends, threads, mkfs_time: 1_700_000_000, ..Options::default() };
    let (image, stats) = write_to_temp(&tree, &opts);
    // /files/bs-1 and /dup/a, /files/3bs+17 and /dup/b, /dup/big1 and big2.
    assert_eq!(stats.duplicates, 3);
    // Every entry but the three hard links is an inode.
    assert_eq!(stats.inodes, tree.len() as u64 - 3);
    check_with_backhand(&tree, image.path());
    check_with_unsquashfs(&tree, image.path());
}

#[test]
fn round_trip_default_blocks() {
    check_round_trip(128 * 1024, false, 2);
}

#[test]
fn round_trip_small_blocks_with_tail_ends() {
    check_round_trip(4096, true, 3);
}

#[test]
fn non_default_level_writes_compressor_options() {
    let host = tempfile::tempdir().unwrap();
    let tree = sample_tree(host.path(), 4096);
    let opts = Options { level: 3, block_size: 4096, ..Options::default() };
    let (image, _) = write_to_temp(&tree, &opts);
    check_with_backhand(&tree, image.path());
    check_with_unsquashfs(&tree, image.path());
}

#[test]
fn a_tree_of_only_the_root_is_an_image() {
    let tree = Tree::new(5);
    let (image, stats) = write_to_temp(&tree, &Options::default());
    assert_eq!(stats.inodes, 1);
    check_with_backhand(&tree, image.path());
    check_with_unsquashfs(&tree, image.path());
}

#[test]
fn output_does_not_depend_on_threads() {
    let host = tempfile::tempdir().unwrap();
    let tree = sample_tree(host.path(), 4096);
    let image = |threads| {
        let opts = Options { block_size: 4096, threads, ..Options::default() };
        let (f, _) = write_to_temp(&tree, &opts);
        std::fs::read(f.path()).unwrap()
    };
    let one = image(1);
    assert!(one == image(2));
    assert!(one == image(4));
}

#[test]
fn progress_reaches_the_total_of_file_contents() {
    let host = tempfile::tempdir().unwrap();
    let tree = sample_tree(host.path(), 4096);
    let total: u64 = tree
        .iter()
        .filter_map(|(_, e)| match &e.kind {
            Kind::File(src) => Some(content(src).len() as u64),
            _ => None,
        })
        .sum();
    let last = AtomicU64::new(0);
    let mut f = tempfile::tempfile().unwrap();
    let opts = Options { block_size: 4096, ..Options::default() };
    write_image(&tree, &mut f, &opts, &|n| {
        let before = last.swap(n, Ordering::Relaxed);
        assert!(n >= before, "progress went back from {before} to {n}");
    })
    .unwrap();
    assert_eq!(last.load(Ordering::Relaxed), total);
}

#[test]
fn an_unreadable_source_is_named() {
    let mut tree = Tree::new(0);
    let missing = PathBuf::from("/nonexistent/dir/some-file");
    tree.insert(path("/f"), entry(Kind::File(Source::Host(missing)), 0o644)).unwrap();
    let mut f = tempfile::tempfile().unwrap();
    let err = write_image(&tree, &mut f, &Options::default(), &|_| {}).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/dir/some-file"), "{err:#}");
}

#[test]
fn a_hard_link_must_point_at_a_file() {
    let mut tree = Tree::new(0);
    tree.insert(path("/d"), entry(Kind::Dir, 0o755)).unwrap();
    tree.insert(path("/l"), entry(Kind::HardLink(path("/d")), 0o644)).unwrap();
    let mut f = tempfile::tempfile().unwrap();
    let err = write_image(&tree, &mut f, &Options::default(), &|_| {}).unwrap_err();
    assert!(format!("{err:#}").contains("/l"), "{err:#}");
}

#[test]
fn bad_options_are_refused() {
    let tree = Tree::new(0);
    let mut f = tempfile::tempfile().unwrap();
    for opts in [Options { block_size: 3000, ..Options::default() }, Options { level: 23, ..Options::default() }] {
        assert!(write_image(&tree, &mut f, &opts, &|_| {}).is_err());
    }
}

/// A host directory as a tree: directories, regular files read from the host, symbolic
/// links; everything root-owned with one time, as `mksquashfs -all-root` makes it.
fn tree_of_dir(root: &Path, mtime: u32) -> Tree {
    let mut tree = Tree::new(mtime);
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let host = e.path();
            let m = std::fs::symlink_metadata(&host).unwrap();
            let kind = if m.is_dir() {
                todo.push(host.clone());
                Kind::Dir
            } else if m.is_file() {
                Kind::File(Source::Host(host.clone()))
            } else if m.is_symlink() {
                Kind::Symlink(std::fs::read_link(&host).unwrap())
            } else {
                continue;
            };
            let mut en = entry(kind, m.permissions().mode() & 0o7777);
            en.mtime = mtime;
            tree.insert(path(host.strip_prefix(root).unwrap().to_str().unwrap()), en).unwrap();
        }
    }
    tree
}

/// Compares this writer with mksquashfs and gensquashfs on a host directory:
/// `SQFS_BENCH_DIR=/tmp/bench-tree cargo test --release -p bundler squashfs::tests::bench -- --ignored --nocapture`
/// Each round runs all three, in a rotating order; the table shows the median time.
/// `SQFS_BENCH_ROUNDS` (default 3), `SQFS_BENCH_LEVEL`, `SQFS_BENCH_THREADS`,
/// `SQFS_BENCH_TAIL_ENDS=1` vary it; `SQFS_BENCH_OTHERS=0` runs this writer only.
#[test]
#[ignore]
fn bench() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let dir = PathBuf::from(std::env::var("SQFS_BENCH_DIR").expect("SQFS_BENCH_DIR"));
    let level = env("SQFS_BENCH_LEVEL", "15");
    let threads = env("SQFS_BENCH_THREADS", "2");
    let rounds: usize = env("SQFS_BENCH_ROUNDS", "3").parse().unwrap();
    let out = PathBuf::from(env("SQFS_BENCH_OUT", "/tmp/sqfs-bench"));
    std::fs::create_dir_all(&out).unwrap();

    let ours = || {
        let image = out.join("ours.sqfs");
        let tree = tree_of_dir(&dir, 0);
        let opts = Options {
            level: level.parse().unwrap(),
            threads: threads.parse().unwrap(),
            tail_ends: env("SQFS_BENCH_TAIL_ENDS", "0") == "1",
            ..Options::default()
        };
        let stats = write_image(&tree, &mut File::create(&image).unwrap(), &opts, &|_| {});
        println!("{:?}", stats.unwrap());
        image
    };
    let run = |image: PathBuf, cmd: &mut Command| {
        let st = cmd.stdout(std::process::Stdio::null()).status().unwrap();
        assert!(st.success(), "{cmd:?} failed");
        image
    };
    let mksquashfs = || {
        let image = out.join("mksquashfs.sqfs");
        let mut cmd = Command::new("mksquashfs");
        cmd.arg(&dir).arg(&image);
        cmd.args(["-comp", "zstd", "-Xcompression-level", &level]);
        cmd.args(["-b", "131072", "-processors", &threads]);
        cmd.args(["-noappend", "-all-root", "-quiet"]);
        run(image, &mut cmd)
    };
    let gensquashfs = || {
        let image = out.join("gensquashfs.sqfs");
        let mut cmd = Command::new("gensquashfs");
        cmd.arg("-D").arg(&dir);
        cmd.args(["-c", "zstd", "-X", &format!("level={level}")]);
        cmd.args(["-b", "131072", "-j", &threads, "--all-root", "-f", "-q"]);
        run(image.clone(), cmd.arg(&image))
    };
    let mut writers: Vec<(&str, &dyn Fn() -> PathBuf)> = vec![("bundle", &ours)];
    if env("SQFS_BENCH_OTHERS", "1") != "0" {
        writers.push(("mksquashfs", &mksquashfs));
        writers.push(("gensquashfs", &gensquashfs));
    }

    let mut times = vec![Vec::new(); writers.len()];
    let mut sizes = vec![0; writers.len()];
    for round in 0..rounds {
        for k in 0..writers.len() {
            let w = (k + round) % writers.len();
            let start = std::time::Instant::now();
            let image = (writers[w].1)();
            times[w].push(start.elapsed().as_secs_f64());
            sizes[w] = std::fs::metadata(image).unwrap().len();
        }
    }
    let median = |t: &mut Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let medians: Vec<f64> = times.iter_mut().map(median).collect();
    let base = writers.len().min(2) - 1; // mksquashfs when it ran
    println!("| writer | median s | all runs s | bytes | time / mksquashfs | size / mksquashfs |");
    println!("|---|---|---|---|---|---|");
    for (w, (name, _)) in writers.iter().enumerate() {
        let all: Vec<String> = times[w].iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "| {name} | {:.2} | {} | {} | {:.3} | {:.4} |",
            medians[w],
            all.join(" "),
            sizes[w],
            medians[w] / medians[base],
            sizes[w] as f64 / sizes[base] as f64
        );
    }
}

/// Writes the sample tree's image for checks by hand (kernel mount, sqfsdiff):
/// `SQFS_SAMPLE_OUT=/tmp/sample cargo test -p bundler squashfs::tests::sample -- --ignored`
/// leaves `image.sqfs` (at offset 8192) and the host files it was made from.
#[test]
#[ignore]
fn sample() {
    let out = PathBuf::from(std::env::var("SQFS_SAMPLE_OUT").expect("SQFS_SAMPLE_OUT"));
    let host = out.join("host");
    std::fs::create_dir_all(&host).unwrap();
    let tree = sample_tree(&host, 128 * 1024);
    let mut f = File::create(out.join("image.sqfs")).unwrap();
    f.write_all(&[0xAA; OFFSET as usize]).unwrap();
    println!("{:?}", write_image(&tree, &mut f, &Options::default(), &|_| {}).unwrap());
}
