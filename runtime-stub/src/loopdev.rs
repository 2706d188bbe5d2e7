//! kernel mode's block device: a read-only loop device over the image's byte range of
//! our own file, so the kernel's squashfs can mount it in place (no copy, no FUSE).
//!
//! The device is set to clear itself (`LO_FLAGS_AUTOCLEAR`): once the mount is gone —
//! when the container's mount namespace dies — the kernel detaches it. Nothing to undo.

use crate::fail::{Context, Error, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LOOP_SET_FD: libc::Ioctl = 0x4C00;
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_SET_STATUS64: libc::Ioctl = 0x4C04;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>` (Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device showing `size` bytes of `file` from `offset`, read-only. The returned
/// handle keeps it configured until the mount takes its own reference.
pub fn attach(file: &File, offset: u64, size: u64) -> Result<(PathBuf, File)> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .context(|| "cannot open /dev/loop-control".to_string())?;
    // Another process may take the free device between our two calls: try again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(Error(format!("no free loop device: {}", std::io::Error::last_os_error())));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new().read(true).open(&path).context(|| format!("cannot open {}", path.display()))?;
        match configure(&dev, file, offset, size) {
            Ok(()) => return Ok((path, dev)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(Error(format!("cannot set up {}: {e}", path.display()))),
        }
    }
    Err(Error("no free loop device after 16 tries".into()))
}

fn configure(dev: &File, file: &File, offset: u64, size: u64) -> std::io::Result<()> {
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    info.offset = offset;
    info.sizelimit = size;
    info.flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    let config = LoopConfig { fd: file.as_raw_fd() as u32, block_size: 0, info, reserved: [0; 8] };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` we own for the call's duration.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOTTY) {
        return Err(err);
    }
    // Kernels before 5.8: the same in two steps.
    // SAFETY: LOOP_SET_FD takes a file descriptor by value.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD, file.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` we own.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_STATUS64, &config.info) } != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) };
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<super::LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<super::LoopConfig>(), 304);
    }
}
