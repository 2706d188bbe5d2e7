//! Finding the runtime stub that goes at the head of every bundle.
//!
//! The stub is a separate static binary (`bundle-runtime`, built for musl) so that one
//! build of it serves every bundle of a release and `bundle restub` can swap it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const STUB_NAME: &str = "bundle-runtime";

/// `--stub`, else `$BUNDLE_STUB`, else next to this executable, else where a cargo
/// build of this workspace puts it.
pub fn locate(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("BUNDLE_STUB").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(STUB_NAME),
        dir.join("../x86_64-unknown-linux-musl/stub").join(STUB_NAME),
        dir.join("../../x86_64-unknown-linux-musl/stub").join(STUB_NAME),
    ];
    // A cargo build of the workspace also leaves a dynamically linked host build of the
    // stub next to `bundle`: only a static one will do.
    for c in &candidates {
        if std::fs::read(c).is_ok_and(|b| is_static_elf(&b)) {
            return Ok(c.clone());
        }
    }
    bail!(
        "the runtime stub `{STUB_NAME}` was not found next to `bundle` or in the build tree; \
         build it with `cargo build --profile stub --target x86_64-unknown-linux-musl -p runtime-stub`, \
         or give its path with --stub or BUNDLE_STUB"
    )
}

/// Reads the stub and checks that it is an ELF executable and not itself a bundle.
pub fn load(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read runtime stub {}", path.display()))?;
    if !bytes.starts_with(b"\x7fELF") {
        bail!("runtime stub {} is not an ELF executable", path.display());
    }
    if !is_static_elf(&bytes) {
        bail!(
            "runtime stub {} is dynamically linked; a bundle must not depend on the host's libraries \
             (build it with --target x86_64-unknown-linux-musl)",
            path.display()
        );
    }
    if bytes.len() >= bundle_format::TRAILER_LEN
        && bytes[bytes.len() - bundle_format::TRAILER_LEN..].starts_with(&bundle_format::MAGIC)
    {
        bail!("{} is a bundle, not a runtime stub", path.display());
    }
    Ok(bytes)
}

/// An ELF file without a program interpreter (PT_INTERP) needs no dynamic loader.
fn is_static_elf(bytes: &[u8]) -> bool {
    match goblin::elf::Elf::parse(bytes) {
        Ok(elf) => elf.interpreter.is_none() && elf.is_64 && elf.header.e_machine == goblin::elf::header::EM_X86_64,
        Err(_) => false,
    }
}
