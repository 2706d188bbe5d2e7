//! Reading a finished bundle without running it: `inspect`, `verify`, `list`, `extract`.

use crate::pipeline::human;
use crate::sign::{check_signatures, read_allowed_signers};
use anyhow::{bail, Context, Result};
use bundle_format::signatures::parse_region;
use bundle_format::Bundle;
use bundle_squashfs::{extract, Chunks, Image, Inode, Kind};
use std::io::Write;
use std::path::Path;

pub fn open(path: &Path) -> Result<Bundle> {
    Bundle::open(path).with_context(|| format!("{}", path.display()))
}

pub fn inspect(path: &Path, json: bool) -> Result<()> {
    let b = open(path)?;
    if json {
        print!("{}", String::from_utf8_lossy(&b.metadata.to_json()));
        return Ok(());
    }
    let m = &b.metadata;
    let t = &b.trailer;
    println!("bundle:      {}", path.display());
    println!("format:      version {}, built by {}", t.version, m.bundler);
    println!("created:     {} ({} seconds since the epoch)", utc_date(m.created), m.created);
    println!("entrypoint:  {}", if m.entrypoint.is_empty() { "(none)".into() } else { m.entrypoint.join(" ") });
    println!(
        "image:       {} at offset {}, {} entries, {} level {}, {} KiB blocks",
        human(t.image_size),
        t.image_offset,
        m.image.entries,
        m.image.compression,
        m.image.level,
        m.image.block_size / 1024
    );
    println!("image sha256: {}", b.image_digest());
    println!("signed by:   {}", signers_line(&b));
    for (k, v) in &m.env {
        println!("env:         {k}={v}");
    }
    for (k, v) in &m.labels {
        println!("label:       {k}={v}");
    }
    for i in &m.inputs {
        let id = i.nevra.as_deref().unwrap_or(&i.path);
        let sha = i.sha256.as_deref().map(|s| format!(" sha256:{s}")).unwrap_or_default();
        let name = i.reference.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
        let digest = i.digest.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
        println!("input:       {} {id}{name}{digest}{sha}", i.kind);
    }
    if let Some(w) = &m.workdir {
        println!("workdir:     {w} (the image's; the application starts in the caller's directory)");
    }
    for p in &m.provided {
        println!(
            "provided:    {} from {}{}",
            p.path,
            p.source,
            if p.reason.is_empty() { String::new() } else { format!(" ({})", p.reason) }
        );
    }
    Ok(())
}

/// `2026-12-01 21:55:03 UTC`: seconds since the epoch as a UTC date and time.
fn utc_date(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// Seconds since the epoch as (year, month, day, hour, minute, second) in UTC, by the
/// civil-from-days algorithm (H. Hinnant, proleptic Gregorian), to need no date crate
/// for `inspect` and the SBOM.
pub fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Every digest (stub, chunk table, each chunk, image, metadata) and every signature;
/// with `allowed`, at least one signature must be by a key it lists.
pub fn verify(path: &Path, allowed: Option<&Path>) -> Result<()> {
    let b = open(path)?;
    b.verify_all().with_context(|| format!("{}", path.display()))?;
    let allowed = allowed.map(|a| read_allowed_signers(a).map(|s| (a, s))).transpose()?;
    let signers = check_signatures(path, &b, allowed.as_ref().map(|(_, s)| s))?;
    if let Some((file, _)) = &allowed {
        if !signers.iter().any(|s| s.principals.is_some()) {
            let what = if signers.is_empty() { "not signed" } else { "signed, but by no key" };
            bail!("{}: {what} in {}", path.display(), file.display());
        }
    }
    println!("{}: ok (image sha256 {}; digests of stub, chunks and metadata ok)", path.display(), b.image_digest());
    for s in &signers {
        match &s.principals {
            Some(p) => println!("signed by {p} ({})", s.key),
            None if allowed.is_some() => println!("signed by {} (not in the allowed signers)", s.key),
            None => println!("signed by {}", s.key),
        }
    }
    if signers.is_empty() {
        println!("not signed");
    }
    Ok(())
}

/// Signature `n` (from 1) as it is in the file.
pub fn signature(path: &Path, n: usize) -> Result<()> {
    let b = open(path)?;
    let sigs = parse_region(&b.signatures).with_context(|| format!("{}", path.display()))?;
    let Some(s) = n.checked_sub(1).and_then(|i| sigs.get(i)) else {
        bail!("{}: has {} signatures, not a signature {n}", path.display(), sigs.len());
    };
    print!("{}", s.pem);
    Ok(())
}

/// The signers as `inspect` shows them: keys only, unchecked (`verify` checks).
fn signers_line(b: &Bundle) -> String {
    match parse_region(&b.signatures) {
        Ok(sigs) if sigs.is_empty() => "(none)".into(),
        Ok(sigs) => sigs.iter().map(|s| format!("{} {}", s.key_type(), s.fingerprint())).collect::<Vec<_>>().join(", "),
        Err(e) => format!("({e})"),
    }
}

/// One line per entry, like `tar tv`: mode, owner, size, path, link target. A damaged
/// image is an error, never a short listing: the listing is printed once it is whole
/// (about 60 bytes an entry).
pub fn list(path: &Path) -> Result<()> {
    let b = open(path)?;
    let image = open_image(&b, path)?;
    let root = image.root_inode().with_context(|| format!("{}", path.display()))?;
    let mut out = list_line(Path::new("/"), &root);
    image
        .walk(|p, n| {
            out.push_str(&list_line(p, n));
            Ok(())
        })
        .with_context(|| format!("cannot list {}", path.display()))?;
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing the listing")
}

fn list_line(p: &Path, n: &Inode) -> String {
    let (t, size, link) = match n.kind {
        Kind::Dir => ('d', 0, String::new()),
        Kind::File => ('-', n.size, String::new()),
        Kind::Symlink => ('l', 0, format!(" -> {}", escape(n.link_target().unwrap_or_default()))),
        Kind::CharDevice => ('c', 0, String::new()),
        Kind::BlockDevice => ('b', 0, String::new()),
        Kind::Fifo => ('p', 0, String::new()),
        Kind::Socket => ('s', 0, String::new()),
    };
    let name = escape(p.as_os_str().as_encoded_bytes());
    format!("{t}{} {:>5}/{:<5} {size:>10} {name}{link}\n", rwx(n.mode), n.uid, n.gid)
}

/// A name as `ls -b` shows it, so that one entry is one line and a name cannot pass
/// for something else on the terminal: `\n`, `\t`, `\\` and C-style escapes for the
/// other control characters, `\ooo` (octal) for bytes that are not UTF-8; printable
/// text, other scripts included, as it is.
pub fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        out.push_str(&format!("\\{byte:03o}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\{byte:03o}"));
        }
    }
    out
}

pub fn extract(path: &Path, dir: &Path) -> Result<()> {
    let b = open(path)?;
    let image = open_image(&b, path)?;
    let done = extract::to_dir(&image, dir).with_context(|| format!("cannot extract {}", path.display()))?;
    eprintln!("bundle: extracted {} entries into {}", done.entries + 1, dir.display());
    if done.skipped > 0 {
        eprintln!("bundle: left out {} device nodes, fifos and sockets", done.skipped);
    }
    Ok(())
}

/// The image, each chunk checked against the chunk table (versions 2 and 3) as it is read.
pub fn open_image(b: &Bundle, path: &Path) -> Result<Image> {
    let offset = b.trailer.image_offset;
    let image = match b.chunk_table().with_context(|| format!("{}", path.display()))? {
        None => Image::open(&b.file, offset),
        Some(table) => {
            let (size, image_size) = (table.chunk_size(), table.image_size());
            let check = Box::new(move |i: u64, bytes: &[u8]| table.matches(i, bytes));
            Image::open_verified(&b.file, offset, Chunks { size, image_size, check })
        }
    };
    image.with_context(|| format!("{}", path.display()))
}

fn rwx(mode: u16) -> String {
    let bit = |m: u16, c: char| if mode & m != 0 { c } else { '-' };
    let x = |m: u16, special: u16, s: char| match (mode & m != 0, mode & special != 0) {
        (true, true) => s,
        (false, true) => s.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        x(0o100, 0o4000, 's'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        x(0o010, 0o2000, 's'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        x(0o001, 0o1000, 't'),
    ]
    .iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_as_ls_b_does() {
        assert_eq!(escape(b"/etc/passwd"), "/etc/passwd");
        assert_eq!(escape(b"/a\nb"), "/a\\nb");
        assert_eq!(escape(b"tab\there\rcr"), "tab\\there\\rcr");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape(b"esc\x1b[31m"), "esc\\033[31m");
        assert_eq!(escape(b"bad\xff\xfe"), "bad\\377\\376");
        assert_eq!(escape("caf\u{e9} \u{4e2d}".as_bytes()), "caf\u{e9} \u{4e2d}");
        // A C1 control (U+009B, CSI) is two bytes of UTF-8, both escaped.
        assert_eq!(escape("x\u{9b}y".as_bytes()), "x\\302\\233y");
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_796_162_808), "2026-12-01 22:06:48 UTC");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
