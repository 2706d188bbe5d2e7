//! Test images and bundles.

use super::*;

/// A root tree at `at`: `/bin/busybox` with [`APPLETS`] linked to it, and the probe as
/// `/bin/probe`.
pub fn make_rootfs(at: &Path) {
    let bin = at.join("bin");
    fs::create_dir_all(&bin).expect("create rootfs/bin");
    for d in [at, bin.as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod rootfs");
    }
    fs::copy(busybox(), bin.join("busybox")).expect("copy busybox");
    fs::copy(probe(), bin.join("probe")).expect("copy probe");
    for f in ["busybox", "probe"] {
        fs::set_permissions(bin.join(f), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).expect("applet symlink");
    }
}

/// `bundle build` with the stub of this build tree.
#[derive(Clone, Default)]
pub struct Build {
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Build {
    pub fn new() -> Build {
        Build::default()
    }

    pub fn dir(self, d: impl AsRef<OsStr>) -> Build {
        self.arg("--dir").arg(d)
    }

    pub fn entrypoint(self, e: &str) -> Build {
        self.arg("-e").arg(e)
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Build {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(self, items: I) -> Build {
        items.into_iter().fold(self, |b, a| b.arg(a))
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Build {
        self.env.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// The command, with `--stub` and `-o out` added.
    pub fn command(&self, out: &Path) -> Command {
        let mut c = Command::new(bundle_bin());
        c.arg("build").args(&self.args).arg("--stub").arg(stub_bin()).arg("-o").arg(out);
        c.env_remove("BUNDLE_STUB").env_remove("SOURCE_DATE_EPOCH");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, out: &Path) -> Out {
        run(&mut self.command(out))
    }

    /// Builds `out`, panicking with the CLI's output on failure.
    pub fn build(&self, out: &Path) -> PathBuf {
        self.run(out).assert_success();
        assert!(out.is_file(), "bundle build succeeded but {} does not exist", out.display());
        out.to_path_buf()
    }
}

/// A rootfs in `dir/rootfs-NAME` and a bundle `dir/NAME.sif` of it with `/bin/probe` as
/// the entrypoint and `extra` build arguments.
pub fn probe_bundle(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let root = dir.join(format!("rootfs-{name}"));
    make_rootfs(&root);
    Build::new().dir(&root).entrypoint("/bin/probe").args(extra).build(&dir.join(format!("{name}.sif")))
}

/// `bundle SUBCOMMAND ARGS…`.
pub fn bundle(args: &[&OsStr]) -> Command {
    let mut c = Command::new(bundle_bin());
    c.args(args);
    c
}

/// The trailer of a bundle, read as docs/format.md describes it.
#[derive(Debug, Clone)]
pub struct TrailerInfo {
    pub file_len: u64,
    pub version: u32,
    pub image_offset: u64,
    pub image_size: u64,
    pub metadata_offset: u64,
    pub metadata_size: u64,
    pub image_sha256: String,
    /// Bytes of signatures between metadata and trailer (version 2).
    pub signatures_size: u64,
}

pub fn read_trailer(path: &Path) -> TrailerInfo {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let t = &bytes[bytes.len() - TRAILER_LEN as usize..];
    assert_eq!(&t[0..8], b"BUNDLE\x00\x01", "trailer magic of {}", path.display());
    let u64_at = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap());
    TrailerInfo {
        file_len: bytes.len() as u64,
        version: u32::from_le_bytes(t[8..12].try_into().unwrap()),
        image_offset: u64_at(16),
        image_size: u64_at(24),
        metadata_offset: u64_at(32),
        metadata_size: u64_at(40),
        image_sha256: t[48..80].iter().map(|b| format!("{b:02x}")).collect(),
        signatures_size: u64_at(112),
    }
}

/// Copies `src` to `dst` (mode 0755) and lets `patch` change its bytes.
pub fn patched_copy(src: &Path, dst: &Path, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = fs::read(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    patch(&mut bytes);
    fs::write(dst, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", dst.display()));
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).expect("chmod");
    dst.to_path_buf()
}

/// Whether an ELF file asks for a program interpreter (is dynamically linked).
pub fn elf_has_interp(bytes: &[u8]) -> bool {
    assert!(bytes.starts_with(b"\x7fELF") && bytes[4] == 2, "not a 64-bit ELF");
    let u16_at = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}
