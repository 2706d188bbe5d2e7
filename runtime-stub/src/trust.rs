//! The trust policy: with an allowed-signers file in place, a bundle that no key of it
//! signed does not start.
//!
//! The file is the first of `$BUNDLE_TRUST`, `~/.config/bundle/allowed_signers` and
//! `/etc/bundle/allowed_signers` that is there (`$BUNDLE_TRUST` must be); with none,
//! every bundle runs, signed or not. A bundle is accepted when one of its signatures
//! is by a key the file lists for namespace `bundle` and checks out over the trailer's
//! digests (whose metadata digest was checked when the bundle was opened, and which
//! covers the chunk table that the image's reads are checked against).
//!
//! Why not the `ssh-key` crate (which `bundle sign` uses): measured with the stub's
//! profile (musl, opt-level z, LTO, strip), a program that hashes with sha2 and prints
//! is 389,152 bytes; with an ed25519-dalek `verify_strict` 434,240 (+45 KB); with
//! ssh-key's `SshSig::from_pem` and `PublicKey::verify` 491,584 (+102 KB). The stub
//! must stay under 1 MiB, so the parsing is bundle-format's (no crypto) and the check
//! is `ed25519-dalek` alone: only ed25519 keys are accepted here.

use crate::fail::{Error, Result};
use crate::integrity::name;
use bundle_format::signatures::{parse_region, AllowedSigners, Signature};
use bundle_format::Bundle;
use ed25519_dalek::{Signature as Ed25519Signature, VerifyingKey};
use std::path::PathBuf;

/// Refuses `bundle` when a policy file is in place and no key of it signed the bundle.
pub fn check(bundle: &Bundle) -> Result<()> {
    let Some(file) = policy_file() else { return Ok(()) };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error(format!("cannot read the trust policy {}: {e}", file.display())))?;
    let allowed = AllowedSigners::parse(&text)
        .map_err(|e| Error(format!("the trust policy {} is not an allowed-signers file: {e}", file.display())))?;
    if signed_by(bundle, &allowed) {
        return Ok(());
    }
    Err(Error(format!(
        "{}: not signed by any key in the trust policy {}; refusing to run it (have it signed with `bundle sign \
         --key KEY`, or add its signer to that file)",
        name(),
        file.display()
    )))
}

fn policy_file() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("BUNDLE_TRUST").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config/bundle"));
    [home, Some(PathBuf::from("/etc/bundle"))]
        .into_iter()
        .flatten()
        .map(|d| d.join("allowed_signers"))
        .find(|p| p.exists())
}

/// Whether a key of `allowed` made one of the bundle's signatures.
fn signed_by(bundle: &Bundle, allowed: &AllowedSigners) -> bool {
    let Ok(sigs) = parse_region(&bundle.signatures) else { return false };
    let message = bundle.trailer.signed_message();
    sigs.iter().any(|s| allowed.principals(&s.key).is_some() && valid(s, &message))
}

fn valid(s: &Signature, message: &[u8]) -> bool {
    let (Some((key, sig)), Some(data)) = (s.ed25519(), s.signed_data(message)) else { return false };
    let Ok(key) = VerifyingKey::from_bytes(&key) else { return false };
    s.namespace == bundle_format::signatures::NAMESPACE
        && key.verify_strict(&data, &Ed25519Signature::from_bytes(&sig)).is_ok()
}

/// The bundle's signers, as `--bundle-info` shows them: keys, unchecked.
pub fn signers(bundle: &Bundle) -> Vec<String> {
    parse_region(&bundle.signatures)
        .map(|sigs| sigs.iter().map(|s| format!("{} {}", s.key_type(), s.fingerprint())).collect())
        .unwrap_or_else(|e| vec![e.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    // From `ssh-keygen -t ed25519` and `ssh-keygen -Y sign -n bundle` over "hello\n"
    // (bundle-format's test data).
    const SIG: &str = include_str!("../../format/testdata/hello.sig");

    #[test]
    fn checks_an_ssh_keygen_signature() {
        let s = &parse_region(SIG.as_bytes()).unwrap()[0];
        assert!(valid(s, b"hello\n"));
        assert!(!valid(s, b"hello!"));
        let mut other_namespace = s.clone();
        other_namespace.namespace = "git".into();
        assert!(!valid(&other_namespace, b"hello\n"));
    }
}
