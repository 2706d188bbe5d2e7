//! What an Apptainer/Singularity image's `/.singularity.d` asks of the bundle: its
//! `runscript` becomes the entrypoint, run after the `env/*.sh` scripts (where
//! `%environment` lives) are sourced, as Apptainer's own `actions/run` does; its
//! `labels.json` becomes labels.

use crate::closure;
use crate::oci::Image;
use crate::tree::{Kind, Source, Tree};
use std::collections::BTreeMap;
use std::path::Path;

const RUNSCRIPT: &str = "/.singularity.d/runscript";
const LABELS: &str = "/.singularity.d/labels.json";
/// Sources the environment scripts, then runs the runscript with the caller's arguments.
const RUN: &str =
    r#"for s in /.singularity.d/env/*.sh; do [ -f "$s" ] && . "$s"; done; exec /.singularity.d/runscript "$@""#;

pub fn config(tree: &Tree, extra_labels: Option<&[u8]>) -> Image {
    let mut image = Image::default();
    if file(tree, RUNSCRIPT).is_some() {
        image.command = if file(tree, "/bin/sh").is_some() {
            vec!["/bin/sh".into(), "-c".into(), RUN.into(), RUNSCRIPT.into()]
        } else {
            vec![RUNSCRIPT.into()]
        };
    }
    for bytes in [file(tree, LABELS), extra_labels.map(<[u8]>::to_vec)].into_iter().flatten() {
        image.labels.extend(labels(&bytes));
    }
    image
}

/// A JSON object's members as strings (Apptainer writes string values).
fn labels(bytes: &[u8]) -> BTreeMap<String, String> {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(bytes) else {
        return BTreeMap::new();
    };
    m.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect()
}

/// The bytes of a regular file of the tree, through symlinks.
fn file(tree: &Tree, path: &str) -> Option<Vec<u8>> {
    let p = closure::resolve(tree, Path::new(path))?;
    match &tree.get(&p)?.kind {
        Kind::File(Source::Host(h)) => std::fs::read(h).ok(),
        Kind::File(Source::Bytes(b)) => Some(b.to_vec()),
        _ => None,
    }
}
