//! Issue 10, end to end: signatures made with `ssh-keygen` keys and checked by
//! `ssh-keygen`, `bundle verify` finding any damaged byte, the trust policy refusing
//! bundles no allowed key signed, and the runtime's per-chunk check turning a damaged
//! image into I/O errors instead of wrong bytes.

use e2e::*;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// 300 KiB that zstd cannot shrink, so the image stores them as they are and a test
/// can find them (and damage them) in the file.
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..300 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The probe bundle with `/data/a` (noise) and `/data/b` (text), unsigned.
fn build_app(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let root = dir.join(format!("rootfs-{name}"));
    make_rootfs(&root);
    fs::create_dir_all(root.join("data")).unwrap();
    fs::write(root.join("data/a"), noise(seed)).unwrap();
    fs::write(root.join("data/b"), "file b\n").unwrap();
    Build::new().dir(&root).entrypoint("/bin/probe").build(&dir.join(format!("{name}.sif")))
}

fn app() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_app(shared_dir(), "trust-app", 1))
}

/// A key pair made by `ssh-keygen -t ed25519`, and its allowed-signers line.
struct Key {
    private: PathBuf,
    line: String,
}

fn keygen(dir: &Path, name: &str) -> Key {
    let private = dir.join(name);
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&private))
        .assert_success();
    let public = fs::read_to_string(private.with_extension("pub")).unwrap();
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    Key { private, line: format!("{name}@example.org {}\n", key.join(" ")) }
}

fn allowed(dir: &Path, name: &str, keys: &[&Key]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, keys.iter().map(|k| k.line.as_str()).collect::<String>()).unwrap();
    path
}

/// A copy of the shared bundle, signed by `keys`.
fn signed_copy(dir: &Path, name: &str, keys: &[&Key]) -> PathBuf {
    let copy = patched_copy(app(), &dir.join(name), |_| {});
    for k in keys {
        run(bundle(&[OsStr::new("sign"), OsStr::new("--key"), k.private.as_os_str(), copy.as_os_str()]))
            .assert_success();
    }
    copy
}

fn verify(b: &Path, allowed: &Path) -> Out {
    run(bundle(&[OsStr::new("verify"), OsStr::new("--allowed-signers"), allowed.as_os_str(), b.as_os_str()]))
}

#[test]
fn signatures_check_with_bundle_and_with_ssh_keygen() {
    let t = Test::new("sign-verify");
    let (alice, bob) = (keygen(t.dir.path(), "alice"), keygen(t.dir.path(), "bob"));
    let before = read_trailer(app());
    let b = signed_copy(t.dir.path(), "signed.sif", &[&alice, &bob]);
    let after = read_trailer(&b);
    // Signing appends: everything before the signatures is the same bytes.
    let (old, new) = (fs::read(app()).unwrap(), fs::read(&b).unwrap());
    let head = (before.metadata_offset + before.metadata_size) as usize;
    assert_eq!(old[..head], new[..head], "signing rewrote the image or metadata");
    assert!(after.signatures_size > 0);

    let both = allowed(t.dir.path(), "both", &[&alice, &bob]);
    let out = verify(&b, &both);
    out.assert_success();
    for who in ["signed by alice@example.org", "signed by bob@example.org"] {
        assert!(out.stdout().contains(who), "{who}\n{out}");
    }
    let inspect = run(bundle(&[OsStr::new("inspect"), b.as_os_str()]));
    assert!(inspect.assert_success().stdout().contains("SHA256:"), "inspect shows signers\n{inspect}");
    let info = run(&mut t.app(&b, Mode::Auto, &["--bundle-info"]));
    let json: serde_json::Value = serde_json::from_str(&info.assert_success().stdout()).unwrap();
    assert_eq!(json["signers"].as_array().map(Vec::len), Some(2), "{info}");

    // ssh-keygen checks our signature: the message is bytes 48..112 of the trailer.
    let message = new[new.len() - 80..new.len() - 16].to_vec();
    for (n, who) in [("1", "alice"), ("2", "bob")] {
        let sig = t.dir.join(format!("sig{n}"));
        let pem = run(bundle(&[OsStr::new("inspect"), OsStr::new("--signature"), OsStr::new(n), b.as_os_str()]));
        fs::write(&sig, pem.assert_success().stdout()).unwrap();
        let mut c = Command::new("ssh-keygen");
        c.args(["-Y", "verify", "-n", "bundle", "-I", &format!("{who}@example.org"), "-f"])
            .arg(&both)
            .arg("-s")
            .arg(&sig);
        let out = run_with(&mut c, Some(message.clone()), TIMEOUT);
        assert!(out.assert_success().stdout().contains("Good \"bundle\" signature"), "{out}");
    }

    // Only a key the file lists counts; signing twice with one key is refused.
    let carol = keygen(t.dir.path(), "carol");
    verify(&b, &allowed(t.dir.path(), "carol-only", &[&carol])).assert_bundle_error("by no key in");
    verify(app(), &both).assert_bundle_error("not signed");
    run(bundle(&[OsStr::new("sign"), OsStr::new("--key"), alice.private.as_os_str(), b.as_os_str()]))
        .assert_bundle_error("already signed");
}

#[test]
fn any_damaged_byte_fails_verification() {
    let t = Test::new("tamper");
    let alice = keygen(t.dir.path(), "alice");
    let b = signed_copy(t.dir.path(), "signed.sif", &[&alice]);
    let file = allowed(t.dir.path(), "allowed", &[&alice]);
    verify(&b, &file).assert_success();
    let tr = read_trailer(&b);
    let table = tr.image_offset + tr.image_size;
    let sigs = tr.metadata_offset + tr.metadata_size;
    let len = tr.file_len;
    let places = [
        ("stub", 1000),
        ("padding", tr.image_offset - 1),
        ("image", tr.image_offset + tr.image_size / 2),
        ("chunk table", table + 5),
        ("chunk table index", tr.metadata_offset - 3),
        ("metadata", tr.metadata_offset + tr.metadata_size / 2),
        ("signature", sigs + tr.signatures_size / 2),
        ("trailer image digest", len - 80),
        ("trailer signatures size", len - 16),
        ("end magic", len - 1),
    ];
    for (what, at) in places {
        let bad = patched_copy(&b, &t.dir.join("bad.sif"), |bytes| bytes[at as usize] ^= 0x04);
        let out = verify(&bad, &file);
        assert_eq!(out.code(), Some(255), "a damaged {what} (byte {at}) passed\n{out}");
        out.assert_bundle_error("bad.sif");
    }
    let cut = patched_copy(&b, &t.dir.join("cut.sif"), |bytes| bytes.truncate(bytes.len() - 200));
    verify(&cut, &file).assert_bundle_error("cut.sif");
}

#[test]
fn trust_policy_runs_only_bundles_an_allowed_key_signed() {
    let t = Test::new("policy");
    let (alice, mallory) = (keygen(t.dir.path(), "alice"), keygen(t.dir.path(), "mallory"));
    let policy = allowed(t.dir.path(), "allowed_signers", &[&alice]);
    let good = signed_copy(t.dir.path(), "good.sif", &[&alice]);
    let foreign = signed_copy(t.dir.path(), "foreign.sif", &[&mallory]);
    let unsigned = patched_copy(app(), &t.dir.join("unsigned.sif"), |_| {});
    let under_policy = |b: &Path| {
        let mut c = t.app(b, Mode::Extract, &["args", "x"]);
        c.env("BUNDLE_TRUST", &policy);
        run(c)
    };
    under_policy(&good).assert_success().assert_stdout("[x]\n");
    under_policy(&foreign).assert_bundle_error("not signed by any key in the trust policy");
    under_policy(&unsigned).assert_bundle_error("bundle sign");
    // Without a policy, unsigned bundles run as before.
    run(&mut t.app(&unsigned, Mode::Extract, &["args", "x"])).assert_success().assert_stdout("[x]\n");
}

/// The position in the file of byte 200,000 of `/data/a`, found by its content.
fn data_a_position(bytes: &[u8]) -> usize {
    let needle = &noise(1)[200_000..200_064];
    bytes.windows(needle.len()).position(|w| w == needle).expect("the noise is stored as it is")
}

#[test]
fn a_damaged_data_byte_is_an_io_error_in_fuse_mode() {
    require_fuse();
    let t = Test::new("eio-fuse");
    let bad = patched_copy(app(), &t.dir.join("bad.sif"), |b| {
        let at = data_a_position(b);
        b[at] ^= 0x01;
    });
    // stderr to a file: the FUSE server keeps a terminal or a file to tell on (a pipe
    // it must not hold), and programs of the image are not dumpable, so it cannot open
    // theirs.
    let err = t.work.join("stderr");
    let mut c = t.cmd("/bin/sh");
    set_mode(&mut c, Mode::Fuse);
    c.arg("-c").arg(r#"exec "$0" --bundle-exec /bin/cat /data/a 2>"$1""#).arg(&bad).arg(&err);
    let out = run(c);
    let err = fs::read_to_string(&err).unwrap();
    assert_ne!(out.code(), Some(0), "a damaged file was read whole\n{out}");
    assert!(err.contains("Input/output error"), "cat should see EIO: {err}\n{out}");
    let told: Vec<&str> = err.lines().filter(|l| l.contains("does not match its digest")).collect();
    assert_eq!(told.len(), 1, "one line about the chunk: {err}");
    assert!(told[0].starts_with("bundle: ") && told[0].contains("bad.sif") && told[0].contains(" byte "), "{err}");
    assert!(out.stdout.len() < 300 << 10, "the damaged part was served\n{out}");
    run(&mut t.app(&bad, Mode::Fuse, &["--bundle-exec", "/bin/cat", "/data/b"]))
        .assert_success()
        .assert_stdout("file b\n");
}

#[test]
fn a_damaged_data_byte_is_an_error_in_extract_mode() {
    let t = Test::new("eio-extract");
    let bad = patched_copy(app(), &t.dir.join("bad.sif"), |b| {
        let at = data_a_position(b);
        b[at] ^= 0x01;
    });
    run(&mut t.app(&bad, Mode::Extract, &["args", "x"])).assert_bundle_error("does not match its digest");
    let dir = t.dir.join("out");
    run(bundle(&[OsStr::new("extract"), bad.as_os_str(), dir.as_os_str()])).assert_bundle_error("digest");
}

#[test]
fn a_bundle_overwritten_in_place_gives_errors_not_other_bytes() {
    require_fuse();
    let t = Test::new("overwrite");
    let running = patched_copy(app(), &t.dir.join("app.sif"), |_| {});
    let other = build_app(t.dir.path(), "other", 2);
    // The keeper and the FUSE server run from a private copy of the stub, so nothing
    // executes the file and `cp` can rewrite it in place (same inode), as another NFS
    // client would; the application then reads a file it had not read yet.
    let script = "cat /data/b; echo ready; sleep 2; cat /data/a >/dev/null && echo read-all || echo read-failed";
    let err = t.work.join("stderr");
    let mut c = t.cmd("/bin/sh");
    set_mode(&mut c, Mode::Fuse);
    c.env("BUNDLE_LINGER", "5").arg("-c").arg(r#"exec "$0" --bundle-exec /bin/sh -c "$2" 2>"$1""#);
    c.arg(&running).arg(&err).arg(script);
    let mut app = Running::spawn(&mut c);
    app.wait_for_line("ready", TIMEOUT);
    let inode = fs::metadata(&running).unwrap().ino();
    assert_eq!(detached_from(&t, inode), 2, "a keeper and a FUSE server");
    fs::write(&running, fs::read(&other).unwrap()).unwrap();
    assert_eq!(fs::metadata(&running).unwrap().ino(), inode, "rewritten in place");
    let out = app.finish(TIMEOUT);
    let err = fs::read_to_string(&err).unwrap();
    assert!(out.stdout().contains("read-failed"), "the application read the rewritten file\n{out}\n{err}");
    assert!(err.contains("changed while in use"), "{err}");
    // The next start sees the new file.
    run(&mut t.app(&running, Mode::Fuse, &["--bundle-exec", "/bin/cat", "/data/b"])).assert_success();
}

/// Checks that the keeper and FUSE server of test `t` map no page of the file with
/// inode `ino` and that their executable is a memfd, not that file; returns how many
/// such processes there are.
fn detached_from(t: &Test, ino: u64) -> usize {
    let mut seen = 0;
    for (pid, _) in t.processes() {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !matches!(comm.trim(), "bundle-keeper" | "bundle-fuse") {
            continue;
        }
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let of_file = maps.lines().filter(|l| l.split_whitespace().nth(4) == Some(&ino.to_string())).count();
        assert_eq!(of_file, 0, "{} maps the bundle file:\n{maps}", comm.trim());
        let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(exe.to_string_lossy().starts_with("/memfd:bundle-keeper"), "{}: exe {}", comm.trim(), exe.display());
        seen += 1;
    }
    seen
}

#[test]
fn the_sbom_names_the_rpms_and_the_host_packages_of_the_closure() {
    let t = Test::new("sbom");
    let rpms = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-rpm");
    let out = t.dir.join("hello.sif");
    Build::new()
        .arg(rpms.join("hello-rpm-1.0-1.x86_64.rpm"))
        .arg(rpms.join("hello-rpm-libs-1.0-1.x86_64.rpm"))
        .arg("--include")
        .arg("/usr/bin/ls")
        .build(&out);
    let sbom = run(bundle(&[OsStr::new("inspect"), OsStr::new("--sbom"), out.as_os_str()]));
    let doc: serde_json::Value = serde_json::from_str(&sbom.assert_success().stdout()).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let packages = doc["packages"].as_array().unwrap();
    let named = |n: &str| packages.iter().find(|p| p["name"] == n).cloned();
    let hello = named("hello-rpm").unwrap_or_else(|| panic!("no hello-rpm package\n{sbom}"));
    assert_eq!(hello["versionInfo"], "1.0-1");
    assert_eq!(hello["checksums"][0]["algorithm"], "SHA256");
    assert!(named("hello-rpm-libs").is_some(), "{sbom}");
    let files = doc["files"].as_array().unwrap();
    assert!(files.iter().any(|f| f["fileName"] == "./usr/bin/ls"), "{sbom}");
    if Path::new("/var/lib/dpkg/status").exists() {
        // Debian: ls comes from coreutils, its C library from libc6.
        for pkg in ["coreutils", "libc6"] {
            let p = named(pkg).unwrap_or_else(|| panic!("no host package {pkg}\n{sbom}"));
            assert!(p["versionInfo"].as_str().is_some_and(|v| !v.is_empty()), "{p}");
        }
    }
}

#[test]
fn version_1_bundles_still_run_and_verify() {
    let t = Test::new("version-1");
    // A version-1 reader ignores what lies between image and metadata and the metadata's
    // `integrity`: the same file with version 1 in its trailer is a version-1 bundle.
    let old = patched_copy(app(), &t.dir.join("v1.sif"), |b| {
        let at = b.len() - TRAILER_LEN as usize + 8;
        b[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    });
    assert_eq!(read_trailer(&old).version, 1);
    run(&mut t.app(&old, Mode::Extract, &["args", "x"])).assert_success().assert_stdout("[x]\n");
    if fuse_usable() {
        run(&mut t.app(&old, Mode::Fuse, &["--bundle-exec", "/bin/cat", "/data/b"])).assert_success();
    }
    run(bundle(&[OsStr::new("verify"), old.as_os_str()])).assert_success();
    let key = keygen(t.dir.path(), "alice");
    run(bundle(&[OsStr::new("sign"), OsStr::new("--key"), key.private.as_os_str(), old.as_os_str()]))
        .assert_bundle_error("version-1");
}
