//! The last step: become the application.
//!
//! The stub execs rather than forking, so the process that Slurm or `mpirun` started is
//! the application: its pid, its signals, its exit status (128+N when killed by signal
//! N, as the shell reports it) are the launcher's to see, with nothing in between.

use crate::fail::Error;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Replaces this process with `argv[0]` (searched in `PATH` when it has no `/`), with
/// the caller's environment plus the bundle's own variables. Returns only on failure.
pub fn exec(argv: &[OsString], env: &BTreeMap<String, String>) -> Error {
    let Some(program) = argv.first() else {
        return Error("nothing to run".into());
    };
    let err = Command::new(program).args(&argv[1..]).envs(env).exec();
    let hint = match err.kind() {
        std::io::ErrorKind::NotFound => "not found in the bundle",
        std::io::ErrorKind::PermissionDenied => "not executable",
        _ => "cannot execute",
    };
    Error(format!("{}: {hint} ({err})", program.to_string_lossy()))
}
