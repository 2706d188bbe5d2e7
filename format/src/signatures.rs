//! Signatures and who may sign: OpenSSH's `sshsig` format (PROTOCOL.sshsig in
//! OpenSSH's sources) and its allowed-signers file (ssh-keygen(1), "ALLOWED SIGNERS").
//!
//! A bundle's signatures region is zero or more armored signatures, one after another:
//!
//! ```text
//! -----BEGIN SSH SIGNATURE-----
//! base64 of the sshsig blob, in lines
//! -----END SSH SIGNATURE-----
//! ```
//!
//! each made with namespace [`NAMESPACE`] over [`crate::Trailer::signed_message`], so
//! `ssh-keygen -Y verify -n bundle` checks one as it checks any file signature. This
//! module only parses: the cryptography is the caller's (`ssh-key` in the bundler,
//! `ed25519-dalek` alone in the runtime stub), and so is the decision of what to trust.

use base64ct::{Base64, Base64Unpadded, Encoding};
use sha2::{Digest, Sha256, Sha512};
use std::fmt;

/// The sshsig namespace of bundle signatures: a signature made for another purpose
/// (`git`, `file`) never counts as one of a bundle.
pub const NAMESPACE: &str = "bundle";
const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const END: &str = "-----END SSH SIGNATURE-----";
const PREAMBLE: &[u8; 6] = b"SSHSIG";

/// One signature of the region, parsed but not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signer's public key, as an SSH key blob (`string type, ...`).
    pub key: Vec<u8>,
    pub namespace: String,
    /// `sha256` or `sha512`: what the message is hashed with before signing.
    pub hash: String,
    /// The signature blob's algorithm (`ssh-ed25519`, ...) and bytes.
    pub algorithm: String,
    pub bytes: Vec<u8>,
    /// The armored text, as it is in the file.
    pub pem: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureError(pub String);

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the signatures are damaged: {}", self.0)
    }
}

impl std::error::Error for SignatureError {}

fn bad(why: impl Into<String>) -> SignatureError {
    SignatureError(why.into())
}

/// Splits and parses the signatures region; anything else in it is an error.
pub fn parse_region(region: &[u8]) -> Result<Vec<Signature>, SignatureError> {
    let text = std::str::from_utf8(region).map_err(|_| bad("not text"))?;
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let body = rest.strip_prefix(BEGIN).and_then(|r| r.strip_prefix('\n')).ok_or_else(|| bad("no BEGIN line"))?;
        let end = body.find(END).ok_or_else(|| bad("no END line"))?;
        let after = body[end + END.len()..].strip_prefix('\n').ok_or_else(|| bad("no newline after END"))?;
        let pem_len = rest.len() - after.len();
        let b64: String = body[..end].lines().collect();
        let blob = Base64::decode_vec(&b64).map_err(|_| bad("invalid base64"))?;
        let mut sig = Signature::decode(&blob)?;
        sig.pem = rest[..pem_len].to_string();
        out.push(sig);
        rest = after;
    }
    Ok(out)
}

/// Reads SSH wire-format fields (RFC 4251: `uint32`, `string`).
struct Wire<'a>(&'a [u8]);

impl<'a> Wire<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SignatureError> {
        if self.0.len() < n {
            return Err(bad("a field runs past the end"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, SignatureError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<&'a [u8], SignatureError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, SignatureError> {
        String::from_utf8(self.string()?.to_vec()).map_err(|_| bad("a name is not UTF-8"))
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

impl Signature {
    /// Parses an sshsig blob (version 1).
    pub fn decode(blob: &[u8]) -> Result<Signature, SignatureError> {
        let mut w = Wire(blob);
        if w.take(6)? != PREAMBLE || w.u32()? != 1 {
            return Err(bad("not an sshsig version 1 signature"));
        }
        let key = w.string()?.to_vec();
        let namespace = w.text()?;
        let _reserved = w.string()?;
        let hash = w.text()?;
        let mut s = Wire(w.string()?);
        if !w.0.is_empty() {
            return Err(bad("bytes after the signature"));
        }
        let algorithm = s.text()?;
        let bytes = s.string()?.to_vec();
        Ok(Signature { key, namespace, hash, algorithm, bytes, pem: String::new() })
    }

    /// What the signer's key signed for `message` (PROTOCOL.sshsig: preamble,
    /// namespace, reserved, hash algorithm, hash of the message); `None` for an
    /// unknown hash algorithm.
    pub fn signed_data(&self, message: &[u8]) -> Option<Vec<u8>> {
        let digest = match self.hash.as_str() {
            "sha512" => Sha512::digest(message).to_vec(),
            "sha256" => Sha256::digest(message).to_vec(),
            _ => return None,
        };
        let mut out = PREAMBLE.to_vec();
        put_string(&mut out, self.namespace.as_bytes());
        put_string(&mut out, b"");
        put_string(&mut out, self.hash.as_bytes());
        put_string(&mut out, &digest);
        Some(out)
    }

    /// The key's type, from its blob (`ssh-ed25519`, ...).
    pub fn key_type(&self) -> String {
        Wire(&self.key).text().unwrap_or_default()
    }

    /// An ed25519 key and signature, the one kind the runtime checks itself.
    pub fn ed25519(&self) -> Option<([u8; 32], [u8; 64])> {
        let mut k = Wire(&self.key);
        if k.string().ok()? != b"ssh-ed25519" || self.algorithm != "ssh-ed25519" {
            return None;
        }
        let key = k.string().ok()?.try_into().ok()?;
        let sig = self.bytes.as_slice().try_into().ok()?;
        Some((key, sig))
    }

    /// The key's fingerprint as `ssh-keygen -l` prints it (`SHA256:...`).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }
}

pub fn fingerprint(key_blob: &[u8]) -> String {
    format!("SHA256:{}", Base64Unpadded::encode_string(&Sha256::digest(key_blob)))
}

/// An allowed-signers file: who may sign, by key.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    entries: Vec<AllowedSigner>,
}

#[derive(Debug, Clone)]
struct AllowedSigner {
    principals: String,
    key: Vec<u8>,
    /// `namespaces="..."`: the key signs only for these.
    namespaces: Option<Vec<String>>,
}

impl AllowedSigners {
    /// Parses the file's text: one `principals [options] keytype base64-key [comment]`
    /// a line; `#` comments and blank lines are skipped. Lines this reader cannot
    /// honour are left out, so that they never make a key trusted: `cert-authority`
    /// (certificates are not checked) and `valid-after`/`valid-before`.
    pub fn parse(text: &str) -> Result<AllowedSigners, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = parse_line(line).map_err(|why| format!("line {}: {why}", n + 1))?;
            entries.extend(parsed);
        }
        Ok(AllowedSigners { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principals of the key `key_blob` if it may sign bundles.
    pub fn principals(&self, key_blob: &[u8]) -> Option<&str> {
        let allows = |e: &&AllowedSigner| {
            e.key == key_blob && e.namespaces.as_ref().is_none_or(|ns| ns.iter().any(|p| matches(p, NAMESPACE)))
        };
        self.entries.iter().find(allows).map(|e| e.principals.as_str())
    }
}

fn parse_line(line: &str) -> Result<Option<AllowedSigner>, String> {
    let words = split_words(line);
    let is_key_type = |w: &str| w.starts_with("ssh-") || w.starts_with("ecdsa-") || w.starts_with("sk-");
    let (principals, options, at) = match words.as_slice() {
        [p, t, ..] if is_key_type(t) => (p, "", 2),
        [p, o, t, ..] if is_key_type(t) => (p, o.as_str(), 3),
        _ => return Err("expected `principals [options] keytype key`".into()),
    };
    let key_type = &words[at - 1];
    let b64 = words.get(at).ok_or("the key is missing")?;
    let key = Base64::decode_vec(b64).map_err(|_| "the key is not valid base64".to_string())?;
    if Wire(&key).text().ok().as_deref() != Some(key_type.as_str()) {
        return Err(format!("the key is not a {key_type} key"));
    }
    let mut namespaces = None;
    for opt in split_options(options) {
        let (name, value) = opt.split_once('=').unwrap_or((&opt, ""));
        match name.to_ascii_lowercase().as_str() {
            "namespaces" => namespaces = Some(value.trim_matches('"').split(',').map(str::to_string).collect()),
            "cert-authority" | "valid-after" | "valid-before" => return Ok(None),
            _ => {}
        }
    }
    Ok(Some(AllowedSigner { principals: principals.clone(), key, namespaces }))
}

/// Words separated by blanks; a double-quoted part (`namespaces="a b"`) is one word.
fn split_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// `a,b="x,y",c` → `a`, `b="x,y"`, `c`.
fn split_options(options: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in options.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// OpenSSH's pattern match: `*` any run, `?` any one character.
fn matches(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `ssh-keygen -t ed25519` and `ssh-keygen -Y sign -n bundle` over the
    // message "hello\n".
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHbukBg/w3MXEOmwAmd3uzBSBqy96zmvnIv96y3Lu9MO";
    const SIG: &str = include_str!("../testdata/hello.sig");

    #[test]
    fn parses_an_ssh_keygen_signature() {
        let sigs = parse_region(SIG.as_bytes()).unwrap();
        assert_eq!(sigs.len(), 1);
        let s = &sigs[0];
        assert_eq!((s.namespace.as_str(), s.hash.as_str(), s.key_type().as_str()), ("bundle", "sha512", "ssh-ed25519"));
        assert_eq!(s.key, Base64::decode_vec(KEY).unwrap());
        assert!(s.ed25519().is_some());
        assert_eq!(s.pem, SIG);
        let two = format!("{SIG}{SIG}");
        assert_eq!(parse_region(two.as_bytes()).unwrap().len(), 2);
        assert!(parse_region(format!("{SIG}x").as_bytes()).is_err());
        assert!(parse_region(&SIG.as_bytes()[1..]).is_err());
        assert!(parse_region(b"").unwrap().is_empty());
    }

    #[test]
    fn allowed_signers_lines() {
        let text = format!(
            "# team\nalice@example.org ssh-ed25519 {KEY} alice\n\n\
             git-only namespaces=\"git\" ssh-ed25519 {KEY}\n"
        );
        let a = AllowedSigners::parse(&text).unwrap();
        let key = Base64::decode_vec(KEY).unwrap();
        assert_eq!(a.principals(&key), Some("alice@example.org"));
        assert_eq!(a.principals(b"other"), None);
        let only_git = AllowedSigners::parse(&format!("bob namespaces=\"git,file\" ssh-ed25519 {KEY}")).unwrap();
        assert_eq!(only_git.principals(&key), None);
        let ours = AllowedSigners::parse(&format!("bob namespaces=\"git,bun*\" ssh-ed25519 {KEY}")).unwrap();
        assert_eq!(ours.principals(&key), Some("bob"));
        let ca = AllowedSigners::parse(&format!("*@example.org cert-authority ssh-ed25519 {KEY}")).unwrap();
        assert!(ca.is_empty());
        assert!(AllowedSigners::parse("alice ssh-ed25519 !!!").is_err());
        assert!(AllowedSigners::parse(&format!("alice ssh-rsa {KEY}")).is_err());
    }
}
