//! ^C and SIGTERM in the middle of `bundle build` of a large tree: the build dies of
//! the signal and leaves no `.bundle-XXXXXX` temporary file, and no output.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tree that takes seconds to pack: incompressible files, 96 MiB in all.
fn large_tree(root: &Path) {
    fs::create_dir_all(root.join("data")).unwrap();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..12 {
        let mut f = fs::File::create(root.join(format!("data/blob{i}"))).unwrap();
        for _ in 0..8 {
            for chunk in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).unwrap();
        }
    }
    // The entrypoint must be executable.
    fs::set_permissions(root.join("data/blob0"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bundle-") || n == "app.sif")
        .collect()
}

#[test]
fn a_signal_mid_build_leaves_no_temporary_file() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    large_tree(&tree);
    let out_dir = d.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bundle"))
            .args(["build", "--no-closure", "-e", "/data/blob0", "--level", "19", "--threads", "1", "--dir"])
            .arg(&tree)
            // Any static ELF will do as the stub: the build is killed before it matters.
            .args(["--stub", "/bin/busybox", "-o"])
            .arg(out_dir.join("app.sif"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Mid-way: once the temporary output (named `.bundle-*`, or unnamed with
        // O_TMPFILE, then seen only through the build's descriptors) has grown.
        let start = Instant::now();
        loop {
            let fds = fs::read_dir(format!("/proc/{}/fd", child.id())).into_iter().flatten().flatten();
            let growing = fds.into_iter().any(|e| {
                let into_out = fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&out_dir));
                into_out && fs::metadata(e.path()).is_ok_and(|m| m.len() > 4 << 20)
            });
            if growing {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{name}: the build ended before it could be interrupted: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(start.elapsed() < Duration::from_secs(120), "{name}: no temporary output after 120 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling the child we spawned.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{name}: the build must die of the signal ({status})");
        assert_eq!(leftovers(&out_dir), Vec::<String>::new(), "{name}: left behind");
    }
}
