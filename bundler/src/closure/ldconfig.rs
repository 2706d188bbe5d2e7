//! ld.so's configuration: `ld.so.conf` (with `include` globs) and the binary
//! `ld.so.cache`, read from the host and written for the image.
//!
//! Why write one: RPM packages run `ldconfig` in `%post`, and scriptlets are not run; and
//! the loader a bundle gets from the build host may not search where the package put its
//! libraries (Debian's ld.so has no `/usr/lib64` among its default directories). A cache
//! generated for the image's own files makes the bundle find its libraries as an
//! installed system would, after RPATH/RUNPATH and before the default directories.

use super::elf::Abi;
use super::view::{glob, View};
use std::path::{Path, PathBuf};

/// Directories named by an `ld.so.conf` and the files it includes, in order. A missing
/// file gives nothing. Syntax as ldconfig reads it: `#` comments, `include PATTERN...`
/// (relative patterns from the including file's directory), `hwcap` lines (ignored),
/// otherwise one directory a line (a legacy `=TYPE` suffix is dropped).
pub fn parse_conf(view: &dyn View, path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    parse_conf_into(view, path, &mut out, 0);
    out
}

fn parse_conf_into(view: &dyn View, path: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    // Includes can loop (a glob matching its own file); ldconfig has no limit, we do.
    if depth > 16 {
        return;
    }
    let Some(text) = view.read(path) else { return };
    let base = path.parent().unwrap_or(Path::new("/"));
    for line in String::from_utf8_lossy(&text).lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(rest) = keyword(line, "include") {
            for pattern in rest.split_whitespace() {
                for inc in glob(view, &base.join(pattern)) {
                    parse_conf_into(view, &inc, out, depth + 1);
                }
            }
        } else if line.is_empty() || keyword(line, "hwcap").is_some() {
            continue;
        } else {
            let dir = line.split('=').next().unwrap_or(line).trim_end_matches('/');
            let dir = PathBuf::from(if dir.is_empty() { "/" } else { dir });
            if dir.is_absolute() && !out.contains(&dir) {
                out.push(dir);
            }
        }
    }
}

fn keyword<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(word)?;
    rest.starts_with([' ', '\t']).then(|| rest.trim_start())
}

/// One line of `ld.so.cache`: a library name and the path it is loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub flags: i32,
    pub name: String,
    pub path: String,
}

const MAGIC_NEW: &[u8] = b"glibc-ld.so.cache1.1";
const MAGIC_OLD: &[u8] = b"ld.so-1.7.0";
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 24;
const OLD_ENTRY_LEN: usize = 12;
/// `cache_file_new.flags`: little-endian host.
const FLAGS_LITTLE_ENDIAN: u8 = 2;

/// The `flags` value that glibc's ld.so requires of an entry for objects of this ABI
/// (`FLAG_ELF_LIBC6` plus the architecture bits); `None` for machines not handled.
pub fn cache_flags(abi: Abi) -> Option<i32> {
    use goblin::elf::header::*;
    const LIBC6: i32 = 0x0003;
    Some(match (abi.machine, abi.class64) {
        (EM_X86_64, true) => LIBC6 | 0x0300,
        (EM_X86_64, false) => LIBC6 | 0x0800,
        (EM_386, false) => LIBC6,
        (EM_AARCH64, true) => LIBC6 | 0x0a00,
        (EM_PPC64, true) => LIBC6 | 0x0500,
        (EM_S390, true) => LIBC6 | 0x0400,
        _ => return None,
    })
}

/// Reads the new format (alone, or after an old-format table). Offsets into the string
/// table count from the start of the new header.
pub fn read_cache(bytes: &[u8]) -> Option<Vec<CacheEntry>> {
    let start = if bytes.starts_with(MAGIC_NEW) {
        0
    } else if bytes.starts_with(MAGIC_OLD) {
        let n = u32_at(bytes, MAGIC_OLD.len())? as usize;
        (MAGIC_OLD.len() + 4 + n * OLD_ENTRY_LEN).next_multiple_of(8)
    } else {
        return None;
    };
    let new = bytes.get(start..)?;
    if !new.starts_with(MAGIC_NEW) {
        return None;
    }
    let n = u32_at(new, 20)? as usize;
    (0..n)
        .map(|i| {
            let at = HEADER_LEN + i * ENTRY_LEN;
            Some(CacheEntry {
                flags: u32_at(new, at)? as i32,
                name: c_string(new, u32_at(new, at + 4)? as usize)?,
                path: c_string(new, u32_at(new, at + 8)? as usize)?,
            })
        })
        .collect()
}

/// Writes a new-format cache (what glibc ≥ 2.32 writes and every glibc since 2.2 reads).
/// Entries are sorted as ld.so's binary search expects: names in descending
/// [`libcmp`] order.
pub fn write_cache(entries: &[CacheEntry]) -> Vec<u8> {
    let mut sorted: Vec<&CacheEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| libcmp(&b.name, &a.name).then(b.flags.cmp(&a.flags)));
    let strings_at = HEADER_LEN + sorted.len() * ENTRY_LEN;
    let mut strings = Vec::new();
    let mut table = Vec::with_capacity(sorted.len() * ENTRY_LEN);
    for e in &sorted {
        let key = strings_at + strings.len();
        strings.extend_from_slice(e.name.as_bytes());
        strings.push(0);
        let value = strings_at + strings.len();
        strings.extend_from_slice(e.path.as_bytes());
        strings.push(0);
        table.extend_from_slice(&e.flags.to_le_bytes());
        table.extend_from_slice(&(key as u32).to_le_bytes());
        table.extend_from_slice(&(value as u32).to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes()); // osversion, unused
        table.extend_from_slice(&0u64.to_le_bytes()); // hwcap: none
    }
    let mut out = Vec::with_capacity(strings_at + strings.len());
    out.extend_from_slice(MAGIC_NEW);
    out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.push(FLAGS_LITTLE_ENDIAN);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&0u32.to_le_bytes()); // extension_offset: no extensions
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(&table);
    out.extend_from_slice(&strings);
    out
}

/// glibc's `_dl_cache_libcmp`: runs of digits compare as numbers, and a digit sorts
/// after any other character.
pub fn libcmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        let (da, db) = (a[i].is_ascii_digit(), j < b.len() && b[j].is_ascii_digit());
        if da && db {
            let (va, ni) = number(a, i);
            let (vb, nj) = number(b, j);
            if va != vb {
                return va.cmp(&vb);
            }
            (i, j) = (ni, nj);
        } else if da {
            return Greater;
        } else if db {
            return Less;
        } else if j >= b.len() || a[i] != b[j] {
            return a[i].cmp(b.get(j).unwrap_or(&0));
        } else {
            (i, j) = (i + 1, j + 1);
        }
    }
    if j < b.len() {
        Less
    } else {
        Equal
    }
}

fn number(s: &[u8], mut i: usize) -> (u64, usize) {
    let mut v = 0u64;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.saturating_mul(10).saturating_add(u64::from(s[i] - b'0'));
        i += 1;
    }
    (v, i)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn c_string(b: &[u8], at: usize) -> Option<String> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::view::HostView;
    use std::cmp::Ordering::*;
    use std::fs;

    #[test]
    fn conf_with_include_globs_comments_and_hwcap() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("etc/ld.so.conf.d")).unwrap();
        fs::write(
            r.join("etc/ld.so.conf"),
            "# top\ninclude /etc/ld.so.conf.d/*.conf\n/opt/first/lib # trailing\nhwcap 0 nosegneg\n\n/usr/lib64/legacy=ELF\n",
        )
        .unwrap();
        fs::write(r.join("etc/ld.so.conf.d/b.conf"), "/opt/b\ninclude sub.inc\n").unwrap();
        fs::write(r.join("etc/ld.so.conf.d/a.conf"), "/opt/a/\n").unwrap();
        fs::write(r.join("etc/ld.so.conf.d/sub.inc"), "/opt/sub\n").unwrap();
        fs::write(r.join("etc/ld.so.conf.d/ignored.txt"), "/nope\n").unwrap();
        let view = HostView { root: r.to_path_buf() };
        let dirs = parse_conf(&view, Path::new("/etc/ld.so.conf"));
        let want: Vec<PathBuf> =
            ["/opt/a", "/opt/b", "/opt/sub", "/opt/first/lib", "/usr/lib64/legacy"].iter().map(PathBuf::from).collect();
        assert_eq!(dirs, want);
        assert!(parse_conf(&view, Path::new("/etc/missing.conf")).is_empty());
    }

    #[test]
    fn libcmp_orders_numbers_numerically() {
        assert_eq!(libcmp("libfoo.so.10", "libfoo.so.9"), Greater);
        assert_eq!(libcmp("libz.so.1", "libz.so.1"), Equal);
        assert_eq!(libcmp("libz.so", "libz.so.1"), Less);
        assert_eq!(libcmp("lib1", "liba"), Greater);
        assert_eq!(libcmp("libc.so.6", "libcap.so.2"), Less);
    }

    #[test]
    fn cache_round_trip_sorted_for_binary_search() {
        let e = |n: &str| CacheEntry { flags: 0x303, name: n.into(), path: format!("/usr/lib64/{n}") };
        let entries = vec![e("libc.so.6"), e("libz.so.1"), e("libm.so.6"), e("libfoo.so.10")];
        let bytes = write_cache(&entries);
        let back = read_cache(&bytes).unwrap();
        let names: Vec<_> = back.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["libz.so.1", "libm.so.6", "libfoo.so.10", "libc.so.6"]);
        assert_eq!(back[0].path, "/usr/lib64/libz.so.1");
    }

    /// The host's cache, written by its ldconfig, must read back and be in the order our
    /// comparison gives: that checks both the reader and `libcmp` against glibc's.
    #[test]
    fn host_cache_reads_and_agrees_with_libcmp() {
        let Ok(bytes) = fs::read("/etc/ld.so.cache") else { return };
        let entries = read_cache(&bytes).expect("host ld.so.cache parses");
        assert!(!entries.is_empty());
        for w in entries.windows(2) {
            assert_ne!(libcmp(&w[0].name, &w[1].name), Less, "{w:?}");
        }
        assert!(entries.iter().all(|e| e.path.starts_with('/')));
    }
}
