//! Interpreters and their standard libraries: a `python3` or `perl` binary is of no use
//! without the modules it loads at start (`encodings`, `strict.pm`), which no ELF or `#!`
//! line names. When the closure brings one from the build host, it asks that very
//! program where its standard library is and brings those directories too.
//!
//! Only the standard library: Python's `sys.path` without site packages (`-I -S`), Perl's
//! `privlib` and `archlib` and Debian's `perl-base` directory. Site packages stay the
//! user's choice, with `--include`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpreter {
    Python,
    Perl,
}

/// `python3`, `python3.11`, `perl`, `perl5.36.0` (not `python3-config`, `perldoc`).
pub fn recognise(file_name: &str) -> Option<Interpreter> {
    let version = |rest: &str| rest.chars().all(|c| c.is_ascii_digit() || c == '.');
    if let Some(rest) = file_name.strip_prefix("python") {
        return (!rest.is_empty() && rest.starts_with(|c: char| c.is_ascii_digit()) && version(rest))
            .then_some(Interpreter::Python);
    }
    file_name.strip_prefix("perl").filter(|r| version(r)).map(|_| Interpreter::Perl)
}

impl Interpreter {
    pub fn name(self) -> &'static str {
        match self {
            Interpreter::Python => "python",
            Interpreter::Perl => "perl",
        }
    }
}

/// Entries of a standard library directory that are not the standard library: what only
/// building or testing the interpreter needs (Python's `config-3.X-…` with its static
/// libpython, `test`), and site packages installed there.
pub fn is_not_standard(name: &str) -> bool {
    name.starts_with("config-") || ["test", "site-packages", "dist-packages"].contains(&name)
}

/// The standard library directories of the host program `program`, as it reports them.
pub fn library_dirs(kind: Interpreter, program: &Path) -> Result<Vec<PathBuf>, String> {
    let mut cmd = Command::new(program);
    match kind {
        // -I: no environment variables, no user site; -S: no site packages at all.
        Interpreter::Python => cmd.args(["-I", "-S", "-c", "import sys; print('\\n'.join(sys.path))"]),
        Interpreter::Perl => cmd
            .args([
                "-MConfig",
                "-e",
                "print join qq(\\n), @Config{qw(privlibexp archlibexp)}, grep m{/perl-base$}, @INC",
            ])
            .env_remove("PERL5LIB")
            .env_remove("PERL5OPT"),
    };
    let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!("{} could not tell its library path", program.display()));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let p = PathBuf::from(line.trim());
        if p.is_absolute() && p.is_dir() && !dirs.contains(&p) {
            dirs.push(p);
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreter_names() {
        assert_eq!(recognise("python3"), Some(Interpreter::Python));
        assert_eq!(recognise("python3.11"), Some(Interpreter::Python));
        assert_eq!(recognise("perl"), Some(Interpreter::Perl));
        assert_eq!(recognise("perl5.36.0"), Some(Interpreter::Perl));
        for no in ["python", "python3-config", "perldoc", "pythonista", "bash"] {
            assert_eq!(recognise(no), None, "{no}");
        }
    }
}
