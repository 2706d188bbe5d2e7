//! The keeper runs from private pages, not from the bundle file's.
//!
//! A process executing a file maps its code and data from that file's page cache: if
//! the file is rewritten in place (`cp new.sif app.sif` from another NFS client, where
//! the kernel's "text file busy" guard does not reach), the keeper's and the FUSE
//! server's code and static data become the new file's bytes, or garbage; they then
//! crash or wedge while holding the session. So the keeper, once it is detached from
//! the rank and before it forks anything, replaces every mapping of its own file by an
//! anonymous copy at the same address ([`take`]). The file then keeps nothing of the
//! keeper but an open descriptor, whose reads are checked chunk by chunk
//! (`integrity.rs`); the FUSE server, forked later, inherits the copy.
//!
//! The kernel still counts the file as the keeper's executable (`/proc/PID/exe`), and
//! refuses to write to an executable ("Text file busy"): a node's own `cp new.sif
//! app.sif` would fail for as long as a container lingers, where every other node's
//! goes through. Once in its user namespace (where it may), the keeper points that
//! link at an empty memfd instead ([`release_exe`]), so the file is like any other.
//!
//! Measured against the first way of doing it, re-executing the stub from a memfd
//! copy (`sudo bench/run --rows start`, docs/performance.md): that cost about a
//! millisecond per fresh container, as the new image started from nothing (the
//! copy, `execve`, and the bundle and the caller's situation read again); this costs
//! a copy of the stub's mapped megabyte, in memory.

use crate::fail::{Error, Result};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// One mapping of our own file, as `/proc/self/maps` lists it.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    prot: libc::c_int,
}

/// Replaces each mapping of this process's executable by an anonymous copy of its
/// current bytes, with the same address and protection. Must run single-threaded.
/// On an error, the mappings not yet replaced stay as they were: the keeper then runs
/// as before, from the file.
pub fn take() -> Result<()> {
    let exe = std::fs::metadata("/proc/self/exe").map_err(|e| Error(format!("cannot stat /proc/self/exe: {e}")))?;
    let path = std::fs::read_link("/proc/self/exe").map_err(|e| Error(format!("cannot read /proc/self/exe: {e}")))?;
    let maps =
        std::fs::read_to_string("/proc/self/maps").map_err(|e| Error(format!("cannot read /proc/self/maps: {e}")))?;
    let ours = own_mappings(&maps, &Exe { dev: exe.dev(), ino: exe.ino(), path: &path.to_string_lossy() });
    if ours.is_empty() {
        return Err(Error("no mapping of /proc/self/exe in /proc/self/maps".into()));
    }
    // From here on nothing allocates: the allocator's state lives in the data segment,
    // and a write to it between its copy and its replacement would be lost.
    for m in &ours {
        // SAFETY: `m` is a readable mapping of this process; `replace` copies it to a
        // fresh anonymous mapping and moves that over it, atomically, with no gap in
        // which the code running here (possibly inside `m`) would be unmapped.
        unsafe { replace(m) }?;
    }
    Ok(())
}

/// Makes an empty memfd named `bundle-keeper` this process's executable in the
/// kernel's eyes (`/proc/self/exe`), so that the bundle file is writable again. Needs
/// `CAP_SYS_ADMIN` in our user namespace (the keeper's own one, or root's) and no
/// mapping of the file left ([`take`] first). An error leaves the link as it was.
pub fn release_exe() -> Result<()> {
    let fail = |what: &str, e: std::io::Error| Error(format!("cannot {what}: {e}"));
    let map = current_map().map_err(|e| fail("read /proc/self/stat", e))?;
    let exe = empty_executable().map_err(|e| fail("make a memfd", e))?;
    let map = PrctlMmMap { exe_fd: exe.as_raw_fd() as u32, ..map };
    // SAFETY: PR_SET_MM_MAP reads a `prctl_mm_map` of the given size; every address in
    // it is the kernel's own value for this process, read just now (auxv_size 0 leaves
    // the auxiliary vector alone).
    let r = unsafe {
        libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP, &map as *const PrctlMmMap, size_of::<PrctlMmMap>(), 0)
    };
    if r != 0 {
        return Err(fail("point /proc/self/exe away from the bundle", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `struct prctl_mm_map` of `<linux/prctl.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: *const u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// The memory layout the kernel keeps for this process, which PR_SET_MM_MAP sets all
/// at once: from `/proc/self/stat`, and the current break.
fn current_map() -> std::io::Result<PrctlMmMap> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected contents");
    let fields = layout_fields(&stat).ok_or_else(bad)?;
    // SAFETY: brk(0) changes nothing and returns the current break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
    let [start_code, end_code, start_stack, start_data, end_data, start_brk, arg_start, arg_end, env_start, env_end] =
        fields;
    Ok(PrctlMmMap {
        start_code,
        end_code,
        start_data,
        end_data,
        start_brk,
        brk,
        start_stack,
        arg_start,
        arg_end,
        env_start,
        env_end,
        auxv: std::ptr::null(),
        auxv_size: 0,
        exe_fd: u32::MAX,
    })
}

/// Fields 26 to 28 and 45 to 51 of a `/proc/PID/stat` line (proc(5)): startcode,
/// endcode, startstack, start_data, end_data, start_brk, arg_start, arg_end,
/// env_start, env_end. The command name, field 2, may hold spaces and parentheses:
/// counting starts after its last `)`.
fn layout_fields(stat: &str) -> Option<[u64; 10]> {
    let after_name: Vec<&str> = stat.rsplit_once(')')?.1.split_ascii_whitespace().collect();
    let field = |n: usize| after_name.get(n - 3)?.parse::<u64>().ok();
    let mut out = [0; 10];
    for (slot, n) in out.iter_mut().zip([26, 27, 28, 45, 46, 47, 48, 49, 50, 51]) {
        *slot = field(n)?;
    }
    Some(out)
}

/// An empty memfd the kernel lets us name as an executable (`MFD_EXEC` where the
/// kernel has it, 6.3+, so that `vm.memfd_noexec` does not make it non-executable).
fn empty_executable() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    for flags in [libc::MFD_CLOEXEC | libc::MFD_EXEC, libc::MFD_CLOEXEC] {
        // SAFETY: a NUL-terminated name; the descriptor returned is ours to own.
        let fd = unsafe { libc::memfd_create(c"bundle-keeper".as_ptr(), flags) };
        if fd >= 0 {
            return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    Err(std::io::Error::last_os_error())
}

/// Copies `m` into a new anonymous mapping and moves that onto `m`'s addresses.
unsafe fn replace(m: &Mapping) -> Result<()> {
    let len = m.end - m.start;
    let fail =
        |what: &str| Error(format!("cannot {what} (keeping the file's pages): {}", std::io::Error::last_os_error()));
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    let copy = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0);
    if copy == libc::MAP_FAILED {
        return Err(fail("map memory for a private copy of the stub"));
    }
    std::ptr::copy_nonoverlapping(m.start as *const u8, copy as *mut u8, len);
    if libc::mprotect(copy, len, m.prot) != 0 {
        libc::munmap(copy, len);
        return Err(fail("protect the stub's private copy"));
    }
    let moved = libc::mremap(copy, len, len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, m.start as *mut libc::c_void);
    if moved == libc::MAP_FAILED {
        libc::munmap(copy, len);
        return Err(fail("move the stub's private copy in place"));
    }
    Ok(())
}

/// Our executable: its device and inode as `stat` gives them, and its path.
struct Exe<'a> {
    dev: u64,
    ino: u64,
    path: &'a str,
}

/// The readable mappings of `exe` in a `/proc/self/maps` text.
fn own_mappings(maps: &str, exe: &Exe) -> Vec<Mapping> {
    maps.lines().filter_map(|line| parse_line(line, exe)).collect()
}

/// `start-end perms offset major:minor inode path`, for a mapping of `exe`: its inode,
/// and its device or else its path (on btrfs and overlayfs the device in the maps is
/// not the one `stat` gives).
fn parse_line(line: &str, exe: &Exe) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, _offset, device, inode) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let path = line.find('/').map(|at| &line[at..]);
    if inode.parse::<u64>().ok()? != exe.ino || !(same_device(device, exe.dev)? || path == Some(exe.path)) {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
    let perms = perms.as_bytes();
    if perms.len() < 3 || perms[0] != b'r' || end <= start {
        return None;
    }
    let mut prot = libc::PROT_READ;
    if perms[1] == b'w' {
        prot |= libc::PROT_WRITE;
    }
    if perms[2] == b'x' {
        prot |= libc::PROT_EXEC;
    }
    Some(Mapping { start, end, prot })
}

/// Whether `major:minor` (hex, as the kernel prints it) is the device `dev`.
fn same_device(device: &str, dev: u64) -> Option<bool> {
    let (major, minor) = device.split_once(':')?;
    let (major, minor) = (u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
    Some(libc::makedev(major, minor) == dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
00400000-004fd000 r-xp 00000000 fe:01 1837420                            /tmp/app.sif
004fd000-00504000 rw-p 000fc000 fe:01 1837420                            /tmp/app.sif
00504000-00506000 rw-p 00000000 00:00 0                                  [heap]
7f0000000000-7f0000001000 ---p 00000000 fe:01 1837420                    /tmp/app.sif
7f0000100000-7f0000200000 r--p 00000000 fe:01 99                         /usr/lib/other
7ffd3a5e7000-7ffd3a608000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn finds_the_readable_mappings_of_our_file_only() {
        let exe = Exe { dev: libc::makedev(0xfe, 0x01), ino: 1837420, path: "/tmp/app.sif" };
        let got = own_mappings(MAPS, &exe);
        assert_eq!(
            got,
            [
                Mapping { start: 0x400000, end: 0x4fd000, prot: libc::PROT_READ | libc::PROT_EXEC },
                Mapping { start: 0x4fd000, end: 0x504000, prot: libc::PROT_READ | libc::PROT_WRITE },
            ]
        );
        // Another device in the maps (btrfs, overlayfs): the path decides.
        let elsewhere = Exe { dev: libc::makedev(0, 0x2f), ..exe };
        assert_eq!(own_mappings(MAPS, &elsewhere).len(), 2);
        assert!(own_mappings(MAPS, &Exe { path: "/other", ..elsewhere }).is_empty());
        assert_eq!(own_mappings(MAPS, &Exe { ino: 99, path: "/usr/lib/other", ..elsewhere }).len(), 1);
        assert!(own_mappings("garbage\n\n1-2 r\n", &exe).is_empty());
    }

    #[test]
    fn reads_the_layout_fields_after_the_command_name() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let stat = format!("4242 (a) b) (c) {}\n", fields.join(" "));
        assert_eq!(layout_fields(&stat), Some([26, 27, 28, 45, 46, 47, 48, 49, 50, 51]));
        assert_eq!(layout_fields("4242 (short) S 1 2 3\n"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let [start_code, end_code, ..] = layout_fields(&own).unwrap();
        assert!(start_code < end_code, "{own}");
    }

    #[test]
    fn a_copied_mapping_keeps_its_bytes_and_protection() {
        // A file-backed mapping of our own, replaced in place: same bytes, and no longer
        // the file's (a later write to the file does not show through).
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut f = tempfile();
        f.write_all(&[7u8; 8192]).unwrap();
        let len = 8192;
        // SAFETY: a fresh shared mapping of our own file, unmapped at the end.
        unsafe {
            let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0);
            assert_ne!(p, libc::MAP_FAILED);
            let m = Mapping { start: p as usize, end: p as usize + len, prot: libc::PROT_READ };
            replace(&m).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 8192], 0).unwrap();
            let bytes = std::slice::from_raw_parts(p as *const u8, len);
            assert!(bytes.iter().all(|&b| b == 7));
            libc::munmap(p, len);
        }
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("private-pages-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
