//! `bundle sign` and the signature half of `bundle verify`.
//!
//! A signature is OpenSSH's `sshsig` (namespace `bundle`) over the trailer's image and
//! metadata digests (`Trailer::signed_message`); the metadata holds the chunk table's
//! and the stub's digests, so one signature covers every byte before the signatures.
//! Signing appends a signature and rewrites the trailer, never the image: the new file
//! is the old one's bytes up to the signatures, then the signatures and a new trailer,
//! written beside it and renamed over it, so that a job running the old file keeps it.

use crate::inspect::open;
use anyhow::{anyhow, bail, Context, Result};
use bundle_format::signatures::{parse_region, AllowedSigners, Signature, NAMESPACE};
use bundle_format::{Bundle, Trailer};
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn sign(path: &Path, key_path: &Path) -> Result<()> {
    let b = open(path)?;
    if b.trailer.version < 2 {
        bail!("{}: a version-1 bundle cannot be signed; rebuild it with this `bundle`", path.display());
    }
    b.verify_all().with_context(|| format!("{}: refusing to sign", path.display()))?;
    let key = PrivateKey::read_openssh_file(key_path)
        .with_context(|| format!("cannot read the OpenSSH private key {}", key_path.display()))?;
    if key.is_encrypted() {
        bail!(
            "{}: the key is protected by a passphrase, which `bundle sign` cannot ask for; sign with a copy \
             without one (ssh-keygen -p -N '' -f COPY)",
            key_path.display()
        );
    }
    let pem = key
        .sign(NAMESPACE, HashAlg::Sha512, &b.trailer.signed_message())
        .and_then(|s| s.to_pem(LineEnding::LF))
        .with_context(|| format!("cannot sign with {}", key_path.display()))?;
    let existing = parse_region(&b.signatures).with_context(|| format!("{}", path.display()))?;
    let new = parse_region(pem.as_bytes()).context("the new signature")?.remove(0);
    if existing.iter().any(|s| s.key == new.key) {
        bail!("{}: already signed by {}", path.display(), new.fingerprint());
    }
    let region = [b.signatures.as_slice(), pem.as_bytes()].concat();
    replace_signatures(path, &b, &region)?;
    println!("{}: signed by {} {}", path.display(), new.key_type(), new.fingerprint());
    Ok(())
}

/// Writes the file anew with `region` as its signatures, and renames it over `path`.
fn replace_signatures(path: &Path, b: &Bundle, region: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let head = b.trailer.signatures_offset();
    let mut src = &b.file;
    src.rewind()?;
    // io::copy between files uses copy_file_range: the image is not read into memory.
    let copied = io::copy(&mut src.take(head), tmp.as_file_mut())?;
    if copied != head {
        bail!("{}: the file shrank while being signed", path.display());
    }
    let trailer = Trailer { signatures_size: region.len() as u64, ..b.trailer };
    let f = tmp.as_file_mut();
    f.write_all(region)?;
    f.write_all(&trailer.encode())?;
    f.sync_all()?;
    let mode = b.file.metadata()?.permissions().mode();
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.persist(path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Who signed a bundle: a checked signature and, when an allowed-signers file was
/// given and lists the key, its principals.
pub struct Signer {
    pub key: String,
    pub principals: Option<String>,
}

/// Checks every signature of the bundle (each must be valid, whoever made it) and
/// returns the signers.
pub fn check_signatures(path: &Path, b: &Bundle, allowed: Option<&AllowedSigners>) -> Result<Vec<Signer>> {
    let sigs = parse_region(&b.signatures).with_context(|| format!("{}", path.display()))?;
    let message = b.trailer.signed_message();
    sigs.iter()
        .enumerate()
        .map(|(n, s)| {
            check_one(s, &message)
                .with_context(|| format!("{}: signature {} of {}", path.display(), n + 1, sigs.len()))?;
            let key = format!("{} {}", s.key_type(), s.fingerprint());
            Ok(Signer { key, principals: allowed.and_then(|a| a.principals(&s.key)).map(str::to_string) })
        })
        .collect()
}

fn check_one(s: &Signature, message: &[u8]) -> Result<()> {
    if s.namespace != NAMESPACE {
        bail!("made for namespace {:?}, not {NAMESPACE:?}", s.namespace);
    }
    let sig = SshSig::from_pem(&s.pem).map_err(|e| anyhow!("cannot be parsed: {e}"))?;
    PublicKey::from(sig.public_key().clone())
        .verify(NAMESPACE, message, &sig)
        .map_err(|_| anyhow!("by {} does not match the bundle", s.fingerprint()))
}

pub fn read_allowed_signers(path: &Path) -> Result<AllowedSigners> {
    let mut text = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .with_context(|| format!("cannot read the allowed signers {}", path.display()))?;
    AllowedSigners::parse(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::private::Ed25519Keypair;

    /// What ssh-key signs is what bundle-format (and so the runtime stub) reconstructs.
    #[test]
    fn bundle_format_agrees_with_ssh_key() {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
        let message = [9u8; 64];
        let pem = key.sign(NAMESPACE, HashAlg::Sha512, &message).unwrap().to_pem(LineEnding::LF).unwrap();
        let s = &parse_region(pem.as_bytes()).unwrap()[0];
        assert_eq!(
            s.signed_data(&message).unwrap(),
            SshSig::signed_data(NAMESPACE, HashAlg::Sha512, &message).unwrap()
        );
        assert_eq!(s.key, key.public_key().to_bytes().unwrap());
        check_one(s, &message).unwrap();
        assert!(check_one(s, &[8u8; 64]).is_err());
    }
}
