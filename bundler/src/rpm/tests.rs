//! RPM reading on packages made here with the `rpm` crate's builder: it writes real
//! packages (digests, payload) and, unlike rpmbuild, lets a test write hostile paths.

use super::*;
use ::rpm::{BuildConfig, CompressionType, FileOptions, PackageBuilder};

fn builder(name: &str) -> PackageBuilder {
    let mut b = PackageBuilder::new(name, "1.0", "MIT", "x86_64", "test");
    b.using_config(BuildConfig::default().compression(CompressionType::Gzip).source_date(1_700_000_000u32));
    b
}

fn write(dir: &Path, b: &mut PackageBuilder) -> PathBuf {
    let pkg = b.build().unwrap();
    let path = dir.join(pkg.canonical_filename().unwrap());
    pkg.write_file(&path).unwrap();
    path
}

fn add(paths: &[&Path]) -> Result<Tree> {
    let mut tree = Tree::new(0);
    let mut r = RpmInputs::new(&mut tree)?;
    for p in paths {
        r.add(p)?;
    }
    drop(r);
    Ok(tree)
}

fn kind(tree: &Tree, p: &str) -> Option<Kind> {
    tree.get(&ImagePath::new(p).unwrap()).map(|e| e.kind.clone())
}

#[test]
fn files_dirs_symlinks_hard_links_ghosts_and_owners() {
    let d = tempfile::tempdir().unwrap();
    let mut b = builder("good");
    b.with_file_contents("#!/bin/sh\n", FileOptions::new("/usr/bin/app").permissions(0o755))
        .unwrap()
        .with_symlink(FileOptions::symlink("/usr/bin/app-link", "app"))
        .unwrap()
        .with_dir_entry(FileOptions::dir("/var/empty").permissions(0o700).user("ftp"))
        .unwrap()
        .with_file_contents("same", FileOptions::new("/usr/share/a").hardlink("x"))
        .unwrap()
        .with_file_contents("same", FileOptions::new("/usr/share/b").hardlink("x"))
        .unwrap()
        .with_file_contents("cfg", FileOptions::new("/etc/app.conf").user("appuser"))
        .unwrap()
        .with_ghost(FileOptions::ghost("/var/log/app.log"))
        .unwrap();
    let rpm = write(d.path(), &mut b);
    let mut tree = Tree::new(0);
    let mut r = RpmInputs::new(&mut tree).unwrap();
    let input = r.add(&rpm).unwrap();
    assert_eq!(input.nevra.as_deref(), Some("good-1.0-1.x86_64"));
    assert_eq!(input.sha256.as_ref().map(String::len), Some(64));
    let warnings = r.warnings.join("\n");
    assert!(warnings.contains("user appuser"), "{warnings}");
    let staging = r.into_staging();

    let app = tree.get(&ImagePath::new("/usr/bin/app").unwrap()).unwrap();
    assert_eq!(app.mode, 0o755);
    let Kind::File(Source::Host(p)) = &app.kind else { panic!("{app:?}") };
    assert!(p.starts_with(staging.path()));
    assert_eq!(std::fs::read(p).unwrap(), b"#!/bin/sh\n");
    assert_eq!(kind(&tree, "/usr/bin/app-link"), Some(Kind::Symlink("app".into())));
    let empty = tree.get(&ImagePath::new("/var/empty").unwrap()).unwrap();
    assert_eq!((empty.kind.clone(), empty.mode, empty.uid), (Kind::Dir, 0o700, 14));
    let conf = tree.get(&ImagePath::new("/etc/app.conf").unwrap()).unwrap();
    assert_eq!(conf.uid, NOBODY);
    assert!(kind(&tree, "/var/log/app.log").is_none(), "ghosts are skipped");
    let links = [kind(&tree, "/usr/share/a"), kind(&tree, "/usr/share/b")];
    let files = links.iter().filter(|k| matches!(k, Some(Kind::File(_)))).count();
    let hard = links.iter().filter(|k| matches!(k, Some(Kind::HardLink(_)))).count();
    assert_eq!((files, hard), (1, 1), "{links:?}");
}

#[test]
fn dotdot_path_is_refused_naming_package_and_entry() {
    let d = tempfile::tempdir().unwrap();
    let mut b = builder("evil");
    b.with_file_contents("x", FileOptions::new("/usr/../../etc/evil")).unwrap();
    let rpm = write(d.path(), &mut b);
    let err = format!("{:#}", add(&[&rpm]).unwrap_err());
    assert!(err.contains("evil-1.0-1.x86_64.rpm"), "{err}");
    assert!(err.contains("/usr/../../etc/evil"), "{err}");
    assert!(err.contains("`..`"), "{err}");
}

#[test]
fn file_under_a_symlink_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut b = builder("through");
    b.with_symlink(FileOptions::symlink("/opt/link", "/etc"))
        .unwrap()
        .with_file_contents("x", FileOptions::new("/opt/link/passwd"))
        .unwrap();
    let rpm = write(d.path(), &mut b);
    let err = format!("{:#}", add(&[&rpm]).unwrap_err());
    assert!(err.contains("through-1.0-1.x86_64.rpm"), "{err}");
    assert!(err.contains("/opt/link is a symlink"), "{err}");
    assert!(err.contains("/opt/link/passwd"), "{err}");
}

#[test]
fn conflicting_packages_are_named_identical_ones_are_fine() {
    let d = tempfile::tempdir().unwrap();
    let mut a = builder("a");
    a.with_file_contents("one", FileOptions::new("/etc/shared"))
        .unwrap()
        .with_file_contents("same", FileOptions::new("/etc/same"))
        .unwrap();
    let mut b = builder("b");
    b.with_file_contents("two", FileOptions::new("/etc/shared")).unwrap();
    let mut c = builder("c");
    c.with_file_contents("same", FileOptions::new("/etc/same")).unwrap();
    let (a, b, c) = (write(d.path(), &mut a), write(d.path(), &mut b), write(d.path(), &mut c));
    add(&[&a, &c]).unwrap();
    let err = format!("{:#}", add(&[&a, &b]).unwrap_err());
    assert!(err.contains("/etc/shared is in both"), "{err}");
    assert!(err.contains("a-1.0-1.x86_64.rpm") && err.contains("b-1.0-1.x86_64.rpm"), "{err}");
    assert!(err.contains("different content"), "{err}");
}

#[test]
fn truncated_and_corrupted_packages_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let mut b = builder("whole");
    b.with_file_contents(vec![7u8; 100_000], FileOptions::new("/usr/lib/data")).unwrap();
    let rpm = write(d.path(), &mut b);
    let bytes = std::fs::read(&rpm).unwrap();

    let cut = d.path().join("cut.rpm");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    let err = format!("{:#}", add(&[&cut]).unwrap_err());
    assert!(err.contains("cut.rpm") && err.contains("truncated"), "{err}");

    let head = d.path().join("head.rpm");
    std::fs::write(&head, &bytes[..300]).unwrap();
    let err = format!("{:#}", add(&[&head]).unwrap_err());
    assert!(err.contains("head.rpm"), "{err}");

    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 0xff;
    let bad = d.path().join("bad.rpm");
    std::fs::write(&bad, &flipped).unwrap();
    let err = format!("{:#}", add(&[&bad]).unwrap_err());
    assert!(err.contains("bad.rpm") && err.contains("corrupted"), "{err}");
}

#[test]
fn scriptlets_and_capabilities_are_reported_once() {
    let d = tempfile::tempdir().unwrap();
    let mut b = builder("scripts");
    b.with_file_contents("x", FileOptions::new("/usr/bin/ping").caps("cap_net_raw=ep").unwrap())
        .unwrap()
        .with_file_contents("y", FileOptions::new("/usr/bin/pong").caps("cap_net_admin=ep").unwrap())
        .unwrap()
        .pre_install_script("echo pre")
        .post_install_script("echo post");
    let rpm = write(d.path(), &mut b);
    let mut tree = Tree::new(0);
    let mut r = RpmInputs::new(&mut tree).unwrap();
    r.add(&rpm).unwrap();
    let w = &r.warnings;
    assert_eq!(w.iter().filter(|w| w.contains("scriptlets")).count(), 1, "{w:?}");
    assert_eq!(w.iter().filter(|w| w.contains("capabilities")).count(), 1, "{w:?}");
    let all = w.join("\n");
    assert!(all.contains("%pre, %post") && all.contains("/usr/bin/ping"), "{all}");
}

#[test]
fn v6_packages_with_every_compression_read_and_are_verified() {
    let d = tempfile::tempdir().unwrap();
    for (i, c) in [CompressionType::Gzip, CompressionType::Xz, CompressionType::Zstd, CompressionType::Bzip2]
        .into_iter()
        .enumerate()
    {
        let mut b = PackageBuilder::new(&format!("six{i}"), "1.0", "MIT", "x86_64", "v6");
        b.using_config(BuildConfig::v6().compression(c).source_date(1_700_000_000u32));
        b.with_file_contents(vec![3u8; 50_000], FileOptions::new("/usr/lib/data"))
            .unwrap()
            .with_file_contents("same", FileOptions::new("/usr/share/a").hardlink("x"))
            .unwrap()
            .with_file_contents("same", FileOptions::new("/usr/share/b").hardlink("x"))
            .unwrap();
        let rpm = write(d.path(), &mut b);
        let tree = add(&[&rpm]).unwrap_or_else(|e| panic!("{c}: {e:#}"));
        assert!(matches!(kind(&tree, "/usr/lib/data"), Some(Kind::File(_))), "{c}");
        let bytes = std::fs::read(&rpm).unwrap();
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n - 30] ^= 0x55;
        let bad = d.path().join(format!("bad{i}.rpm"));
        std::fs::write(&bad, &flipped).unwrap();
        let err = format!("{:#}", add(&[&bad]).unwrap_err());
        assert!(err.contains("corrupted"), "{c}: {err}");
    }
}

/// A package whose main header is patched by `patch(header_start, bytes)`; the
/// signature header is left alone, so only our checks or the crate's parser stand
/// between the patch and a panic.
fn patched_main_header(dir: &Path, patch: impl Fn(usize, &mut Vec<u8>)) -> PathBuf {
    let good = write(dir, builder("patched").with_file_contents("x", FileOptions::new("/x")).unwrap());
    let mut bytes = std::fs::read(&good).unwrap();
    let be = |b: &[u8], i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    let sig_end = 96 + 16 + be(&bytes, 96 + 8) * 16 + be(&bytes, 96 + 12);
    let main = sig_end.next_multiple_of(8);
    assert_eq!(bytes[main..main + 4], [0x8E, 0xAD, 0xE8, 0x01]);
    patch(main, &mut bytes);
    let path = dir.join("patched.rpm");
    std::fs::write(&path, bytes).unwrap();
    path
}

// Found by the `rpm` fuzz target: rpm 0.30 panicked (index out of range,
// header.rs:111) on an entry whose data offset lies past the data section.
#[test]
fn an_entry_pointing_past_the_header_data_is_refused_before_the_crate_parses_it() {
    let d = tempfile::tempdir().unwrap();
    let p = patched_main_header(d.path(), |main, b| {
        b[main + 16 + 8..main + 16 + 12].copy_from_slice(&0x8000u32.to_be_bytes())
    });
    let err = format!("{:#}", add(&[&p]).unwrap_err());
    assert!(err.ends_with("corrupted RPM package: entry 0 of its header points past its data"), "{err}");
}

// Found by the `rpm` fuzz target: rpm 0.30 reserved room for an entry's count of items
// before reading them (header.rs:866), 4 GiB for a count of 2^30.
#[test]
fn an_entry_counting_more_items_than_its_data_holds_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = patched_main_header(d.path(), |main, b| {
        b[main + 16 + 4..main + 16 + 8].copy_from_slice(&4u32.to_be_bytes()); // INT32
        b[main + 16 + 12..main + 16 + 16].copy_from_slice(&0x3D00_0003u32.to_be_bytes());
    });
    let err = format!("{:#}", add(&[&p]).unwrap_err());
    assert!(err.ends_with("corrupted RPM package: entry 0 of its header points past its data"), "{err}");
}

// rpm 0.30 sizes its read buffer from the header's counts (header.rs:76): 64 GiB here.
#[test]
fn a_header_claiming_absurd_counts_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = patched_main_header(d.path(), |main, b| b[main + 8..main + 12].copy_from_slice(&u32::MAX.to_be_bytes()));
    let err = format!("{:#}", add(&[&p]).unwrap_err());
    assert!(err.contains("not a readable RPM package: its header claims 4294967295 entries and "), "{err}");
    assert!(err.starts_with("RPM "), "{err}");
}
