//! `bundle list` on names that would break a listing: one entry is one line, control
//! bytes are escaped as `ls -b` does.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

#[test]
fn names_with_newlines_and_control_bytes_are_listed_escaped_one_per_line() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("bin/app"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(tree.join("two\nlines"), b"").unwrap();
    fs::write(tree.join("esc\x1b[2Jape"), b"").unwrap();
    symlink("target\twith tab", tree.join("link")).unwrap();
    let sif = d.path().join("app.sif");
    let bundle = env!("CARGO_BIN_EXE_bundle");
    let built = Command::new(bundle)
        .args(["build", "--no-closure", "-e", "/bin/app", "--stub", "/bin/busybox", "--dir"])
        .arg(&tree)
        .arg("-o")
        .arg(&sif)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let out = Command::new(bundle).arg("list").arg(&sif).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines.iter().any(|l| l.ends_with(" /two\\nlines")), "{listing}");
    assert!(lines.iter().any(|l| l.ends_with(" /esc\\033[2Jape")), "{listing}");
    assert!(lines.iter().any(|l| l.ends_with(" /link -> target\\twith tab")), "{listing}");
    assert!(!listing.contains('\x1b'), "{listing}");
    // Every line is one entry: it starts with a type and mode.
    assert!(lines.iter().all(|l| l.len() > 10 && "-dlcbps".contains(&l[..1])), "{listing}");
}
