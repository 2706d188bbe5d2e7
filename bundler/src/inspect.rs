//! Reading a finished bundle without running it: `inspect`, `verify`, `list`, `extract`.

use crate::pipeline::human;
use anyhow::{Context, Result};
use backhand::InnerNode;
use bundle_format::{extract, Bundle, Image};
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
    println!("created:     {} (seconds since the epoch)", m.created);
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
    for (k, v) in &m.env {
        println!("env:         {k}={v}");
    }
    for (k, v) in &m.labels {
        println!("label:       {k}={v}");
    }
    for i in &m.inputs {
        let id = i.nevra.as_deref().unwrap_or(&i.path);
        let sha = i.sha256.as_deref().map(|s| format!(" sha256:{s}")).unwrap_or_default();
        println!("input:       {} {id}{sha}", i.kind);
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

pub fn verify(path: &Path) -> Result<()> {
    let b = open(path)?;
    b.verify_image().with_context(|| format!("{}", path.display()))?;
    println!("{}: ok (image sha256 {}, metadata sha256 ok)", path.display(), b.image_digest());
    Ok(())
}

/// One line per entry, like `tar tv`: mode, owner, size, path, link target.
pub fn list(path: &Path) -> Result<()> {
    let b = open(path)?;
    let image = Image::open(&b.file, b.trailer.image_offset).with_context(|| format!("{}", path.display()))?;
    let mut out = String::new();
    for n in &image.nodes {
        let (t, size, link) = match &n.inner {
            InnerNode::Dir(_) => ('d', 0, String::new()),
            InnerNode::File(f) => ('-', f.file_len() as u64, String::new()),
            InnerNode::Symlink(l) => ('l', 0, format!(" -> {}", l.link.display())),
            InnerNode::CharacterDevice(_) => ('c', 0, String::new()),
            InnerNode::BlockDevice(_) => ('b', 0, String::new()),
            InnerNode::NamedPipe => ('p', 0, String::new()),
            InnerNode::Socket => ('s', 0, String::new()),
        };
        let h = &n.header;
        out.push_str(&format!(
            "{t}{} {:>5}/{:<5} {size:>10} {}{link}\n",
            rwx(h.permissions),
            h.uid,
            h.gid,
            n.fullpath.display()
        ));
    }
    print!("{out}");
    Ok(())
}

pub fn extract(path: &Path, dir: &Path) -> Result<()> {
    let b = open(path)?;
    let image = Image::open(&b.file, b.trailer.image_offset).with_context(|| format!("{}", path.display()))?;
    extract::to_dir(&image, dir).with_context(|| format!("cannot extract {}", path.display()))?;
    eprintln!("bundle: extracted {} entries into {}", image.nodes.len(), dir.display());
    Ok(())
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
