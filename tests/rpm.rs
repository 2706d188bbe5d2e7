//! Issue 3, end to end: `bundle build app.rpm -o app.sif` with RPM inputs and the library
//! closure, run as an ordinary user in fuse and extract modes.
//!
//! Good packages are built here with `rpmbuild` (Debian's `rpm` package) in every payload
//! compression it writes; hostile ones with the `rpm` crate's builder, which writes real,
//! correctly digested packages but lets a test choose paths that rpmbuild would clean up.
//! The closure is proven by running dynamically linked programs inside bundles whose root
//! is only their image: the host's `/usr/lib` is not visible there.

use e2e::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BOTH: [Mode; 2] = [Mode::Fuse, Mode::Extract];

fn require_rpmbuild() {
    let ok = Command::new("rpmbuild").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "rpmbuild is missing (Debian package rpm): run the suite with ./scripts/test");
}

/// `examples/hello-rpm/*.rpm`, as the README's first command uses them.
fn example_rpms() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-rpm");
    let mut rpms: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some(OsStr::new("rpm")))
        .collect();
    rpms.sort();
    assert_eq!(rpms.len(), 2, "examples/hello-rpm should hold two .rpm files: {rpms:?}");
    rpms
}

/// Runs a bundle in every mode as the test user and checks its output.
fn runs_in_both_modes(t: &Test, bundle: &Path, args: &[&str], stdout: &str) {
    for mode in BOTH {
        if mode == Mode::Fuse {
            require_fuse();
        }
        let out = run(&mut t.app(bundle, mode, args));
        out.assert_success().assert_stdout(stdout);
    }
}

fn inspect_json(bundle: &Path) -> Value {
    let out = run(e2e::bundle(&[OsStr::new("inspect"), OsStr::new("--json"), bundle.as_os_str()]));
    out.assert_success();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
}

// ---------------------------------------------------------------------------------------
// Packages built with rpmbuild

/// A dynamically linked C program (it needs the host's libm and libc), started by a
/// shell script that checks, inside the bundle, what the package laid out.
const TOOL_C: &str = r#"
#include <math.h>
#include <stdio.h>
int main(int argc, char **argv) {
    (void)argv;
    printf("tool: sqrt(%d) = %.3f\n", argc + 1, sqrt((double)(argc + 1)));
    return 0;
}
"#;

const TOOL_SH: &str = r#"#!/bin/sh
fail() { echo "check failed: $*"; exit 1; }
[ -d /var/lib/rpmtest/empty ] || fail "empty directory"
[ -L /usr/share/rpmtest/link ] || fail "symlink"
[ /usr/share/rpmtest/link -ef /usr/share/rpmtest/a ] || fail "symlink target"
[ ! -e /var/log/rpmtest.log ] || fail "a %ghost file was extracted"
read conf < /etc/rpmtest.conf
read data < /usr/share/rpmtest/b
read same < /usr/share/rpmtest/a
[ "$data" = "$same" ] || fail "hard link content"
echo "layout ok, config: $conf, data: $data"
exec /usr/libexec/rpmtest/tool "$@"
"#;

fn spec(name: &str, payload: &str) -> String {
    format!(
        r#"Name: {name}
Version: 2.0
Release: 3
Summary: bundle test package
License: MIT
BuildArch: x86_64
%define debug_package %{{nil}}
%define _build_id_links none
%define _binary_payload {payload}
%description
Test package.
%prep
%build
gcc -O2 -o tool %{{_sourcedir}}/tool.c -lm
%install
install -D -m 0755 tool %{{buildroot}}/usr/libexec/rpmtest/tool
install -D -m 0755 %{{_sourcedir}}/tool.sh %{{buildroot}}/usr/bin/rpmtest
install -D -m 0644 /dev/null %{{buildroot}}/usr/share/rpmtest/a
echo hard-linked > %{{buildroot}}/usr/share/rpmtest/a
ln %{{buildroot}}/usr/share/rpmtest/a %{{buildroot}}/usr/share/rpmtest/b
ln -s a %{{buildroot}}/usr/share/rpmtest/link
mkdir -p %{{buildroot}}/var/lib/rpmtest/empty %{{buildroot}}/var/log
mkdir -p %{{buildroot}}/etc
echo from-config > %{{buildroot}}/etc/rpmtest.conf
touch %{{buildroot}}/var/log/rpmtest.log
%files
/usr/bin/rpmtest
/usr/libexec/rpmtest/tool
/usr/share/rpmtest/a
/usr/share/rpmtest/b
/usr/share/rpmtest/link
%dir /var/lib/rpmtest/empty
%config(noreplace) /etc/rpmtest.conf
%ghost /var/log/rpmtest.log
"#
    )
}

/// Builds the test package with the given `_binary_payload` into `dir`.
fn rpmbuild(dir: &Path, name: &str, payload: &str) -> PathBuf {
    require_rpmbuild();
    let top = dir.join(format!("rpmbuild-{name}"));
    let src = top.join("SOURCES");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("tool.c"), TOOL_C).unwrap();
    fs::write(src.join("tool.sh"), TOOL_SH).unwrap();
    let spec_path = top.join(format!("{name}.spec"));
    fs::write(&spec_path, spec(name, payload)).unwrap();
    let out = run(Command::new("rpmbuild")
        .args(["-bb", "--nodeps", "--quiet", "--define"])
        .arg(format!("_topdir {}", top.display()))
        .arg(&spec_path));
    out.assert_success();
    let rpm = top.join(format!("RPMS/x86_64/{name}-2.0-3.x86_64.rpm"));
    assert!(rpm.is_file(), "rpmbuild made no {}\n{out}", rpm.display());
    rpm
}

fn payload_round_trip(name: &str, payload: &str, compressor: &str) {
    let t = Test::new(name);
    let rpm = rpmbuild(t.dir.path(), name, payload);
    let q = run(Command::new("rpm").args(["-qp", "--qf", "%{PAYLOADCOMPRESSOR}"]).arg(&rpm));
    q.assert_success().assert_stdout(compressor);
    let out = t.dir.join(format!("{name}.sif"));
    // The only executable in a bin directory is the default entrypoint.
    Build::new().arg(&rpm).build(&out);
    runs_in_both_modes(&t, &out, &["x"], "layout ok, config: from-config, data: hard-linked\ntool: sqrt(3) = 1.732\n");
    assert_hard_linked(&out, &t.dir.join("unsquashed"), "usr/share/rpmtest/a", "usr/share/rpmtest/b");
    let meta = inspect_json(&out);
    assert_eq!(meta["entrypoint"], serde_json::json!(["/usr/bin/rpmtest"]));
    assert_eq!(meta["inputs"][0]["kind"], "rpm");
    assert_eq!(meta["inputs"][0]["nevra"], format!("{name}-2.0-3.x86_64"));
    assert_eq!(meta["inputs"][0]["sha256"].as_str().map(str::len), Some(64));
}

/// The two paths are one inode in the image, as squashfs-tools read it. (Checked on the
/// image itself: the runtime's FUSE server and extract cache show hard links as separate
/// files, which `[ a -ef b ]` inside the bundle would report.)
fn assert_hard_linked(bundle: &Path, dest: &Path, a: &str, b: &str) {
    use std::os::unix::fs::MetadataExt;
    let offset = read_trailer(bundle).image_offset.to_string();
    run(Command::new("unsquashfs")
        .args(["-no-progress", "-d"])
        .arg(dest)
        .args(["-o", &offset])
        .arg(bundle)
        .args([a, b]))
    .assert_success();
    let (ma, mb) = (fs::metadata(dest.join(a)).unwrap(), fs::metadata(dest.join(b)).unwrap());
    assert_eq!((ma.ino(), ma.nlink()), (mb.ino(), 2), "{a} and {b} should be hard links of one file");
}

#[test]
fn gzip_payload() {
    payload_round_trip("rpmtest-gzip", "w9.gzdio", "gzip");
}

#[test]
fn xz_payload() {
    payload_round_trip("rpmtest-xz", "w6.xzdio", "xz");
}

#[test]
fn zstd_payload() {
    payload_round_trip("rpmtest-zstd", "w19.zstdio", "zstd");
}

#[test]
fn bzip2_payload() {
    payload_round_trip("rpmtest-bzip2", "w9.bzdio", "bzip2");
}

// ---------------------------------------------------------------------------------------
// The example and the closure

fn example_bundle() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = shared_dir().join("hello.sif");
        Build::new().args(example_rpms()).build(&out)
    })
}

#[test]
fn example_runs_with_its_own_library_and_the_hosts_libm() {
    let t = Test::new("example");
    let greeting = "Hello, bundle, from libhello 1.0 (the square root of your name's length is 2.449)\n";
    runs_in_both_modes(&t, example_bundle(), &[], greeting);
    let meta = inspect_json(example_bundle());
    assert_eq!(meta["entrypoint"], serde_json::json!(["/usr/bin/hello"]));
    let nevras: Vec<&str> = meta["inputs"].as_array().unwrap().iter().map(|i| i["nevra"].as_str().unwrap()).collect();
    assert_eq!(nevras, ["hello-rpm-1.0-1.x86_64", "hello-rpm-libs-1.0-1.x86_64"]);
    let provided = meta["provided"].as_array().unwrap();
    let reason_of = |suffix: &str| -> String {
        provided
            .iter()
            .find(|p| p["path"].as_str().unwrap().ends_with(suffix))
            .map(|p| p["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("nothing provided for {suffix}: {provided:#?}"))
    };
    assert_eq!(reason_of("/libm.so.6"), "needed by /usr/lib64/libhello.so.1.0.0");
    assert!(reason_of("/ld-linux-x86-64.so.2").contains("program interpreter of /usr/libexec/hello-rpm/hello"));
    assert!(reason_of("/dash").contains("interpreter of /usr/bin/hello"));
    assert!(reason_of("/gconv-modules").contains("gconv"));
    assert!(reason_of("/libnss_files.so.2").contains("NSS"));
    // The human-readable form shows the same provenance.
    let human = run(e2e::bundle(&[OsStr::new("inspect"), example_bundle().as_os_str()]));
    human.assert_success();
    assert!(human.stdout().contains("input:       rpm hello-rpm-libs-1.0-1.x86_64 sha256:"), "{human}");
    assert!(human.stdout().contains("needed by /usr/lib64/libhello.so.1.0.0"), "{human}");
}

/// Without the closure the same packages cannot run: the bundle's root is its image, and
/// the host's loader, shell and libraries are not there.
#[test]
fn without_the_closure_the_host_libraries_are_not_visible() {
    let t = Test::new("no-closure");
    let out = t.dir.join("bare.sif");
    Build::new().args(example_rpms()).arg("--no-closure").build(&out);
    for mode in BOTH {
        if mode == Mode::Fuse {
            require_fuse();
        }
        let r = run(&mut t.app(&out, mode, &[] as &[&str]));
        assert!(!r.status.success(), "a bundle without its closure should not run\n{r}");
    }
    let meta = inspect_json(&out);
    assert_eq!(meta["provided"], serde_json::json!([]));
}

/// Several packages plus other inputs in one bundle, `-e` naming a program, `--include`
/// bringing a host program with its own closure.
#[test]
fn rpms_combine_with_other_inputs_and_include() {
    let t = Test::new("combine");
    let extra = t.dir.join("note.txt");
    fs::write(&extra, "a note\n").unwrap();
    let out = t.dir.join("combined.sif");
    Build::new()
        .args(example_rpms())
        .arg("--file")
        .arg(format!("{}=/usr/share/doc/note.txt", extra.display()))
        .args(["--include", "/usr/bin/cat"])
        .entrypoint("/usr/libexec/hello-rpm/hello")
        .build(&out);
    runs_in_both_modes(
        &t,
        &out,
        &["Ada"],
        "Hello, Ada, from libhello 1.0 (the square root of your name's length is 1.732)\n",
    );
    for mode in BOTH {
        let r = run(&mut t.app(&out, mode, &["--bundle-exec", "/usr/bin/cat", "/usr/share/doc/note.txt"]));
        r.assert_success().assert_stdout("a note\n");
    }
    let meta = inspect_json(&out);
    let kinds: Vec<&str> = meta["inputs"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rpm", "rpm", "file"]);
    let provided = meta["provided"].as_array().unwrap();
    assert!(provided.iter().any(|p| p["path"] == "/usr/bin/cat" && p["reason"] == "--include"), "{provided:#?}");
}

// ---------------------------------------------------------------------------------------
// Missing libraries

/// A program linked against a library that is then deleted: the build host cannot
/// provide it.
fn program_with_a_deleted_library(dir: &Path) -> PathBuf {
    fs::write(dir.join("gone.c"), "int gone(void) { return 7; }\n").unwrap();
    fs::write(dir.join("needy.c"), "int gone(void);\nint main(void) { return gone(); }\n").unwrap();
    let lib = dir.join("libgone.so");
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libgone.so.1", "-o"])
        .arg(&lib)
        .arg(dir.join("gone.c")))
    .assert_success();
    let prog = dir.join("needy");
    run(Command::new("gcc").arg("-o").arg(&prog).arg(dir.join("needy.c")).arg(&lib)).assert_success();
    fs::remove_file(&lib).unwrap();
    prog
}

#[test]
fn missing_library_is_one_error_and_allow_missing_builds() {
    let d = TestDir::new("missing-lib");
    let prog = program_with_a_deleted_library(d.path());
    let outdir = d.join("out");
    fs::create_dir(&outdir).unwrap();
    let out = outdir.join("needy.sif");
    let spec = format!("{}=/usr/bin/needy", prog.display());
    let r = Build::new().arg("--file").arg(&spec).run(&out);
    r.assert_bundle_error("/usr/bin/needy needs libgone.so.1");
    assert!(r.stderr().contains("--allow-missing"), "the error should say how to build anyway\n{r}");
    assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0, "a failed build must leave no file");

    let r = Build::new().arg("--file").arg(&spec).arg("--allow-missing").run(&out);
    r.assert_success();
    assert!(r.stderr().contains("warning") && r.stderr().contains("libgone.so.1"), "expected a warning\n{r}");
    assert!(out.is_file());
}

// ---------------------------------------------------------------------------------------
// Bad packages: one line naming the package and the entry, no output file

mod hostile {
    use super::*;
    use rpm::{BuildConfig, CompressionType, FileOptions, PackageBuilder};

    fn package(dir: &Path, name: &str, fill: impl FnOnce(&mut PackageBuilder)) -> PathBuf {
        let mut b = PackageBuilder::new(name, "1.0", "MIT", "x86_64", "hostile test package");
        b.using_config(BuildConfig::default().compression(CompressionType::Gzip));
        fill(&mut b);
        let pkg = b.build().expect("build test package");
        let path = dir.join(format!("{name}.rpm"));
        pkg.write_file(&path).expect("write test package");
        path
    }

    /// Builds and expects the error contract, naming every needle, and no output file.
    fn refused(d: &TestDir, rpms: &[&Path], needles: &[&str]) {
        let outdir = d.join("out");
        fs::create_dir_all(&outdir).unwrap();
        let r = Build::new().args(rpms).entrypoint("/usr/bin/app").run(&outdir.join("x.sif"));
        r.assert_bundle_error(needles[0]);
        for n in &needles[1..] {
            assert!(r.stderr().contains(n), "the error should mention {n:?}\n{r}");
        }
        assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0, "a failed build must leave no file");
    }

    #[test]
    fn dotdot_path() {
        let d = TestDir::new("dotdot");
        let rpm = package(d.path(), "evil-dotdot", |b| {
            b.with_file_contents("#!/bin/sh\n", FileOptions::new("/usr/bin/app").permissions(0o755)).unwrap();
            b.with_file_contents("owned", FileOptions::new("/usr/share/../../../etc/evil")).unwrap();
        });
        refused(&d, &[&rpm], &["evil-dotdot.rpm", "/usr/share/../../../etc/evil", ".."]);
    }

    #[test]
    fn file_through_a_symlink() {
        let d = TestDir::new("through-link");
        let rpm = package(d.path(), "evil-link", |b| {
            b.with_symlink(FileOptions::symlink("/opt/app", "/etc")).unwrap();
            b.with_file_contents("owned", FileOptions::new("/opt/app/passwd")).unwrap();
        });
        refused(&d, &[&rpm], &["evil-link.rpm", "/opt/app/passwd", "/opt/app is a symlink"]);
    }

    #[test]
    fn conflicting_packages() {
        let d = TestDir::new("conflict");
        let a = package(d.path(), "first", |b| {
            b.with_file_contents("one\n", FileOptions::new("/etc/app.conf")).unwrap();
        });
        let b = package(d.path(), "second", |b| {
            b.with_file_contents("two\n", FileOptions::new("/etc/app.conf")).unwrap();
        });
        refused(&d, &[&a, &b], &["/etc/app.conf", "first.rpm", "second.rpm"]);
    }

    #[test]
    fn several_entrypoint_candidates_need_e() {
        let d = TestDir::new("two-bins");
        let rpm = package(d.path(), "two-bins", |b| {
            for p in ["/usr/bin/one", "/usr/sbin/two"] {
                b.with_file_contents("#!/bin/sh\n", FileOptions::new(p).permissions(0o755)).unwrap();
            }
        });
        let outdir = d.join("out");
        fs::create_dir_all(&outdir).unwrap();
        let r = Build::new().arg(&rpm).run(&outdir.join("x.sif"));
        r.assert_bundle_error("-e");
        assert!(r.stderr().contains("/usr/bin/one") && r.stderr().contains("/usr/sbin/two"), "{r}");
        assert_eq!(fs::read_dir(&outdir).unwrap().count(), 0);
    }

    #[test]
    fn truncated_package() {
        let d = TestDir::new("truncated");
        let whole = fs::read(&example_rpms()[0]).unwrap();
        for (name, len) in [("cut-payload.rpm", whole.len() - 200), ("cut-header.rpm", 500)] {
            let p = d.join(name);
            fs::write(&p, &whole[..len]).unwrap();
            refused(&d, &[&p], &[name]);
        }
        let r = Build::new().arg(d.join("cut-payload.rpm")).run(&d.join("y.sif"));
        assert!(r.stderr().contains("truncated"), "{r}");
    }
}
