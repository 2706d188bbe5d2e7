//! Extraction through directory descriptors: the tree comes out whole, and another
//! process that can write into the target and swaps its directories for symlinks while
//! we unpack cannot make the extractor create, write or chmod anything outside it.

mod common;

use bundle_squashfs::{extract, Image};
use common::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn the_sample_tree_comes_out_whole() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), "zstd.sqfs", ZSTD);
    let image = Image::open(&fs::File::open(&img).unwrap(), 0).unwrap();
    let out = d.path().join("out");
    let done = extract::to_dir(&image, &out).unwrap();
    assert_eq!(done.entries, 812);
    assert_eq!(fs::read(out.join("usr/bin/app")).unwrap(), fs::read(d.path().join("tree/usr/bin/app")).unwrap());
    assert_eq!(fs::read_link(out.join("usr/motd")).unwrap(), Path::new("../motd"));
    let (a, b) = (fs::metadata(out.join("motd")).unwrap(), fs::metadata(out.join("usr/motd-link")).unwrap());
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    let sparse = fs::metadata(out.join("sparse")).unwrap();
    assert_eq!((sparse.len(), sparse.blocks()), (100_000, 0));
    assert_eq!(fs::read_dir(out.join("many")).unwrap().count(), 800);
    // A second extraction into the same, now full, directory is refused.
    let err = extract::to_dir(&image, &out).unwrap_err().to_string();
    assert_eq!(err, format!("{} is not empty; give a new or empty directory", out.display()));
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_extract_cannot_lead_outside() {
    let d = tempfile::tempdir().unwrap();
    // 400 directories, each holding a file `f` of mode 0644 and one more directory.
    let tree = d.path().join("tree");
    for i in 0..400 {
        let dir = tree.join(format!("d{i:03}"));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("f"), b"from the image").unwrap();
        fs::write(dir.join("sub/f"), b"from the image").unwrap();
        fs::set_permissions(dir.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    }
    let img = d.path().join("race.sqfs");
    mksquashfs(&tree, &img, STORED);
    // Outside the target: a private file named like the image's files, and an empty
    // directory that a followed symlink would fill.
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("f"), b"private").unwrap();
    fs::set_permissions(outside.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(outside.join("sub")).unwrap();
    fs::set_permissions(outside.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();

    let image = Image::open(&fs::File::open(&img).unwrap(), 0).unwrap();
    for round in 0..6 {
        let target = d.path().join(format!("target{round}"));
        fs::create_dir(&target).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        // The attacker: as soon as one of our directories appears, move it away and put
        // a symlink to `outside` in its place.
        let attacker = {
            let (target, outside, stop) = (target.clone(), outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut swapped = 0;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..400 {
                        let dir = target.join(format!("d{i:03}"));
                        if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
                            && fs::rename(&dir, target.join(format!(".moved{i:03}"))).is_ok()
                            && symlink(&outside, &dir).is_ok()
                        {
                            swapped += 1;
                        }
                    }
                }
                swapped
            })
        };
        let result = extract::to_dir(&image, &target);
        stop.store(true, Ordering::Relaxed);
        let swapped = attacker.join().unwrap();
        // Swapped or not, finished or refused: nothing outside changed.
        assert_eq!(fs::read(outside.join("f")).unwrap(), b"private", "round {round}: {result:?}, {swapped} swaps");
        let mode = fs::metadata(outside.join("f")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "round {round}: the outside file was chmodded ({swapped} swaps)");
        let sub = fs::metadata(outside.join("sub")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(sub, 0o700, "round {round}: the outside directory was chmodded ({swapped} swaps)");
        let names: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "round {round}: something was created outside: {names:?}");
        assert_eq!(fs::read_dir(outside.join("sub")).unwrap().count(), 0, "round {round}: written into outside/sub");
        if let Err(e) = result {
            // What a swap makes the extraction say: one line naming the path.
            let e = e.to_string();
            assert!(e.contains(&*target.to_string_lossy()), "{e}");
        }
    }
}

/// Makes `depth` nested directories of 200-byte names under `root` and a file at the
/// bottom, one `*at` call at a time (the whole path is longer than PATH_MAX).
fn make_deep(root: &Path, depth: usize) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = std::ffi::CString::new("d".repeat(200)).unwrap();
    fs::create_dir(root).unwrap();
    let mut dir = OwnedFd::from(fs::File::open(root).unwrap());
    for _ in 0..depth {
        // SAFETY: NUL-terminated names relative to directory fds we own.
        unsafe {
            assert_eq!(libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755), 0);
            let fd = libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            assert!(fd >= 0);
            dir = OwnedFd::from_raw_fd(fd);
        }
    }
    // SAFETY: as above.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c"bottom".as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644) };
    assert!(fd >= 0);
    // SAFETY: the fd was just opened.
    drop(unsafe { fs::File::from_raw_fd(fd) });
}

// From the fault probes of issue 11: unpacking by path failed past PATH_MAX ("File name
// too long"), with an error that quoted the whole 6 KB path.
#[test]
fn a_tree_deeper_than_path_max_unpacks_and_long_paths_in_errors_are_shortened() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    // 20 levels: 4 KB of names, as deep as mksquashfs reads (it stops at PATH_MAX).
    make_deep(&tree, 20);
    let img = d.path().join("deep.sqfs");
    mksquashfs(&tree, &img, ZSTD);
    let image = Image::open(&fs::File::open(&img).unwrap(), 0).unwrap();
    // Under a target 200 bytes long, the deepest paths are longer than PATH_MAX.
    let out = d.path().join("o".repeat(200));
    assert_eq!(extract::to_dir(&image, &out).unwrap().entries, 21);
    // A message names a long path by its start and end.
    let long = Path::new("/x").join("d".repeat(200)).join("d".repeat(200)).join("f");
    let short = bundle_squashfs::short_path(&long);
    assert!(short.len() < 200, "{short}");
    assert!(short.starts_with("/x/ddd") && short.ends_with("ddd/f") && short.contains("...(2"), "{short}");
    assert_eq!(bundle_squashfs::short_path(Path::new("/a/b")), "/a/b");
}
