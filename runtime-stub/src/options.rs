//! The stub's own command line: leading `--bundle-*` options. Everything from the first
//! other argument on (or after `--bundle-`'s own `--`) belongs to the application.

use crate::fail::{Error, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Root only: a loop device and the kernel's squashfs.
    Kernel,
    Fuse,
    Extract,
    /// No namespaces at all: the image unpacked as in extract mode, the program started
    /// through the image's own loader (`host_mode.rs`).
    Host,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Kernel => "kernel",
            Mode::Fuse => "fuse",
            Mode::Extract => "extract",
            Mode::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "kernel" => Ok(Mode::Kernel),
            "fuse" => Ok(Mode::Fuse),
            "extract" => Ok(Mode::Extract),
            "host" => Ok(Mode::Host),
            other => Err(Error(format!("unknown mode `{other}` (expected kernel, fuse, extract or host)"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the entrypoint with the application's arguments.
    Run,
    /// Run another program of the image (`--bundle-exec CMD ARGS…`).
    Exec,
    /// Run `/bin/sh` of the image.
    Shell,
    Help,
    Info,
    Verify,
    Offset,
    Extract(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub action: Action,
    pub mode: Option<Mode>,
    /// For `Run`: the application's arguments. For `Exec`: the command and its arguments.
    pub args: Vec<OsString>,
    /// `--bundle-share=off|KEY`: no sharing, or this session key instead of the job's.
    pub share: Option<String>,
    /// `--bundle-linger=SECS`: how long the container outlives its last user.
    pub linger: Option<Duration>,
    /// `--bundle-bind SRC[:DST[:ro]]`, in order.
    pub binds: Vec<String>,
    /// `--bundle-cleanenv`: do not pass the caller's environment.
    pub cleanenv: bool,
    /// `--bundle-keep-caps`: as root, keep the capabilities in the container.
    pub keep_caps: bool,
    /// What the host adds to the container: devices, libraries, a writable layer.
    pub host: HostOptions,
}

/// The options that bring something of the host into the container (issue 12): each
/// also has an environment variable, read in `host.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostOptions {
    /// `--bundle-writable-tmpfs`: writes to the image land in memory.
    pub writable_tmpfs: bool,
    /// `--bundle-overlay DIR`: writes to the image persist in DIR.
    pub overlay: Option<PathBuf>,
    /// `--bundle-device NAME`, CDI names, in order.
    pub devices: Vec<String>,
    /// `--bundle-nv`: the NVIDIA driver of the host.
    pub nv: bool,
    /// `--bundle-host-lib PATH`, in order.
    pub libs: Vec<String>,
    /// `--bundle-host-mpi`: the host's MPI library instead of the bundle's.
    pub mpi: bool,
}

pub const HELP: &str = "\
This file is a bundle: an application with its own root filesystem.
Run it like the program it contains; every argument goes to the application.

Options of the bundle itself (they must come first):
  --bundle-help             this text
  --bundle-info             print the bundle's metadata (JSON)
  --bundle-verify           recompute and check the image and metadata digests
  --bundle-offset           print the byte offset of the squashfs image
                            (e.g. unsquashfs -o $(./app.sif --bundle-offset) app.sif)
  --bundle-extract DIR      unpack the image into DIR (must not exist or be empty)
  --bundle-mode=MODE        kernel (root only), fuse, extract or host (default:
                            kernel as root, else fuse when /dev/fuse is usable, else
                            extract; host, without namespaces, where none can be made)
  --bundle-bind SRC[:DST[:ro]]  also bind host path SRC at DST (repeatable)
  --bundle-cleanenv         start the application with a minimal environment
  --bundle-keep-caps        as root, do not drop capabilities
  --bundle-writable-tmpfs   the image is writable; writes land in memory and are
                            gone when the container ends
  --bundle-overlay DIR      the image is writable; writes persist in DIR (a
                            directory you own: DIR/upper and DIR/work)
  --bundle-device NAME      a CDI device (vendor.com/class=name or =all) from the
                            specs in /etc/cdi and /var/run/cdi (repeatable)
  --bundle-nv               the host's NVIDIA driver: libraries, tools, /dev/nvidia*
  --bundle-host-lib PATH    a host library (file, directory or soname from the
                            host's ld.so.cache) ahead of the image's (repeatable)
  --bundle-host-mpi         the host's MPI library instead of the bundle's, when
                            their sonames match (e.g. libmpi.so.12, libmpi.so.40)
  --bundle-exec CMD ARGS... run CMD from the image instead of the entrypoint
  --bundle-shell [ARGS...]  run /bin/sh from the image
  --bundle-share=off|KEY    do not share the container with the job's other
                            processes on this node, or share it under KEY
  --bundle-linger=SECS      keep the container this long after its last user
                            (default 3; 0 to leave at once)
  --                        end of bundle options

Environment: BUNDLE_MODE=kernel|fuse|extract|host, BUNDLE_BIND=SRC[:DST[:ro]],...,
BUNDLEENV_NAME=VALUE (sets NAME inside), BUNDLE_SHARE=off|KEY, BUNDLE_LINGER=SECS,
BUNDLE_CACHE_DIR (extract mode cache, default $XDG_CACHE_HOME/bundle or
~/.cache/bundle), BUNDLE_WRITABLE_TMPFS=1, BUNDLE_OVERLAY=DIR,
BUNDLE_DEVICE=NAME,..., BUNDLE_NV=1, BUNDLE_HOST_LIB=PATH,..., BUNDLE_HOST_MPI=1.
Errors of the bundle itself exit with status 255.
";

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Options> {
    let mut it = args.into_iter().peekable();
    let mut opts = Options {
        action: Action::Run,
        mode: None,
        args: Vec::new(),
        share: None,
        linger: None,
        binds: Vec::new(),
        cleanenv: false,
        keep_caps: false,
        host: HostOptions::default(),
    };
    while let Some(arg) = it.peek() {
        let Some(s) = arg.to_str().filter(|s| s.starts_with("--bundle-") || *s == "--") else {
            break;
        };
        let s = s.to_string();
        it.next();
        if s == "--" {
            break;
        }
        let (name, inline) = match s.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (s.clone(), None),
        };
        let mut value = |what: &str| -> Result<OsString> {
            match &inline {
                Some(v) => Ok(OsString::from(v)),
                None => it.next().ok_or_else(|| Error(format!("{name} needs {what}"))),
            }
        };
        match name.as_str() {
            "--bundle-help" => opts.action = Action::Help,
            "--bundle-info" => opts.action = Action::Info,
            "--bundle-verify" => opts.action = Action::Verify,
            "--bundle-offset" => opts.action = Action::Offset,
            "--bundle-extract" => opts.action = Action::Extract(value("a directory")?.into()),
            "--bundle-mode" => {
                let v = value("fuse or extract")?;
                opts.mode = Some(Mode::parse(&v.to_string_lossy())?);
            }
            "--bundle-bind" => opts.binds.push(value("SRC[:DST[:ro]]")?.to_string_lossy().into_owned()),
            "--bundle-cleanenv" => opts.cleanenv = true,
            "--bundle-keep-caps" => opts.keep_caps = true,
            "--bundle-writable-tmpfs" => opts.host.writable_tmpfs = true,
            "--bundle-overlay" => opts.host.overlay = Some(value("a directory")?.into()),
            "--bundle-device" => opts.host.devices.push(value("a CDI device name")?.to_string_lossy().into_owned()),
            "--bundle-nv" => opts.host.nv = true,
            "--bundle-host-lib" => opts.host.libs.push(value("a library")?.to_string_lossy().into_owned()),
            "--bundle-host-mpi" => opts.host.mpi = true,
            "--bundle-share" => opts.share = Some(value("off or a key")?.to_string_lossy().into_owned()),
            "--bundle-linger" => {
                let v = value("a number of seconds")?;
                let secs = v.to_str().and_then(seconds);
                opts.linger =
                    Some(secs.ok_or_else(|| Error(format!("--bundle-linger {v:?} is not a number of seconds")))?);
            }
            "--bundle-exec" => {
                opts.action = Action::Exec;
                let cmd = value("a command")?;
                opts.args.push(cmd);
                break;
            }
            "--bundle-shell" => {
                opts.action = Action::Shell;
                break;
            }
            _ => return Err(Error(format!("unknown option {name}; run with --bundle-help for the list"))),
        }
    }
    opts.args.extend(it);
    Ok(opts)
}

/// `SECS` with an optional fraction (`3`, `0.5`), as a duration. Decimal by hand: the
/// float parser and its tables would cost the stub 15 KiB for this one use.
pub fn seconds(s: &str) -> Option<Duration> {
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let secs = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let nanos =
        if fraction.is_empty() { 0 } else { fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32) };
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Options> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn application_arguments_pass_untouched() {
        let o = p(&["a", "--bundle-info", "two words"]).unwrap();
        assert_eq!(o.action, Action::Run);
        assert_eq!(o.args, ["a", "--bundle-info", "two words"]);
    }

    #[test]
    fn leading_bundle_options_are_ours() {
        let o = p(&["--bundle-mode=extract", "--", "--bundle-help"]).unwrap();
        assert_eq!(o.mode, Some(Mode::Extract));
        assert_eq!(o.args, ["--bundle-help"]);
        let o = p(&["--bundle-mode", "fuse", "--bundle-exec", "ls", "-l", "--bundle-x"]).unwrap();
        assert_eq!((o.action, o.mode), (Action::Exec, Some(Mode::Fuse)));
        assert_eq!(o.args, ["ls", "-l", "--bundle-x"]);
        assert_eq!(p(&["--bundle-extract", "d"]).unwrap().action, Action::Extract("d".into()));
    }

    #[test]
    fn host_options_repeat_and_keep_their_order() {
        let o = p(&[
            "--bundle-device=nvidia.com/gpu=0",
            "--bundle-device",
            "vendor.com/net=all",
            "--bundle-overlay",
            "/scratch/ov",
            "--bundle-host-lib=libfabric.so.1",
            "--bundle-nv",
            "--bundle-host-mpi",
            "app",
        ])
        .unwrap();
        assert_eq!(o.host.devices, ["nvidia.com/gpu=0", "vendor.com/net=all"]);
        assert_eq!(o.host.overlay.as_deref(), Some(std::path::Path::new("/scratch/ov")));
        assert_eq!(o.host.libs, ["libfabric.so.1"]);
        assert!(o.host.nv && o.host.mpi && !o.host.writable_tmpfs);
        assert_eq!(o.args, ["app"]);
    }

    #[test]
    fn seconds_with_fractions() {
        assert_eq!(seconds("3"), Some(Duration::from_secs(3)));
        assert_eq!(seconds("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(seconds(".5"), Some(Duration::from_millis(500)));
        assert_eq!(seconds("2."), Some(Duration::from_secs(2)));
        for bad in ["", ".", "-1", "1e3", "x", "1.2.3", "0.0000000001"] {
            assert_eq!(seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn mistakes_are_errors() {
        assert!(p(&["--bundle-nope"]).is_err());
        assert!(p(&["--bundle-mode=kernelx"]).is_err());
        assert!(p(&["--bundle-exec"]).is_err());
    }
}
