//! The keeper runs from a private copy of the stub, not from the bundle file.
//!
//! A process executing a file maps its code and data from that file's page cache: if
//! the file is rewritten in place (`cp new.sif app.sif` from another NFS client, where
//! the kernel's "text file busy" guard does not reach), the keeper's and the FUSE
//! server's code and static data become the new file's bytes, or garbage; they then
//! crash or wedge while holding the session. So the keeper, once it has been detached
//! from the rank, execs itself again from a memfd holding the stub (the file's first
//! `image offset` bytes), and hands the listener, its report pipe and the bundle file
//! to the new image through [`VAR`]. Its child, the FUSE server, is a fork of that
//! image. The file then keeps nothing but an open descriptor, whose reads are checked
//! chunk by chunk (see `integrity.rs`). The copy costs about a millisecond, once per
//! container.

use crate::fail::{Error, Result};
use crate::options::Mode;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;

/// `LISTENER,REPORT,BUNDLE,MODE:PATH` for the re-executed keeper; removed from the
/// environment as soon as it is read.
pub const VAR: &str = "BUNDLE_KEEPER";

/// What the re-executed keeper inherits.
pub struct Inherited {
    pub listener: UnixListener,
    pub report: File,
    pub bundle: File,
    pub mode: Mode,
    /// The bundle's path, for messages.
    pub name: String,
}

/// Execs the stub part of `bundle` (its first `stub_len` bytes) from a memfd, with the
/// same arguments and environment and [`VAR`] added; returns only if that failed.
pub fn exec_keeper(bundle: &File, stub_len: u64, listener: &UnixListener, report: &File, mode: Mode) -> Error {
    match try_exec(bundle, stub_len, listener, report, mode) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_exec(
    bundle: &File,
    stub_len: u64,
    listener: &UnixListener,
    report: &File,
    mode: Mode,
) -> Result<std::convert::Infallible> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error(format!("cannot {what}: {e}"));
    let memfd = memfd_create("bundle-keeper", MFdFlags::MFD_CLOEXEC).map_err(|e| fail("make a memfd", &e))?;
    let mut copy = File::from(memfd);
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0;
    while pos < stub_len {
        let n = buf.len().min((stub_len - pos) as usize);
        bundle.read_exact_at(&mut buf[..n], pos).map_err(|e| fail("copy the stub", &e))?;
        copy.write_all(&buf[..n]).map_err(|e| fail("copy the stub", &e))?;
        pos += n as u64;
    }
    let fds = [listener.as_raw_fd(), report.as_raw_fd(), bundle.as_raw_fd()];
    for fd in fds {
        inheritable(fd, true)?;
    }
    let name = crate::integrity::name();
    let value = format!("{},{},{},{}:{name}", fds[0], fds[1], fds[2], mode.name());
    let cstr = |b: &[u8]| CString::new(b).map_err(|e| fail("pass the arguments", &e));
    let args = std::env::args_os().map(|a| cstr(a.as_bytes())).collect::<Result<Vec<_>>>()?;
    let mut env = std::env::vars_os()
        .filter(|(k, _)| k != VAR)
        .map(|(k, v)| cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect::<Result<Vec<_>>>()?;
    env.push(cstr(format!("{VAR}={value}").as_bytes())?);
    let e = nix::unistd::fexecve(copy.as_fd(), &args, &env).unwrap_err();
    for fd in fds {
        let _ = inheritable(fd, false);
    }
    Err(fail("run the keeper from memory", &e))
}

fn inheritable(fd: RawFd, yes: bool) -> Result<()> {
    let flags = if yes { FdFlag::empty() } else { FdFlag::FD_CLOEXEC };
    // SAFETY: the descriptor is one of ours, open for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map(drop).map_err(|e| Error(format!("cannot pass a descriptor: {e}")))
}

/// In the re-executed keeper: what [`exec_keeper`] handed over; `None` in any other run.
pub fn inherited() -> Option<Inherited> {
    let value = std::env::var(VAR).ok()?;
    std::env::remove_var(VAR);
    let (listener, rest) = value.split_once(',')?;
    let (report, rest) = rest.split_once(',')?;
    let (bundle, rest) = rest.split_once(',')?;
    let (mode, name) = rest.split_once(':')?;
    let take = |s: &str| -> Option<OwnedFd> {
        let fd: RawFd = s.parse().ok()?;
        inheritable(fd, false).ok()?;
        // SAFETY: the keeper that exec'd us passed this descriptor for us to own.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    Some(Inherited {
        listener: UnixListener::from(take(listener)?),
        report: File::from(take(report)?),
        bundle: File::from(take(bundle)?),
        mode: Mode::parse(mode).ok()?,
        name: name.to_string(),
    })
}
