//! The stub's one error path: a message, one line on stderr, exit status 255.
//!
//! 255 is what Apptainer uses for its own failures, so a job script can tell "the
//! container could not start" from any status the application itself returns.

use std::fmt::Display;

pub const EXIT_RUNTIME_ERROR: i32 = 255;

/// An error message ready for the user: what went wrong, on which path, and, where we
/// know, what to do. There is deliberately no blanket `From` for other errors: a `?`
/// must say what it was doing ([`Context`]), so that no message reaches the user as a
/// bare `Permission denied`.
#[derive(Debug)]
pub struct Error(pub String);

pub type Result<T> = std::result::Result<T, Error>;

/// Adds what we were doing to a low-level error (`cannot mount /proc: EPERM`).
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

pub fn exit_with(e: Error) -> ! {
    eprintln!("bundle: error: {}", e.0);
    std::process::exit(EXIT_RUNTIME_ERROR)
}
