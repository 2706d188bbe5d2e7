//! Mounts a test makes on the host (as root), undone on drop.

use super::*;

/// A mount at [`HostMount::path`] of the host, taken down (lazily, so a container that
/// still holds a copy cannot keep it) when dropped. Declare it after the [`Test`] whose
/// directory it lies in, so that it goes first.
pub struct HostMount {
    pub path: PathBuf,
}

impl HostMount {
    /// A tmpfs at `path`, owned by the test user (so that only a read-only mount can
    /// stop the user writing there).
    #[track_caller]
    pub fn tmpfs(path: &Path) -> HostMount {
        let u = user();
        let opts = format!("mode=0755,uid={},gid={}", u.uid, u.gid);
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(path)).assert_success();
        HostMount { path: path.to_path_buf() }
    }

    /// `path` bound onto itself and made shared, as systemd makes every mount (and so an
    /// automount point): mounts made later below it propagate to its slaves.
    #[track_caller]
    pub fn shared(path: &Path) -> HostMount {
        run(Command::new("mount").arg("--bind").arg(path).arg(path)).assert_success();
        let m = HostMount { path: path.to_path_buf() };
        run(Command::new("mount").arg("--make-shared").arg(path)).assert_success();
        m
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        let out = run(Command::new("umount").arg("--lazy").arg(&self.path));
        if !thread::panicking() {
            out.assert_success();
        }
    }
}
