//! What the host's own libraries add to the container: `--bundle-host-lib`,
//! `--bundle-nv` and `--bundle-host-mpi`, found through the host's `ld.so.cache` as the
//! host's loader would find them.
//!
//! Host libraries are bound one by one into [`HOST_LIBS`] (under the name the loader
//! asks for, the soname), which goes first in the application's `LD_LIBRARY_PATH`:
//! ahead of the image's own library directories and `ld.so.cache`, without hiding any
//! of them. A directory is bound at its own path and goes first too. Programs
//! (`nvidia-smi`) are bound at their host path.

use crate::fail::{Error, Result};
use crate::plan::{Injected, MpiCheck, UserBind};
use std::fs;
use std::path::{Path, PathBuf};

/// The container directory that holds bound host libraries.
pub const HOST_LIBS: &str = "/.bundle/host-libs";
pub const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// The host's `ld.so.cache`: `(soname, path)` of each x86-64 library, in the cache's
/// order (the loader's preference).
#[derive(Debug, Default)]
pub struct Cache(Vec<(String, PathBuf)>);

impl Cache {
    pub fn read(path: &Path) -> Result<Cache> {
        let bytes = fs::read(path).map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
        parse_cache(&bytes).ok_or_else(|| Error(format!("{} is not an ld.so.cache this runtime reads", path.display())))
    }

    /// The first library named exactly `name`, else the first `name.so*` (`libfabric`
    /// finds `libfabric.so.1`).
    pub fn find(&self, name: &str) -> Option<&(String, PathBuf)> {
        let stem = format!("{name}.so");
        self.0.iter().find(|(n, _)| n == name).or_else(|| self.0.iter().find(|(n, _)| n.starts_with(&stem)))
    }

    /// Every versioned library `stem.so.N…` (no development links).
    fn versions<'a>(&'a self, stem: &'a str) -> impl Iterator<Item = &'a (String, PathBuf)> + 'a {
        let prefix = format!("{stem}.so.");
        self.0
            .iter()
            .filter(move |(n, _)| n.strip_prefix(&prefix).is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())))
    }
}

/// glibc's cache format "glibc-ld.so.cache1.1" (alone, or after the old format's
/// table): a header, entries of (flags, key, value, osversion, hwcap), strings at
/// offsets from the header.
fn parse_cache(bytes: &[u8]) -> Option<Cache> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    /// FLAG_ELF_LIBC6 | FLAG_X8664_LIB64.
    const X86_64_LIBC6: i32 = 0x0303;
    let base = bytes.windows(MAGIC.len()).position(|w| w == MAGIC)?;
    let c = &bytes[base..];
    let u32_at = |i: usize| c.get(i..i + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let n = u32_at(20)? as usize;
    let string = |off: u32| {
        let s = c.get(off as usize..)?;
        let end = s.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&s[..end]).ok()
    };
    let mut libs = Vec::with_capacity(n);
    for i in 0..n {
        let at = HEADER + i * ENTRY;
        let flags = u32_at(at)? as i32;
        if flags & 0xffff != X86_64_LIBC6 {
            continue;
        }
        libs.push((string(u32_at(at + 4)?)?.to_string(), PathBuf::from(string(u32_at(at + 8)?)?)));
    }
    Some(Cache(libs))
}

/// The host's cache, read when first needed.
pub struct HostCache {
    path: PathBuf,
    read: Option<Cache>,
}

impl HostCache {
    pub fn new(path: &Path) -> HostCache {
        HostCache { path: path.into(), read: None }
    }

    pub fn get(&mut self) -> Result<&Cache> {
        if self.read.is_none() {
            self.read = Some(Cache::read(&self.path)?);
        }
        Ok(self.read.as_ref().expect("just read"))
    }
}

/// `--bundle-host-lib PATH`: a file, a directory, or a library name in the host's cache.
pub fn host_lib(spec: &str, cache: &mut HostCache) -> Result<Injected> {
    let mut out = Injected::default();
    if !spec.contains('/') {
        let (soname, path) = cache
            .get()?
            .find(spec)
            .ok_or_else(|| Error(format!("--bundle-host-lib {spec}: no such library in the host's {LD_SO_CACHE}")))?;
        bind_lib(&mut out, path, soname);
        return Ok(out);
    }
    let path = Path::new(spec);
    let meta = fs::metadata(path).map_err(|e| Error(format!("--bundle-host-lib {spec}: {e}")))?;
    if meta.is_dir() {
        // At its own path: where a bind of the host already shows it (under /tmp, the
        // home), it is not bound again.
        out.binds.push(UserBind { src: path.into(), dst: path.into(), readonly: false });
        out.lib_path.push(path.into());
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(spec);
        bind_lib(&mut out, path, name);
    }
    Ok(out)
}

/// `path` bound read-only as `HOST_LIBS/name`, [`HOST_LIBS`] first in the library path.
fn bind_lib(out: &mut Injected, path: &Path, name: &str) {
    out.binds.push(UserBind { src: path.into(), dst: Path::new(HOST_LIBS).join(name), readonly: true });
    if !out.lib_path.iter().any(|d| d == Path::new(HOST_LIBS)) {
        out.lib_path.insert(0, HOST_LIBS.into());
    }
}

/// The NVIDIA driver's user-space libraries, as `nvidia-container-cli list` finds them
/// (libnvidia-container's utility, compute, video and graphics lists).
const NVIDIA_LIBS: [&str; 33] = [
    "libnvidia-ml",
    "libnvidia-cfg",
    "libnvidia-nscq",
    "libcuda",
    "libcudadebugger",
    "libnvidia-opencl",
    "libnvidia-gpucomp",
    "libnvidia-ptxjitcompiler",
    "libnvidia-fatbinaryloader",
    "libnvidia-allocator",
    "libnvidia-compiler",
    "libnvidia-pkcs11",
    "libnvidia-pkcs11-openssl3",
    "libnvidia-nvvm",
    "libvdpau_nvidia",
    "libnvidia-encode",
    "libnvidia-opticalflow",
    "libnvcuvid",
    "libnvidia-eglcore",
    "libnvidia-glcore",
    "libnvidia-tls",
    "libnvidia-glsi",
    "libnvidia-fbc",
    "libnvidia-ifr",
    "libnvidia-rtcore",
    "libnvoptix",
    "libGLX_nvidia",
    "libEGL_nvidia",
    "libGLESv2_nvidia",
    "libGLESv1_CM_nvidia",
    "libnvidia-glvkspirv",
    "libnvidia-cbl",
    "libnvidia-ngx",
];
/// Its programs, bound where the host has them.
const NVIDIA_BINS: [&str; 5] =
    ["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"];
const BIN_DIRS: [&str; 4] = ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"];

/// `--bundle-nv`: the driver's libraries (every version the cache has of each, under
/// its soname), its programs and its device nodes (`/dev/nvidia*`, `/dev/nvidia-caps`).
pub fn nvidia(cache: &Cache, dev: &Path) -> Result<Injected> {
    let mut out = Injected::default();
    for lib in NVIDIA_LIBS {
        for (soname, path) in cache.versions(lib) {
            if !out.binds.iter().any(|b| b.dst.ends_with(soname)) {
                bind_lib(&mut out, path, soname);
            }
        }
    }
    if out.binds.is_empty() {
        return Err(Error(format!(
            "--bundle-nv: this host has no NVIDIA driver (no libcuda.so.* or libnvidia-ml.so.* in {LD_SO_CACHE})"
        )));
    }
    if !dev.join("nvidiactl").exists() {
        return Err(Error(format!(
            "--bundle-nv: the NVIDIA libraries are installed but {} is missing: the driver's kernel module is not loaded",
            dev.join("nvidiactl").display()
        )));
    }
    for name in NVIDIA_BINS {
        if let Some(p) = BIN_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file()) {
            out.binds.push(UserBind { src: p.clone(), dst: p, readonly: true });
        }
    }
    let mut nodes: Vec<PathBuf> = fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("nvidia")))
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    nodes.sort_unstable();
    out.binds.extend(nodes.into_iter().map(|n| UserBind { src: n.clone(), dst: n, readonly: false }));
    Ok(out)
}

/// The MPI implementations' libraries that must come from one build, by name stem.
const MPI_FAMILY: [&str; 6] = ["libmpi", "libmpi_", "libopen-rte", "libopen-pal", "libmpicxx", "libmpifort"];

/// `--bundle-host-mpi`: the host's `libmpi.so.N` and its companions of the same
/// directory, bound ahead of the image's; the image phase checks that the bundle's MPI
/// has the same soname ([`MpiCheck`]).
pub fn host_mpi(cache: &Cache) -> Result<Injected> {
    let (soname, path) = cache.versions("libmpi").next().ok_or_else(|| {
        Error(format!("--bundle-host-mpi: the host has no MPI library (no libmpi.so.* in {LD_SO_CACHE})"))
    })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut out = Injected::default();
    for (name, p) in &cache.0 {
        let versioned = name.contains(".so.");
        let family = versioned && p.parent() == Some(dir) && MPI_FAMILY.iter().any(|f| name.starts_with(f));
        if family && !out.binds.iter().any(|b| b.dst.ends_with(name)) {
            bind_lib(&mut out, p, name);
        }
    }
    out.mpi = Some(MpiCheck { host_soname: soname.clone(), host_path: path.clone() });
    Ok(out)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A cache file as glibc writes it, with these `(flags, soname, path)` entries.
    pub fn cache_bytes(entries: &[(i32, &str, &str)]) -> Vec<u8> {
        let mut head = b"glibc-ld.so.cache1.1".to_vec();
        let strings_at = 48 + 24 * entries.len();
        let mut strings = Vec::new();
        let mut table = Vec::new();
        for (flags, key, value) in entries {
            let k = strings_at + strings.len();
            strings.extend_from_slice(key.as_bytes());
            strings.push(0);
            let v = strings_at + strings.len();
            strings.extend_from_slice(value.as_bytes());
            strings.push(0);
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&(k as u32).to_le_bytes());
            table.extend_from_slice(&(v as u32).to_le_bytes());
            table.extend_from_slice(&0u32.to_le_bytes());
            table.extend_from_slice(&0u64.to_le_bytes());
        }
        head.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        head.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        head.resize(48, 0);
        head.extend(table);
        head.extend(strings);
        head
    }

    fn cache(entries: &[(i32, &str, &str)]) -> Cache {
        parse_cache(&cache_bytes(entries)).unwrap()
    }

    const LIBS: &[(i32, &str, &str)] = &[
        (0x0303, "libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"),
        (0x0003, "libcuda.so.1", "/usr/lib/i386-linux-gnu/libcuda.so.1"),
        (0x0303, "libcuda.so.1", "/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        (0x0303, "libcuda.so", "/usr/lib/x86_64-linux-gnu/libcuda.so"),
        (0x0303, "libmpi.so.40", "/usr/lib/x86_64-linux-gnu/libmpi.so.40"),
        (0x0303, "libopen-pal.so.40", "/usr/lib/x86_64-linux-gnu/libopen-pal.so.40"),
        (0x0303, "libmpi_cxx.so.40", "/usr/lib/x86_64-linux-gnu/libmpi_cxx.so.40"),
        (0x0303, "libmpich.so.12", "/opt/mpich/lib/libmpich.so.12"),
        (0x0303, "libfabric.so.1", "/usr/lib/x86_64-linux-gnu/libfabric.so.1"),
    ];

    #[test]
    fn the_cache_is_read_as_the_loader_reads_it() {
        let c = cache(LIBS);
        assert_eq!(c.find("libcuda.so.1").unwrap().1, Path::new("/usr/lib/x86_64-linux-gnu/libcuda.so.1"));
        assert_eq!(c.find("libfabric").unwrap().0, "libfabric.so.1");
        assert!(c.find("libnope").is_none());
        // The old format's table may come first.
        let mut old = b"ld.so-1.7.0\0\0\0\0\0".to_vec();
        old.extend(cache_bytes(LIBS));
        assert_eq!(parse_cache(&old).unwrap().0.len(), 8);
        assert!(parse_cache(b"garbage").is_none());
    }

    #[test]
    fn nvidia_libraries_go_under_their_sonames_first_in_the_path() {
        let dev = std::env::temp_dir().join(format!("bundle-nv-dev-{}", std::process::id()));
        fs::create_dir_all(&dev).unwrap();
        let err = nvidia(&cache(LIBS), &dev).unwrap_err().0;
        assert!(err.contains("nvidiactl is missing"), "{err}");
        fs::write(dev.join("nvidiactl"), "").unwrap();
        fs::write(dev.join("nvidia0"), "").unwrap();
        let got = nvidia(&cache(LIBS), &dev).unwrap();
        let _ = fs::remove_dir_all(&dev);
        let dsts: Vec<String> = got.binds.iter().map(|b| b.dst.display().to_string()).collect();
        assert_eq!(
            dsts,
            [
                "/.bundle/host-libs/libnvidia-ml.so.1",
                "/.bundle/host-libs/libcuda.so.1",
                "/dev/nvidia0",
                "/dev/nvidiactl"
            ]
        );
        assert_eq!(got.lib_path, [PathBuf::from(HOST_LIBS)]);
        let err = nvidia(&cache(&LIBS[4..]), &dev).unwrap_err().0;
        assert!(err.contains("no NVIDIA driver"), "{err}");
    }

    #[test]
    fn host_mpi_brings_its_family_and_asks_for_a_check() {
        let got = host_mpi(&cache(LIBS)).unwrap();
        let names: Vec<String> = got.binds.iter().map(|b| b.dst.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/.bundle/host-libs/libmpi.so.40",
                "/.bundle/host-libs/libopen-pal.so.40",
                "/.bundle/host-libs/libmpi_cxx.so.40"
            ]
        );
        assert_eq!(got.mpi.unwrap().host_soname, "libmpi.so.40");
        assert!(host_mpi(&cache(&LIBS[..4])).unwrap_err().0.contains("no MPI library"));
    }
}
