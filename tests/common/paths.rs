//! Where things are.

use super::*;

/// `target/<profile>`: the directory holding `deps/`, which holds this test binary.
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("deps directory");
    deps.parent().expect("profile directory").to_path_buf()
}

/// The `bundle` CLI built by `cargo build -p bundler`.
pub fn bundle_bin() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = target_profile_dir().join("bundle");
        assert!(p.is_file(), "{} is missing: {RUN_SUITE}", p.display());
        p
    })
}

/// The static runtime stub (`$BUNDLE_STUB`, else the `stub` profile's musl build),
/// copied once into [`shared_dir`]: every bundle of this test run gets the same stub,
/// even if the build tree's copy is rebuilt meanwhile.
pub fn stub_bin() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = match std::env::var_os("BUNDLE_STUB").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => target_profile_dir().join("../x86_64-unknown-linux-musl/stub/bundle-runtime"),
        };
        assert!(p.is_file(), "the runtime stub {} is missing: {RUN_SUITE}", p.display());
        let copy = shared_dir().join("bundle-runtime");
        fs::copy(&p, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", p.display()));
        copy
    })
}

/// busybox from `busybox-static`: the shell and tools of the test images.
pub fn busybox() -> &'static Path {
    let p = Path::new("/bin/busybox");
    assert!(p.is_file(), "/bin/busybox is missing (Debian package busybox-static): {RUN_SUITE}");
    p
}

/// `tests/programs/probe.c`, compiled once per test binary with `gcc -static -O2` into
/// [`shared_dir`].
pub fn probe() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("programs/probe.c");
        let out = shared_dir().join("probe");
        let tmp = shared_dir().join("probe.tmp");
        let result =
            run_with(Command::new("gcc").args(["-static", "-O2", "-Wall", "-o"]).arg(&tmp).arg(&src), None, TIMEOUT);
        assert!(result.status.success(), "cannot compile the probe (gcc and libc6-dev needed): {RUN_SUITE}\n{result}");
        fs::rename(&tmp, &out).expect("publish the probe");
        out
    })
}
