//! The runtime at the head of every bundle. It finds its payload through the trailer at
//! the end of its own file, and either answers a `--bundle-*` question or runs the
//! application in its own root filesystem (see `container.rs`).

mod cache;
mod cdi;
mod container;
mod daemon;
mod exec;
mod fail;
mod fuse;
mod host;
mod host_mode;
mod hostlibs;
mod integrity;
mod keeper;
mod loopdev;
mod namespaces;
mod options;
mod plan;
mod private_pages;
mod session;
mod steps;
mod sys;
mod trust;

use bundle_format::Bundle;
use fail::{exit_with, Context, Error, Result};
use options::{Action, Options};
use std::path::Path;

fn main() {
    let opts = options::parse(std::env::args_os().skip(1)).unwrap_or_else(|e| exit_with(e));
    if let Err(e) = run(&opts) {
        exit_with(e)
    }
}

fn run(opts: &Options) -> Result<()> {
    if opts.action == Action::Help {
        print!("{}", options::HELP);
        return Ok(());
    }
    let bundle = open_self()?;
    integrity::name();
    match &opts.action {
        Action::Info => print!("{}", info(&bundle)),
        Action::Offset => println!("{}", bundle.trailer.image_offset),
        Action::Verify => {
            integrity::verify_all(&bundle)?;
            println!("ok: image sha256 {}", bundle.image_digest());
        }
        Action::Extract(dir) => {
            let image = integrity::open_image(&bundle)?;
            bundle_squashfs::extract::to_dir(&image, dir)
                .context(|| format!("cannot unpack the image into {}", dir.display()))?;
        }
        Action::Run | Action::Exec | Action::Shell | Action::Help => {
            trust::check(&bundle)?;
            match container::run(&bundle, opts)? {}
        }
    }
    Ok(())
}

/// The metadata as it is in the file, with the signers' keys added as its last field
/// (`signers`). Spliced into the text: neither serialising the metadata again nor
/// building a `serde_json::Value` (20 KB of stub) is needed.
fn info(bundle: &Bundle) -> String {
    let json = String::from_utf8_lossy(&bundle.metadata_json).into_owned();
    // Key types, fingerprints (base64) and our own messages: printable ASCII, for which
    // Rust's quoting is JSON's.
    let quoted: Vec<String> = trust::signers(bundle).iter().map(|s| format!("{s:?}")).collect();
    let signers = format!("[{}]", quoted.join(", "));
    match json.trim_end().strip_suffix('}') {
        Some(head) => format!("{},\n  \"signers\": {signers}\n}}\n", head.trim_end()),
        None => json,
    }
}

/// Our own file, through `/proc/self/exe` (a path the caller used may be relative, or
/// renamed under us).
fn open_self() -> Result<Bundle> {
    Bundle::open(Path::new("/proc/self/exe")).map_err(|e| Error(format!("this bundle cannot be read: {e}")))
}
