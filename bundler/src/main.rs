//! `bundle`: packs an application into one self-executing file for HPC clusters.

mod assemble;
mod closure;
mod inputs;
mod inspect;
mod owners;
mod pipeline;
mod progress;
mod rpm;
mod sbom;
mod sign;
mod squashfs;
mod stub;
mod tree;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Exit status for every error of ours, as the runtime uses (and Apptainer does).
const EXIT_ERROR: i32 = 255;

#[derive(Parser)]
#[command(name = "bundle", version, about = "Pack an application into one self-executing file for HPC clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a bundle from RPM packages, directories, file lists and files.
    Build(Box<BuildArgs>),
    /// Show a bundle's metadata.
    Inspect {
        bundle: PathBuf,
        /// Print the metadata as JSON.
        #[arg(long)]
        json: bool,
        /// Print signature N (from 1), armored, for `ssh-keygen -Y verify -s`.
        #[arg(long, value_name = "N")]
        signature: Option<usize>,
        /// Print an SPDX 2.3 JSON document of what the bundle holds.
        #[arg(long)]
        sbom: bool,
    },
    /// Check every digest and signature, and say who signed.
    Verify {
        bundle: PathBuf,
        /// Require a signature by a key of this file (OpenSSH allowed_signers format).
        #[arg(long, value_name = "FILE")]
        allowed_signers: Option<PathBuf>,
    },
    /// Sign a bundle with an OpenSSH private key (ed25519); signatures accumulate.
    Sign {
        bundle: PathBuf,
        /// The private key (e.g. ~/.ssh/id_ed25519).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
    /// List the files of the image.
    List { bundle: PathBuf },
    /// Unpack the image into DIR (new or empty).
    Extract { bundle: PathBuf, dir: PathBuf },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// RPM packages whose files make up the image (several are merged; a path in two
    /// packages with different content is an error).
    #[arg(value_name = "RPM")]
    rpms: Vec<PathBuf>,
    /// A directory that becomes the image root.
    #[arg(long = "dir", value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// A file list: one `SRC` or `SRC=DEST` per line.
    #[arg(long = "files", value_name = "LIST")]
    lists: Vec<PathBuf>,
    /// One file or directory, `SRC[=DEST]`.
    #[arg(long = "file", value_name = "SRC[=DEST]")]
    files: Vec<String>,
    /// The program to run, an absolute path inside the image. Default: the only
    /// executable of the inputs in a bin or sbin directory.
    #[arg(short, long)]
    entrypoint: Option<String>,
    /// A host file or directory to add at the same path, with the libraries it needs.
    #[arg(long = "include", value_name = "PATH")]
    includes: Vec<PathBuf>,
    /// Do not add libraries, interpreters and plugins from the build host.
    #[arg(long)]
    no_closure: bool,
    /// Build even if some libraries cannot be found (they are listed in a warning).
    #[arg(long)]
    allow_missing: bool,
    /// Environment variable set inside the bundle.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Free-form label stored in the metadata.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = squashfs::Options::default().level, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// squashfs block size in bytes, a power of two from 4096 to 1048576.
    #[arg(long, default_value_t = squashfs::Options::default().block_size)]
    block_size: u32,
    /// Compression threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Runtime stub to put at the head of the bundle.
    #[arg(long, value_name = "PATH")]
    stub: Option<PathBuf>,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
}

fn main() {
    // `bundle list app.sif | head` should stop quietly, as `ls | head` does, rather
    // than panic on a write to a closed pipe.
    // SAFETY: restoring the default disposition of one signal, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => build(a),
        Command::Inspect { bundle, sbom: true, .. } => sbom::sbom(&bundle),
        Command::Inspect { bundle, json, signature: Some(n), .. } if !json => inspect::signature(&bundle, n),
        Command::Inspect { bundle, json, .. } => inspect::inspect(&bundle, json),
        Command::Verify { bundle, allowed_signers } => inspect::verify(&bundle, allowed_signers.as_deref()),
        Command::Sign { bundle, key } => sign::sign(&bundle, &key),
        Command::List { bundle } => inspect::list(&bundle),
        Command::Extract { bundle, dir } => inspect::extract(&bundle, &dir),
    };
    if let Err(e) = result {
        eprintln!("bundle: error: {e:#}");
        std::process::exit(EXIT_ERROR);
    }
}

fn build(a: Box<BuildArgs>) -> anyhow::Result<()> {
    if !a.block_size.is_power_of_two() || !(4096..=1 << 20).contains(&a.block_size) {
        anyhow::bail!("--block-size {} must be a power of two from 4096 to 1048576", a.block_size);
    }
    let image =
        squashfs::Options { level: a.level, block_size: a.block_size, threads: a.threads, ..Default::default() };
    pipeline::build(&pipeline::BuildRequest {
        rpms: a.rpms,
        dirs: a.dirs,
        lists: a.lists,
        files: a.files,
        entrypoint: a.entrypoint,
        env: a.env,
        labels: a.labels,
        image,
        stub: a.stub,
        output: a.output,
        closure: !a.no_closure,
        allow_missing: a.allow_missing,
        includes: a.includes,
    })
}
