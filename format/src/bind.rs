//! Bind specs, `SRC[:DST[:ro|rw]]`: the form of the metadata's `binds` and of the
//! runtime's `--bundle-bind` / `BUNDLE_BIND`. Parsed here, in one place, so that the
//! runtime and the fuzz target (`fuzz/`, target `bind`) read them the same way.

use std::path::{Component, Path};

/// One bind, checked: both paths absolute, the destination free of `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    pub src: String,
    pub dst: String,
    pub readonly: bool,
}

impl BindSpec {
    /// Parses `SRC`, `SRC:DST` or `SRC:DST:ro|rw`; an empty DST means SRC.
    pub fn parse(spec: &str) -> Result<BindSpec, String> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, opt) = match parts[..] {
            [s] => (s, s, None),
            [s, d] => (s, d, None),
            [s, d, o] => (s, d, Some(o)),
            _ => return Err(format!("bind `{spec}`: expected SRC[:DST[:ro]]")),
        };
        let readonly = match opt {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(o) => return Err(format!("bind `{spec}`: unknown option `{o}` (ro or rw)")),
        };
        let dst = if dst.is_empty() { src } else { dst };
        if !src.starts_with('/') || !dst.starts_with('/') {
            return Err(format!("bind `{spec}`: paths must be absolute"));
        }
        if Path::new(dst).components().any(|c| c == Component::ParentDir) {
            return Err(format!("bind `{spec}`: the destination must not contain `..`"));
        }
        Ok(BindSpec { src: src.into(), dst: dst.into(), readonly })
    }
}
