//! ^C, SIGTERM or SIGHUP in the middle of a build must not leave the temporary output
//! file (`.bundle-XXXXXX`, often hundreds of MB, next to the output) behind: a normal
//! error removes it when the `NamedTempFile` drops, but a signal ends the process
//! before any destructor runs. So while a temporary output exists, a handler for those
//! signals unlinks it, restores the default disposition and re-raises the signal: the
//! build still dies of it, with the exit status a shell expects (130 for ^C).
//!
//! (`O_TMPFILE` would need no handler, but it is not on every file system a cluster
//! user writes to, NFS and Lustre among them, and replacing an existing output from it
//! needs a second name anyway.)

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The temporary file to remove on a signal, NUL-terminated; null when there is none.
/// A signal handler can read an atomic pointer, not a lock.
static TEMP: AtomicPtr<libc::c_char> = AtomicPtr::new(ptr::null_mut());

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Removes `path` if one of [`SIGNALS`] arrives before the guard drops.
pub struct RemoveOnSignal(());

impl RemoveOnSignal {
    pub fn new(path: &Path) -> RemoveOnSignal {
        let c = CString::new(path.as_os_str().as_bytes()).expect("a temporary path holds no NUL");
        let old = TEMP.swap(c.into_raw(), Ordering::SeqCst);
        free(old);
        for sig in SIGNALS {
            // SAFETY: installing a handler that only calls async-signal-safe functions
            // (unlink, signal, raise) and reads an atomic.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, ptr::null_mut());
            }
        }
        RemoveOnSignal(())
    }
}

impl Drop for RemoveOnSignal {
    fn drop(&mut self) {
        // The file was renamed into place or removed: nothing is left to clean up.
        free(TEMP.swap(ptr::null_mut(), Ordering::SeqCst));
    }
}

fn free(p: *mut libc::c_char) {
    if !p.is_null() {
        // SAFETY: every non-null pointer in TEMP came from CString::into_raw.
        drop(unsafe { CString::from_raw(p) });
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    let p = TEMP.swap(ptr::null_mut(), Ordering::SeqCst);
    // SAFETY: async-signal-safe calls only; `p` is a NUL-terminated path or null (and
    // is leaked: the process is about to die of the signal).
    unsafe {
        if !p.is_null() {
            libc::unlink(p);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}
