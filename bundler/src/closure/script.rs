//! `#!` lines: which interpreter a script needs.
//!
//! `#!/usr/bin/env NAME` names a program looked up in PATH at run time: the closure
//! takes `env` itself and NAME as found first in the image's standard PATH directories,
//! else in the build host's PATH (the bundle's PATH at run time is the caller's, which
//! normally holds the same standard directories).

/// PATH of the image for `#!/usr/bin/env` lookups.
pub const IMAGE_PATH: &[&str] = &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

#[derive(Debug, PartialEq, Eq)]
pub struct Shebang {
    /// The interpreter path, as written.
    pub interp: String,
    /// For `env`: the program it runs (looked up in PATH).
    pub env_program: Option<String>,
}

/// Reads the `#!` line at the start of a file; `None` if there is none. Linux reads at
/// most the first 256 bytes and passes everything after the interpreter as one argument.
pub fn parse(head: &[u8]) -> Option<Shebang> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let interp = words.next()?.to_string();
    if !interp.starts_with('/') {
        return None;
    }
    let env_program = if interp.rsplit('/').next() == Some("env") { env_program(words) } else { None };
    Some(Shebang { interp, env_program })
}

/// The program `env` would run: the first word that is not an option (`-S`, `-i`, `-`,
/// `-u NAME`) or an assignment.
fn env_program<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<String> {
    while let Some(w) = words.next() {
        match w {
            "-u" | "--unset" | "-C" | "--chdir" => {
                words.next();
            }
            _ if w.starts_with('-') || w.contains('=') => {}
            _ => return Some(w.to_string()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_forms() {
        let s = parse(b"#!/bin/sh -e\necho hi\n").unwrap();
        assert_eq!(s.interp, "/bin/sh");
        assert_eq!(s.env_program, None);
        let s = parse(b"#! /usr/bin/env python3\n").unwrap();
        assert_eq!((s.interp.as_str(), s.env_program.as_deref()), ("/usr/bin/env", Some("python3")));
        let s = parse(b"#!/usr/bin/env -S -u HOME LANG=C perl -w\n").unwrap();
        assert_eq!(s.env_program.as_deref(), Some("perl"));
        assert!(parse(b"\x7fELF").is_none());
        assert!(parse(b"#!relative\n").is_none());
    }
}
