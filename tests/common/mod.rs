//! The end-to-end harness: real bundles, built by the real `bundle` CLI around the real
//! runtime stub, run as an ordinary user.
//!
//! - When the tests run as root (CI), every bundle runs as the unprivileged user
//!   [`TEST_USER`] (created by `./scripts/test`); otherwise as ourselves.
//! - Every command a test starts carries `BUNDLE_TEST_ID=<unique id>` in its
//!   environment. The runtime passes the environment through to the application, and
//!   the container's keeper and FUSE server are forks of the stub, so [`Test`]'s drop
//!   can find, by that tag alone, any process the test left behind, even though the
//!   test user is shared by tests running in parallel. Leftovers are killed and fail
//!   the test. Each test has its own `XDG_RUNTIME_DIR` (the runtime's rendezvous
//!   sockets) and extract cache, and runs bundles with `BUNDLE_LINGER=0`.
//! - Everything a test writes lives in a [`TestDir`] under `/tmp` (mode 0755, so the
//!   test user can read it), removed on drop. Processes and directories of earlier
//!   runs that were killed before their cleanup are swept at start.
//! - Every wait has a timeout; a process that outlives it is killed and the test fails
//!   with what it printed so far.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod mpi;
pub mod slurm;

// The harness, one module per concern.
mod paths;
pub use paths::*;
mod users;
pub use users::*;
mod dirs;
pub use dirs::*;
mod bundles;
pub use bundles::*;
mod commands;
pub use commands::*;
mod test_case;
pub use test_case::*;
mod mounts;
pub use mounts::*;

/// The unprivileged user the bundles run as when the tests run as root.
pub const TEST_USER: &str = "bundletest";
/// The environment variable that tags every process a test starts.
pub const TAG_VAR: &str = "BUNDLE_TEST_ID";
/// Default limit for one command (a build, a run).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// How long processes of a finished test may take to disappear. Tests run bundles with
/// `BUNDLE_LINGER=0`, so the container's keeper (and its FUSE server) leave as soon as
/// the application has ended: this is generous.
pub const LEFTOVER_GRACE: Duration = Duration::from_secs(10);
/// The squashfs image starts on this boundary (docs/format.md).
pub const IMAGE_ALIGN: u64 = 4096;
/// Size of the trailer at the end of every bundle (docs/format.md).
pub const TRAILER_LEN: u64 = 128;
/// The applets of busybox that every test rootfs has in `/bin`.
pub const APPLETS: [&str; 10] = ["sh", "ls", "cat", "env", "pwd", "id", "sleep", "echo", "true", "false"];
/// A PATH with the usual places, for the test user.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

const RUN_SUITE: &str = "run the suite with ./scripts/test (it installs the prerequisites, creates the \
                         test user and builds the stub and the bundler)";
