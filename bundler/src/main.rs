//! `bundle`: packs an application into one self-executing file for HPC clusters.

use bundler::{buildfile, inspect, pipeline, restub, sbom, sign, squashfs};

use clap::{CommandFactory, Parser, Subcommand};
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
    /// Build a bundle from RPM packages, directories, file lists, files, OCI images or a
    /// build file.
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
    /// Put another runtime stub at the head of a bundle; the image and metadata (and their
    /// digests) stay as they are.
    Restub {
        bundle: PathBuf,
        /// The new runtime stub (default: found as `bundle build` finds it).
        #[arg(long, value_name = "PATH")]
        stub: Option<PathBuf>,
    },
    /// Print a shell completion script: `bundle completions bash > /etc/bash_completion.d/bundle`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) of bundle or of one subcommand: `bundle man build | man -l -`.
    Man { subcommand: Option<String> },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// A build file (TOML) naming the inputs and options; the command line overrides it.
    #[arg(short = 'f', long = "build-file", value_name = "TOML")]
    build_file: Option<PathBuf>,
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
    /// An OCI image layout directory, or an oci-archive or docker-archive tar (`docker
    /// save`, `podman save`), that becomes the image root.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["sif", "image"])]
    oci: Option<PathBuf>,
    /// The image to take from --oci when it holds several (a name, tag or name:tag).
    #[arg(long, value_name = "NAME")]
    oci_ref: Option<String>,
    /// An Apptainer/Singularity SIF file: its primary squashfs partition becomes the
    /// image root, its runscript the entrypoint (after its %environment), its labels kept.
    #[arg(long, value_name = "FILE.sif", conflicts_with = "image")]
    sif: Option<PathBuf>,
    /// A squashfs image (any compression) that becomes the image root.
    #[arg(long, value_name = "FILE.sqfs")]
    image: Option<PathBuf>,
    /// Do not add libraries, interpreters and plugins from the build host.
    #[arg(long, conflicts_with = "closure")]
    no_closure: bool,
    /// Add libraries from the build host even to an image (--oci, --sif, --image), which
    /// is a whole root.
    #[arg(long)]
    closure: bool,
    /// Build even if some libraries cannot be found (they are listed in a warning).
    #[arg(long)]
    allow_missing: bool,
    /// Environment variable set inside the bundle.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Free-form label stored in the metadata.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// zstd compression level (1-22) [default: 15].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: Option<i32>,
    /// squashfs block size in bytes, a power of two from 4096 to 1048576 [default: 131072].
    #[arg(long)]
    block_size: Option<u32>,
    /// Compression threads (0: all cores) [default: 0].
    #[arg(long)]
    threads: Option<usize>,
    /// Runtime stub to put at the head of the bundle.
    #[arg(long, value_name = "PATH")]
    stub: Option<PathBuf>,
    /// Output file.
    #[arg(short, long)]
    output: Option<PathBuf>,
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
        Command::Restub { bundle, stub } => restub::restub(&bundle, stub.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "bundle", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { subcommand } => man(subcommand.as_deref()),
    };
    if let Err(e) = result {
        eprintln!("bundle: error: {e:#}");
        std::process::exit(EXIT_ERROR);
    }
}

/// The page of `bundle` (with its subcommands listed), or `bundle-SUBCOMMAND`'s.
fn man(subcommand: Option<&str>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd.find_subcommand(name) else {
                anyhow::bail!("no subcommand {name}; try one of: {}", subcommand_names(&cmd));
            };
            sub.clone().name(format!("bundle-{name}"))
        }
    };
    clap_mangen::Man::new(page).render(&mut std::io::stdout().lock())?;
    Ok(())
}

fn subcommand_names(cmd: &clap::Command) -> String {
    cmd.get_subcommands().map(|s| s.get_name().to_string()).collect::<Vec<_>>().join(", ")
}

fn build(a: Box<BuildArgs>) -> anyhow::Result<()> {
    pipeline::build(&request(*a)?)
}

/// The command line over the build file: a list given on the command line replaces the
/// file's, a single value wins, `--env`/`--label` override the file's keys one by one.
fn request(a: BuildArgs) -> anyhow::Result<pipeline::BuildRequest> {
    use anyhow::bail;
    use buildfile::paths;
    let f = match &a.build_file {
        Some(p) => buildfile::load(p)?,
        None => buildfile::BuildFile::default(),
    };
    let either = |cli: Vec<PathBuf>, file: &[String]| if cli.is_empty() { paths(file) } else { cli };
    let defaults = squashfs::Options::default();
    let level = a.level.or(f.level).unwrap_or(defaults.level);
    if !(1..=22).contains(&level) {
        bail!("level {level} must be from 1 to 22");
    }
    let block_size = a.block_size.or(f.block_size).unwrap_or(defaults.block_size);
    if !block_size.is_power_of_two() || !(4096..=1 << 20).contains(&block_size) {
        bail!("--block-size {block_size} must be a power of two from 4096 to 1048576");
    }
    let threads = a.threads.or(f.threads).unwrap_or(0);
    let oci = a.oci.or(f.oci.map(PathBuf::from));
    let oci_ref = a.oci_ref.or(f.oci_ref);
    let sif = a.sif.or(f.sif.map(PathBuf::from));
    let squashfs = a.image.or(f.image.map(PathBuf::from));
    if [oci.is_some(), sif.is_some(), squashfs.is_some()].iter().filter(|x| **x).count() > 1 {
        bail!("give one image root: --oci, --sif or --image");
    }
    if oci_ref.is_some() && oci.is_none() {
        bail!("--oci-ref chooses an image of --oci, which is not given");
    }
    // An image is a whole root: the host's libraries would only shadow its own.
    let closure = if a.no_closure {
        false
    } else if a.closure {
        true
    } else {
        f.closure.unwrap_or(oci.is_none() && sif.is_none() && squashfs.is_none())
    };
    let Some(output) = a.output.or(f.output.map(PathBuf::from)) else {
        bail!("no output file: give -o FILE (or `output` in the build file)");
    };
    let pairs = |file: &std::collections::BTreeMap<String, String>, cli: Vec<String>| {
        file.iter().map(|(k, v)| format!("{k}={v}")).chain(cli).collect::<Vec<_>>()
    };
    Ok(pipeline::BuildRequest {
        rpms: either(a.rpms, &f.rpm.0),
        dirs: either(a.dirs, &f.dir.0),
        lists: either(a.lists, &f.files.0),
        files: if a.files.is_empty() { f.file.0 } else { a.files },
        entrypoint: a.entrypoint.map(|e| vec![e]).or(f.entrypoint.map(|e| e.0)).filter(|e| !e.is_empty()),
        env: pairs(&f.env, a.env),
        labels: pairs(&f.labels, a.labels),
        binds: f.binds,
        image: squashfs::Options { level, block_size, threads, ..Default::default() },
        stub: a.stub.or(f.stub.map(PathBuf::from)),
        output,
        closure,
        allow_missing: a.allow_missing || f.allow_missing.unwrap_or(false),
        includes: either(a.includes, &f.include.0),
        oci,
        oci_ref,
        sif,
        squashfs,
    })
}
