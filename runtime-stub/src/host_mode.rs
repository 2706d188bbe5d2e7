//! host mode: for hosts where no namespace can be made (user namespaces disabled or
//! limited to zero, an AppArmor restriction, a seccomp filter that forbids `unshare`).
//!
//! The image is unpacked into extract mode's cache, and the entrypoint is started
//! through the image's own dynamic loader with the image's library directories, as
//! exodus does: `TREE/lib64/ld-linux-x86-64.so.2 --library-path TREE/lib64:… TREE/usr/bin/app`.
//! So the program and every library it loads come from the image; `#!` scripts run
//! with the image's interpreter; static programs are exec'd as they are.
//!
//! What it cannot do: absolute paths the program opens itself (`/usr/share/...`, a
//! RUNPATH of `/opt/app/lib`, `/etc/...`) are the host's, not the image's; programs that
//! exec other programs by absolute path run the host's (or fail); `/proc/self/exe` is
//! the loader. `docs/runtime.md` says so.

use crate::fail::{Error, Result};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// Where a loader finds libraries when nothing else says: the first that exist.
const LIBRARY_DIRS: [&str; 8] = [
    "/lib64",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
    "/usr/local/lib64",
    "/usr/local/lib",
];
/// Where a bare command name is looked for, in the image.
const BIN_DIRS: [&str; 6] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"];
/// Symlinks followed while resolving one path, as the kernel allows.
const MAX_LINKS: usize = 40;

/// The command that runs `argv` (image paths) from the unpacked `tree` without a
/// namespace: the loader's command line, or the program itself when it is static.
pub fn command(tree: &Path, argv: &[OsString]) -> Result<Vec<OsString>> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error("nothing to run".into()));
    };
    let (program, mut leading) = script_interpreter(tree, &find_program(tree, program)?)?;
    let real = resolve(tree, &program)?;
    let mut cmd = Vec::new();
    match elf_interpreter(&real)? {
        Some(interp) => {
            let loader = resolve(tree, Path::new(OsStr::from_bytes(&interp)))?;
            cmd.push(loader.into_os_string());
            cmd.push("--library-path".into());
            cmd.push(library_path(tree));
            cmd.push(real.into_os_string());
        }
        None => cmd.push(real.into_os_string()),
    }
    cmd.append(&mut leading);
    cmd.extend(args.iter().cloned());
    Ok(cmd)
}

/// An image path for `name`: absolute as given, else the first of the image's bin
/// directories that has it.
fn find_program(tree: &Path, name: &OsStr) -> Result<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    BIN_DIRS
        .iter()
        .map(|d| Path::new(d).join(p))
        .find(|c| resolve(tree, c).is_ok_and(|r| r.is_file()))
        .ok_or_else(|| Error(format!("{} is not in the image's {}", p.display(), BIN_DIRS.join(", "))))
}

/// For a `#!` script: its interpreter (an image path) and the arguments that go before
/// the caller's (the `#!` line's argument, then the script's host path). For anything
/// else, the program itself and nothing.
fn script_interpreter(tree: &Path, program: &Path) -> Result<(PathBuf, Vec<OsString>)> {
    let real = resolve(tree, program)?;
    let mut head = [0u8; 256];
    let n = fs::File::open(&real)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| Error(format!("cannot read {}: {e}", real.display())))?;
    let Some(line) = head[..n].strip_prefix(b"#!") else { return Ok((program.to_path_buf(), Vec::new())) };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.trim().splitn(2, [' ', '\t']);
    let interp = words
        .next()
        .filter(|w| w.starts_with('/'))
        .ok_or_else(|| Error(format!("{}: the #! line names no absolute interpreter", program.display())))?;
    let mut leading: Vec<OsString> =
        words.next().map(|a| a.trim()).filter(|a| !a.is_empty()).map(OsString::from).into_iter().collect();
    leading.push(real.into_os_string());
    Ok((PathBuf::from(interp), leading))
}

/// The library path: the image's `/etc/ld.so.conf` (with its includes), then the usual
/// directories, those the image has.
fn library_path(tree: &Path) -> OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |d: &Path| {
        if let Ok(real) = resolve(tree, d) {
            if real.is_dir() && !dirs.contains(&real) {
                dirs.push(real);
            }
        }
    };
    for d in ld_so_conf(tree, Path::new("/etc/ld.so.conf"), 0) {
        add(&d);
    }
    for d in LIBRARY_DIRS {
        add(Path::new(d));
    }
    let joined: Vec<Vec<u8>> = dirs.into_iter().map(|d| d.into_os_string().into_vec()).collect();
    OsString::from_vec(joined.join(&b':'))
}

/// The directories an `ld.so.conf` of the image lists, following `include` lines (two
/// levels, as deep as distributions go).
fn ld_so_conf(tree: &Path, conf: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(text) = resolve(tree, conf).and_then(|p| fs::read_to_string(p).map_err(|e| Error(e.to_string()))) else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
        if let Some(pattern) = line.strip_prefix("include").map(str::trim) {
            if depth < 2 {
                for file in glob_conf(tree, pattern) {
                    dirs.extend(ld_so_conf(tree, &file, depth + 1));
                }
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
    dirs
}

/// `include /etc/ld.so.conf.d/*.conf`: the one shape of glob distributions use.
fn glob_conf(tree: &Path, pattern: &str) -> Vec<PathBuf> {
    let p = Path::new(pattern);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(OsStr::to_str)) else { return Vec::new() };
    let (prefix, suffix) = name.split_once('*').unwrap_or((name, ""));
    let Ok(real) = resolve(tree, dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = fs::read_dir(real)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len())
                .then(|| dir.join(n))
        })
        .collect();
    files.sort();
    files
}

/// The `PT_INTERP` of an ELF file (`None` for a static program). Only what the loader
/// needs is read: the header and the program headers.
fn elf_interpreter(path: &Path) -> Result<Option<Vec<u8>>> {
    const PHDR_SIZE: usize = 56;
    const PT_INTERP: u32 = 3;
    let bad = |what: &str| Error(format!("{}: {what}", path.display()));
    let file = fs::File::open(path).map_err(|e| bad(&format!("cannot read it: {e}")))?;
    let read = |len: usize, at: u64| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at).map_err(|_| bad("a truncated ELF program"))?;
        Ok(buf)
    };
    let mut head = [0u8; 64];
    let n = (&file).read(&mut head).map_err(|e| bad(&format!("cannot read it: {e}")))?;
    if !head[..n].starts_with(b"\x7fELF") {
        return Err(bad("not an ELF program or a #! script"));
    }
    if n < head.len() || head[4] != 2 || head[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF program"));
    }
    let u16_at = |b: &[u8], i: usize| usize::from(u16::from_le_bytes([b[i], b[i + 1]]));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&head, 0x20), u16_at(&head, 0x36), u16_at(&head, 0x38));
    if phnum > 0 && phentsize != PHDR_SIZE {
        return Err(bad("ELF program headers of an unknown size"));
    }
    // Only the program headers are read, not the whole program.
    let phdrs = read(phnum * PHDR_SIZE, phoff)?;
    for ph in phdrs.chunks_exact(PHDR_SIZE) {
        if u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) != PT_INTERP {
            continue;
        }
        let (off, size) = (u64_at(ph, 8), u64_at(ph, 32));
        if size == 0 || size > 4096 {
            return Err(bad("PT_INTERP is not a path"));
        }
        let interp = read(size as usize, off)?;
        let interp = interp.split(|&b| b == 0).next().unwrap_or_default();
        return Ok(Some(interp.to_vec()));
    }
    Ok(None)
}

/// The host path of image path `p` inside `tree`, every symlink followed as the image
/// means it: an absolute target starts again at the tree's root, and `..` never climbs
/// above it. So nothing resolves outside the tree, whatever the image's links say.
pub fn resolve(tree: &Path, p: &Path) -> Result<PathBuf> {
    let mut todo: Vec<OsString> = p.components().rev().filter_map(component).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let here = done.iter().fold(tree.to_path_buf(), |acc, c| acc.join(c)).join(&part);
        match fs::read_link(&here) {
            Ok(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error(format!("{}: too many levels of symbolic links in the image", p.display())));
                }
                if target.is_absolute() {
                    done.clear();
                }
                todo.extend(target.components().rev().filter_map(component));
            }
            Err(_) => done.push(part),
        }
    }
    let out = done.iter().fold(tree.to_path_buf(), |acc, c| acc.join(c));
    if fs::symlink_metadata(&out).is_err() {
        return Err(Error(format!("{} is not in the image", p.display())));
    }
    Ok(out)
}

fn component(c: Component) -> Option<OsString> {
    match c {
        Component::Normal(s) => Some(s.to_os_string()),
        Component::ParentDir => Some("..".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("bundle-host-mode-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn links_resolve_inside_the_tree() {
        let t = Scratch::new("links");
        let root = &t.0;
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("usr/lib64", root.join("lib64")).unwrap();
        fs::write(root.join("usr/bin/dash"), b"x").unwrap();
        symlink("dash", root.join("usr/bin/sh")).unwrap();
        symlink("/usr/bin/../../../../etc/passwd", root.join("usr/bin/escape")).unwrap();
        symlink("loop", root.join("usr/bin/loop")).unwrap();
        assert_eq!(resolve(root, Path::new("/bin/sh")).unwrap(), root.join("usr/bin/dash"));
        assert_eq!(resolve(root, Path::new("/lib64")).unwrap(), root.join("usr/lib64"));
        // `..` stops at the tree's root: /etc/passwd of the image, which it lacks.
        let e = resolve(root, Path::new("/bin/escape")).unwrap_err();
        assert!(e.0.contains("not in the image"), "{}", e.0);
        assert!(resolve(root, Path::new("/bin/loop")).unwrap_err().0.contains("too many levels"));
    }

    #[test]
    fn scripts_run_with_the_images_interpreter_and_static_programs_as_they_are() {
        let t = Scratch::new("scripts");
        let root = &t.0;
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc/ld.so.conf.d")).unwrap();
        fs::create_dir_all(root.join("opt/lib")).unwrap();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        fs::write(root.join("etc/ld.so.conf"), "include /etc/ld.so.conf.d/*.conf\n").unwrap();
        fs::write(root.join("etc/ld.so.conf.d/app.conf"), "/opt/lib # the app's\n").unwrap();
        // A static "interpreter": an ELF header with no program headers.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fs::write(root.join("usr/bin/tool"), &elf).unwrap();
        fs::write(root.join("usr/bin/script"), b"#!/usr/bin/tool -x\necho\n").unwrap();
        let cmd = command(root, &["script".into(), "arg".into()]).unwrap();
        let want: Vec<OsString> =
            vec![root.join("usr/bin/tool").into(), "-x".into(), root.join("usr/bin/script").into(), "arg".into()];
        assert_eq!(cmd, want);
        let lp = library_path(root);
        assert_eq!(
            lp,
            OsString::from(format!("{}:{}", root.join("opt/lib").display(), root.join("usr/lib64").display()))
        );
        assert!(command(root, &["nope".into()]).unwrap_err().0.contains("not in the image"));
    }
}
