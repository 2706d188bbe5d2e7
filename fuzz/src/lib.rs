//! Fuzz targets: one function per parser that reads bytes from outside, each taking
//! arbitrary bytes and calling the parser the way the product does. A target must
//! return, for every input, without panicking, hanging or taking absurd memory; where
//! a parser's result has a property worth checking (a round trip, a path that cannot
//! climb out of the root), the target asserts it, so a violation is a crash too.
//!
//! The same functions are run three ways:
//! - by AFL++ (`scripts/fuzz TARGET SECONDS`), coverage-guided, through
//!   `src/bin/afl.rs`;
//! - by `cargo test -p bundle-fuzz` (`tests/targets.rs`): every file of the committed
//!   seed corpus (`corpus/TARGET/`), then a bounded number of random mutations of it;
//! - by hand: `cargo run -p bundle-fuzz --example replay TARGET FILE` reruns one input.
//!
//! Adding a target (the pattern for `buildfile` and `cdi`): make the parser a function
//! of bytes or text reachable from here (a `pub` item of a library crate: `bundler` is
//! one, the runtime's pure parsers belong in `bundle-format`), write `fn NAME(data:
//! &[u8])` below that calls it as the product does and asserts what must hold of its
//! result, add it to [`TARGETS`], and commit a few small real inputs under
//! `corpus/NAME/`. `scripts/fuzz` and the tests pick it up from the table.

pub mod mutate;

use bundle_format::{BindSpec, Bundle, Metadata, Trailer, TRAILER_LEN};
use bundle_squashfs::{DirCookie, Image, Inode, Kind};
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Component, Path};

/// A fuzz target: what it parses, and the function that takes the bytes.
pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, by the name `scripts/fuzz` and the corpus directories use.
pub const TARGETS: &[Target] = &[
    Target { name: "trailer", what: "the 128-byte trailer, and opening a bundle from it", run: trailer },
    Target { name: "metadata", what: "the JSON metadata, inside a bundle whose digests match", run: metadata },
    Target {
        name: "squashfs",
        what: "a squashfs image: open, walk, look up, read, readdir with cookies",
        run: squashfs,
    },
    Target { name: "rpm", what: "an RPM package, added to a build as `bundle build x.rpm` does", run: rpm },
    Target { name: "filelist", what: "a `--files` list: lines, destinations, the tree they make", run: filelist },
    Target { name: "bind", what: "bind specs, as `--bundle-bind` and `BUNDLE_BIND` give them", run: bind },
    Target { name: "buildfile", what: "a build file (bundle.toml), as `bundle build -f` reads it", run: buildfile },
    Target { name: "cdi", what: "the YAML/JSON reader CDI spec files (and the metadata) are read with", run: cdi },
];

/// Targets named in issue 11 whose parsers are not on this branch yet (see the module
/// documentation for how to add them).
pub const PENDING: &[(&str, &str)] = &[];

/// A build file, as `bundle build -f` parses it (the text must be UTF-8 to be TOML).
pub fn buildfile(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = bundler::buildfile::parse(text);
    }
}

/// A CDI spec file's text through the reader the runtime reads it with, as YAML and as
/// JSON (which spec is which depends on its file name). What the runtime then takes
/// from the tree is a walk over it; the reader is what meets the outside bytes.
pub fn cdi(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = bundle_format::tree::parse(&text);
    let _ = bundle_format::tree::parse_json(&text);
}

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

pub fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name).collect()
}

/// An anonymous in-memory file holding `data`: the readers take files, and a memfd
/// costs no disk and no name to clean up.
pub fn memfile(data: &[u8]) -> File {
    // SAFETY: memfd_create with a NUL-terminated name and no flags that matter here;
    // the fd it returns is new and owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"bundle-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: see above.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(data).expect("writing to a memfd");
    f
}

/// The last 128 bytes as a trailer of a file of the input's length, then the whole
/// input opened as a bundle (which reads the metadata the trailer points at).
pub fn trailer(data: &[u8]) {
    if let Some(tail) = data.len().checked_sub(TRAILER_LEN).map(|at| &data[at..]) {
        let raw: &[u8; TRAILER_LEN] = tail.try_into().expect("128 bytes");
        if let Ok(t) = Trailer::decode(raw, data.len() as u64) {
            // What decodes re-encodes to the same bytes (the reserved field aside).
            let again = t.encode();
            assert_eq!(again[..112], raw[..112], "trailer round trip");
            assert_eq!(again[120..], raw[120..], "trailer round trip");
        }
    }
    let _ = Bundle::from_file(memfile(data));
}

/// The input as the metadata of a bundle with an empty image and a trailer whose
/// digest matches, so that the JSON parser sees every input; what parses must survive
/// a round trip through `to_json`.
pub fn metadata(data: &[u8]) {
    if let Ok(m) = Metadata::from_json(data) {
        let again = Metadata::from_json(&m.to_json()).expect("metadata that was read can be written and read back");
        assert_eq!(again, m, "metadata round trip");
    }
    let digest = sha256(data);
    let t = Trailer {
        version: bundle_format::FORMAT_VERSION,
        image_offset: 0,
        image_size: 0,
        metadata_offset: 0,
        metadata_size: data.len() as u64,
        image_sha256: sha256(b""),
        metadata_sha256: digest,
        signatures_size: 0,
    };
    let mut file = data.to_vec();
    file.extend_from_slice(&t.encode());
    let _ = Bundle::from_file(memfile(&file));
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// How much of a hostile image one run reads: an image may legitimately hold a
/// 100 GiB sparse file or a million entries, which is no bug, only slow to fuzz.
struct Budget {
    entries: u32,
    pieces: u32,
}

impl Budget {
    const ENTRIES: u32 = 4096;
    const PIECES: u32 = 2048;
}

/// A squashfs image from the input's first byte: opened, walked, every path looked up
/// again, every file read (within a budget), every directory listed from each of its
/// cookies, and a few cookies and names made up from the input.
pub fn squashfs(data: &[u8]) {
    let file = memfile(data);
    let Ok(image) = Image::open(&file, 0) else { return };
    let Ok(root) = image.root_inode() else { return };
    let mut budget = Budget { entries: Budget::ENTRIES, pieces: Budget::PIECES };
    readdir(&image, &root, data);
    let stop = || std::io::Error::other("budget spent");
    let _ = image.walk(|path, inode| {
        budget.entries = budget.entries.checked_sub(1).ok_or_else(stop)?;
        // A lookup scans its directory's listing: every 16th path keeps a run fast.
        if budget.entries.is_multiple_of(16) {
            let _ = image.lookup_path(path);
        }
        match inode.kind {
            Kind::File => read_file(&image, inode, &mut budget.pieces),
            Kind::Dir => readdir(&image, inode, data),
            _ => {}
        }
        if budget.pieces == 0 {
            return Err(stop());
        }
        Ok(())
    });
    // Names that are not there, and paths through files.
    let _ = image.lookup_path(Path::new("/does/not/exist"));
    let _ = image.lookup(&root, data.get(..data.len().min(300)).unwrap_or_default());
}

fn read_file(image: &Image, inode: &Inode, pieces: &mut u32) {
    let mut pos = 0u64;
    while *pieces > 0 {
        *pieces -= 1;
        let piece = match image.piece_at(inode, pos) {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => break,
        };
        assert!(!piece.is_empty(), "piece_at gave an empty piece before the end of the file");
        if piece.is_hole() {
            assert!(piece.iter().all(|&b| b == 0), "a hole reads as zeros");
            match image.next_data(inode, pos) {
                Ok(Some(next)) => {
                    assert!(next >= pos, "SEEK_DATA went backwards");
                    pos = next.max(pos + piece.len() as u64);
                }
                Ok(None) => break,
                Err(_) => break,
            }
        } else {
            pos += piece.len() as u64;
        }
    }
    let mut buf = [0u8; 64];
    for at in [0, inode.size / 2, inode.size.saturating_sub(1), inode.size, u64::MAX - 10] {
        if let Ok(n) = image.read_at(inode, at, &mut buf) {
            let most = inode.size.saturating_sub(at).min(buf.len() as u64);
            assert!(n as u64 <= most, "read_at read past the end of the file");
        }
        if let Ok(h) = image.next_hole(inode, at) {
            assert!(h <= inode.size, "SEEK_HOLE past the end of the file");
        }
    }
}

/// Lists a directory once, then again from each cookie it gave (up to 16), then from
/// cookies made up from the input.
fn readdir(image: &Image, dir: &Inode, data: &[u8]) {
    let Ok(entries) = image.entries(dir, DirCookie::default()) else { return };
    let cookies: Vec<DirCookie> = entries.take(16).filter_map(|e| e.ok().map(|(_, c)| c)).collect();
    for c in cookies
        .iter()
        .copied()
        .chain(data.chunks_exact(8).take(4).map(|b| DirCookie(u64::from_le_bytes(b.try_into().expect("8 bytes")))))
    {
        if let Ok(mut e) = image.entries(dir, c) {
            let _ = e.next();
        }
    }
}

/// An RPM package, added to a build exactly as `bundle build x.rpm` adds one: header
/// digests, file list, hard links, the payload streamed into a staging directory. The
/// code under test takes a path: the input's memfd, by its `/proc/self/fd` name, so
/// that nothing is left on disk whatever happens.
pub fn rpm(data: &[u8]) {
    use std::os::fd::AsRawFd;
    let file = memfile(data);
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let mut tree = bundler::tree::Tree::new(0);
    let Ok(mut inputs) = bundler::rpm::RpmInputs::new(&mut tree) else { return };
    let _ = inputs.add(&path);
}

/// A file list, as `bundle build --files LIST` reads it: every destination normalised
/// (never holding `..`) and put into a tree.
pub fn filelist(data: &[u8]) {
    use bundler::tree::{Entry, ImagePath, Kind, Source, Tree};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut tree = Tree::new(0);
    for line in bundler::inputs::parse_list(text) {
        let dest = line.dest.unwrap_or(line.src);
        let Ok(path) = ImagePath::new(dest) else { continue };
        assert!(
            path.as_path().components().all(|c| matches!(c, Component::Normal(_))),
            "ImagePath::new({dest:?}) kept a component other than a name: {:?}",
            path.as_path()
        );
        let kind = if line.src.ends_with('/') { Kind::Dir } else { Kind::File(Source::Host(line.src.into())) };
        let _ = tree.insert(path, Entry { kind, mode: 0o644, uid: 0, gid: 0, mtime: 0 });
    }
}

/// Bind specs: the input as one spec, and as `BUNDLE_BIND`'s comma-separated list.
pub fn bind(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for spec in std::iter::once(text).chain(text.split(',').map(str::trim)) {
        if let Ok(b) = BindSpec::parse(spec) {
            assert!(b.src.starts_with('/') && b.dst.starts_with('/'), "a relative bind was accepted: {spec:?}");
            assert!(
                !Path::new(&b.dst).components().any(|c| c == Component::ParentDir),
                "a bind destination with `..` was accepted: {spec:?}"
            );
        }
    }
}
