//! Users.

use super::*;

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The user the bundles run as: [`TEST_USER`] when we are root, else ourselves.
pub fn user() -> &'static User {
    static U: OnceLock<User> = OnceLock::new();
    U.get_or_init(|| {
        if is_root() {
            passwd(|name, _| name == TEST_USER)
                .unwrap_or_else(|| panic!("user {TEST_USER} does not exist: {RUN_SUITE}"))
        } else {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            passwd(|_, u| u == uid).unwrap_or_else(|| {
                // SAFETY: getgid cannot fail.
                let gid = unsafe { libc::getgid() };
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/".into());
                User { name: std::env::var("USER").unwrap_or_else(|_| uid.to_string()), uid, gid, home }
            })
        }
    })
}

pub(crate) fn passwd(matches: impl Fn(&str, u32) -> bool) -> Option<User> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        let (uid, gid) = (f[2].parse().ok()?, f[3].parse().ok()?);
        matches(f[0], uid).then(|| User { name: f[0].to_string(), uid, gid, home: PathBuf::from(f[5]) })
    })
}

/// Makes `cmd` run as the test user when we are root (uid, gid, no supplementary
/// groups; the working directory must be reachable by that user). Its environment is
/// left alone: [`Test::cmd`] also gives it a clean one.
pub fn as_user(cmd: &mut Command) -> &mut Command {
    if is_root() {
        cmd.uid(user().uid).gid(user().gid);
    }
    cmd
}

/// Gives `path` to the test user (when we are root; otherwise it is ours already).
pub fn chown_to_user(path: &Path) {
    if is_root() {
        let u = user();
        std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// Panics with advice unless the tests run as root: a test that cannot run here fails
/// rather than passing with a printed line.
#[track_caller]
pub fn require_root(what: &str) {
    assert!(is_root(), "{what} needs root: {RUN_SUITE} as root (or with sudo)");
}

/// Can the test user open `/dev/fuse`?
pub fn fuse_usable() -> bool {
    match fs::metadata("/dev/fuse") {
        Ok(m) if is_root() => m.permissions().mode() & 0o006 == 0o006,
        Ok(_) => fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_ok(),
        Err(_) => false,
    }
}

/// Panics with advice unless the test user can use FUSE: the fuse-mode tests model a
/// normal distribution, where `/dev/fuse` is 0666.
#[track_caller]
pub fn require_fuse() {
    assert!(
        fuse_usable(),
        "/dev/fuse is missing or not usable by {}: the fuse-mode tests need it mode 0666 as on a \
         normal distribution; ./scripts/test sets that for the run",
        user().name
    );
}
