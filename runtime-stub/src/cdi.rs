//! CDI devices (`--bundle-device vendor.com/class=name`), read from the Container Device
//! Interface spec files a node's administrators or its device plugins install
//! (cncf-tags/container-device-interface, SPEC.md, versions 0.5.0 to 0.8.0).
//!
//! A spec names a kind (`nvidia.com/gpu`) and its devices; the spec and each device
//! carry *container edits*. Here they become what every other host path becomes, a
//! bind of the plan, plus variables and symbolic links ([`Injected`]):
//! - `deviceNodes`: the host's node bound at `path` (an unprivileged container cannot
//!   `mknod`; the node's `major`/`minor`/`fileMode` are the host's);
//! - `mounts`: bind mounts (`ro` kept); other types are refused;
//! - `env`: `NAME=VALUE`, set after the bundle's own;
//! - `hooks`: never run. The hooks the NVIDIA Container Toolkit writes (`nvidia-ctk
//!   hook …`, `nvidia-cdi-hook …`) are done as what they mean: `update-ldcache --folder
//!   DIR` puts DIR first in `LD_LIBRARY_PATH`; `create-symlinks --link TARGET::LINK`
//!   makes the link (in the runtime's overlay layer); `disable-device-node-modification`
//!   and `enable-cuda-compat` change nothing here (the first guards a driver's
//!   `/proc` setting that the container cannot write anyway; the second is documented
//!   as a limit in docs/runtime.md). Any other hook is an error: running a host program
//!   inside the container is not what a user asked for with a device name.
//! - `additionalGids`, `intelRdt`, `netDevices` need privileges a user namespace does
//!   not give; they are ignored.
//!
//! Both JSON and YAML are read by `yaml.rs` into one small tree, walked here.

use crate::fail::{Error, Result};
use crate::plan::{Injected, UserBind};
use bundle_format::tree::{self as yaml, Value};
use std::fs;
use std::path::{Path, PathBuf};

/// Where specs are found, lowest priority first (a later one's device of the same name
/// wins), as the CDI reference implementation orders them.
pub const SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

struct Spec {
    cdi_version: String,
    kind: String,
    devices: Vec<Device>,
    container_edits: Option<Edits>,
}

struct Device {
    name: String,
    container_edits: Option<Edits>,
}

#[derive(Default)]
struct Edits {
    env: Vec<String>,
    device_nodes: Vec<DeviceNode>,
    mounts: Vec<Mount>,
    hooks: Vec<Hook>,
}

struct DeviceNode {
    path: PathBuf,
    host_path: Option<PathBuf>,
    permissions: Option<String>,
}

struct Mount {
    host_path: PathBuf,
    container_path: PathBuf,
    options: Vec<String>,
    kind: Option<String>,
}

struct Hook {
    path: String,
    args: Vec<String>,
}

/// The spec's fields, from the tree `yaml.rs` reads (JSON or YAML); a field of the
/// wrong shape is an error that names it. Fields this runtime has no use for are not
/// looked at.
impl Spec {
    fn from(v: &Value) -> std::result::Result<Spec, String> {
        Ok(Spec {
            cdi_version: required(v, "cdiVersion")?,
            kind: required(v, "kind")?,
            devices: list(v, "devices")?
                .iter()
                .map(|d| Ok(Device { name: required(d, "name")?, container_edits: edits(d.get("containerEdits"))? }))
                .collect::<std::result::Result<_, String>>()?,
            container_edits: edits(v.get("containerEdits"))?,
        })
    }
}

fn edits(v: Option<&Value>) -> std::result::Result<Option<Edits>, String> {
    let Some(v) = v.filter(|v| **v != Value::Null) else { return Ok(None) };
    let paths = |d: &Value, key: &str| optional(d, key).map(|p| p.map(PathBuf::from));
    Ok(Some(Edits {
        env: strings(v, "env")?,
        device_nodes: list(v, "deviceNodes")?
            .iter()
            .map(|d| {
                Ok(DeviceNode {
                    path: required(d, "path")?.into(),
                    host_path: paths(d, "hostPath")?,
                    permissions: optional(d, "permissions")?,
                })
            })
            .collect::<std::result::Result<_, String>>()?,
        mounts: list(v, "mounts")?
            .iter()
            .map(|m| {
                Ok(Mount {
                    host_path: required(m, "hostPath")?.into(),
                    container_path: required(m, "containerPath")?.into(),
                    options: strings(m, "options")?,
                    kind: optional(m, "type")?,
                })
            })
            .collect::<std::result::Result<_, String>>()?,
        hooks: list(v, "hooks")?
            .iter()
            .map(|h| Ok(Hook { path: required(h, "path")?, args: strings(h, "args")? }))
            .collect::<std::result::Result<_, String>>()?,
    }))
}

fn optional(v: &Value, key: &str) -> std::result::Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn required(v: &Value, key: &str) -> std::result::Result<String, String> {
    optional(v, key)?.ok_or_else(|| format!("missing field `{key}`"))
}

fn list<'a>(v: &'a Value, key: &str) -> std::result::Result<&'a [Value], String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("`{key}` must be a list")),
    }
}

fn strings(v: &Value, key: &str) -> std::result::Result<Vec<String>, String> {
    list(v, key)?
        .iter()
        .map(|s| match s {
            Value::String(s) => Ok(s.clone()),
            _ => Err(format!("`{key}` must be a list of strings")),
        })
        .collect()
}

/// One spec file, read.
struct Loaded {
    file: PathBuf,
    spec: Spec,
}

/// What the devices `names` add, from the specs in `dirs`.
pub fn inject(names: &[String], dirs: &[&Path]) -> Result<Injected> {
    let specs = load_all(dirs)?;
    let mut injected = Injected::default();
    let mut spec_edits_done: Vec<&Path> = Vec::new();
    for name in names {
        let (kind, device) = split_name(name)?;
        for (loaded, dev) in find(&specs, kind, device, name, dirs)? {
            if !spec_edits_done.contains(&loaded.file.as_path()) {
                spec_edits_done.push(&loaded.file);
                if let Some(e) = &loaded.spec.container_edits {
                    apply(e, name, &mut injected)?;
                }
            }
            if let Some(e) = &dev.container_edits {
                apply(e, name, &mut injected)?;
            }
        }
    }
    Ok(injected)
}

/// `vendor.com/class=name` into kind and name.
fn split_name(name: &str) -> Result<(&str, &str)> {
    let bad =
        || Error(format!("CDI device `{name}`: expected a fully qualified name, vendor.com/class=name (or =all)"));
    let (kind, device) = name.split_once('=').ok_or_else(bad)?;
    let (vendor, class) = kind.split_once('/').ok_or_else(bad)?;
    if vendor.is_empty() || class.is_empty() || device.is_empty() || class.contains('/') {
        return Err(bad());
    }
    Ok((kind, device))
}

/// The devices `device` (or all) of `kind`, each with its spec; the latest spec that
/// defines a name wins.
fn find<'a>(
    specs: &'a [Loaded],
    kind: &str,
    device: &str,
    name: &str,
    dirs: &[&Path],
) -> Result<Vec<(&'a Loaded, &'a Device)>> {
    // By name, a later spec's device replacing an earlier one's (a vector, not a map:
    // a handful of devices, and a map's code would cost the stub more than it saves).
    let mut by_name: Vec<(&Loaded, &Device)> = Vec::new();
    for l in specs.iter().filter(|l| l.spec.kind == kind) {
        for d in &l.spec.devices {
            by_name.retain(|(_, o)| o.name != d.name);
            by_name.push((l, d));
        }
    }
    by_name.sort_unstable_by(|a, b| a.1.name.cmp(&b.1.name));
    let found: Vec<_> = match device {
        "all" => by_name,
        one => by_name.into_iter().filter(|(_, d)| d.name == one).collect(),
    };
    if found.is_empty() {
        return Err(unknown(specs, name, dirs));
    }
    Ok(found)
}

fn unknown(specs: &[Loaded], name: &str, dirs: &[&Path]) -> Error {
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut known: Vec<String> =
        specs.iter().flat_map(|l| l.spec.devices.iter().map(move |d| format!("{}={}", l.spec.kind, d.name))).collect();
    known.sort_unstable();
    known.dedup();
    if known.is_empty() {
        return Error(format!("unknown CDI device `{name}`: no CDI specs with devices in {}", dirs.join(" or ")));
    }
    Error(format!("unknown CDI device `{name}`; known devices (in {}): {}", dirs.join(", "), known.join(", ")))
}

/// Every `*.json`, `*.yaml` and `*.yml` of `dirs`, in order (files by name).
fn load_all(dirs: &[&Path]) -> Result<Vec<Loaded>> {
    let mut specs = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| spec_format(p).is_some()).collect();
        files.sort_unstable();
        for file in files {
            let spec = load(&file)?;
            specs.push(Loaded { file, spec });
        }
    }
    Ok(specs)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Yaml,
}

fn spec_format(p: &Path) -> Option<Format> {
    match p.extension()?.to_str()? {
        "json" => Some(Format::Json),
        "yaml" | "yml" => Some(Format::Yaml),
        _ => None,
    }
}

fn load(file: &Path) -> Result<Spec> {
    let bad = |why: String| Error(format!("bad CDI spec {}: {why}", file.display()));
    let text = fs::read_to_string(file).map_err(|e| Error(format!("cannot read CDI spec {}: {e}", file.display())))?;
    let spec = parse(&text, spec_format(file).unwrap_or(Format::Yaml)).map_err(bad)?;
    check_version(&spec.cdi_version).map_err(bad)?;
    split_name(&format!("{}=x", spec.kind))
        .map_err(|_| bad(format!("kind `{}` is not vendor.com/class", spec.kind)))?;
    Ok(spec)
}

fn parse(text: &str, format: Format) -> std::result::Result<Spec, String> {
    let tree = match format {
        Format::Json => yaml::parse_json(text)?,
        Format::Yaml => yaml::parse(text)?,
    };
    Spec::from(&tree)
}

/// 0.5.0 to 0.8.0: what this reader was written against.
fn check_version(v: &str) -> std::result::Result<(), String> {
    let parts: Vec<u32> = v.split('.').map(|p| p.parse().unwrap_or(u32::MAX)).collect();
    match parts[..] {
        [0, minor, patch] if (5..=8).contains(&minor) && patch != u32::MAX => Ok(()),
        _ => Err(format!("cdiVersion `{v}` is not supported (0.5.0 to 0.8.0)")),
    }
}

fn apply(e: &Edits, device: &str, out: &mut Injected) -> Result<()> {
    for var in &e.env {
        let (k, v) = var
            .split_once('=')
            .ok_or_else(|| Error(format!("CDI device {device}: variable `{var}` is not NAME=VALUE")))?;
        out.env.push((k.to_string(), v.to_string()));
    }
    for node in &e.device_nodes {
        out.binds.push(device_node(node, device)?);
    }
    for m in &e.mounts {
        out.binds.push(mount(m, device)?);
    }
    for h in &e.hooks {
        hook(h, device, out)?;
    }
    Ok(())
}

fn device_node(node: &DeviceNode, device: &str) -> Result<UserBind> {
    use std::os::unix::fs::FileTypeExt;
    let host = node.host_path.clone().unwrap_or_else(|| node.path.clone());
    let is_device =
        fs::metadata(&host).is_ok_and(|m| m.file_type().is_char_device() || m.file_type().is_block_device());
    if !is_device {
        return Err(Error(format!("CDI device {device}: {} is not a device node on this host", host.display())));
    }
    let readonly = node.permissions.as_deref().is_some_and(|p| !p.contains('w'));
    Ok(UserBind { src: host, dst: node.path.clone(), readonly })
}

fn mount(m: &Mount, device: &str) -> Result<UserBind> {
    let options = &m.options;
    let bind = matches!(m.kind.as_deref(), None | Some("bind") | Some("rbind") | Some("none"))
        || options.iter().any(|o| o == "bind" || o == "rbind");
    if !bind {
        return Err(Error(format!(
            "CDI device {device}: the mount at {} is of type `{}`; only bind mounts are supported",
            m.container_path.display(),
            m.kind.as_deref().unwrap_or("")
        )));
    }
    Ok(UserBind {
        src: m.host_path.clone(),
        dst: m.container_path.clone(),
        readonly: options.iter().any(|o| o == "ro"),
    })
}

/// The NVIDIA Container Toolkit's hooks, done as what they mean; any other is an error.
fn hook(h: &Hook, device: &str, out: &mut Injected) -> Result<()> {
    let args = h.args.as_slice();
    let program = Path::new(&h.path).file_name().and_then(|n| n.to_str()).unwrap_or("");
    let command: &[String] = match (program, args) {
        ("nvidia-ctk", [_, hook, rest @ ..]) if hook == "hook" => rest,
        ("nvidia-cdi-hook", [_, rest @ ..]) => rest,
        _ => &[],
    };
    let shown = || format!("`{} {}`", h.path, args.get(1..).unwrap_or_default().join(" "));
    let Some((sub, flags)) = command.split_first() else {
        return Err(refused(device, &shown()));
    };
    match sub.as_str() {
        "update-ldcache" => out.lib_path.extend(flag_values(flags, "--folder").map(PathBuf::from)),
        "create-symlinks" => {
            for link in flag_values(flags, "--link") {
                let (target, at) = link.split_once("::").ok_or_else(|| {
                    Error(format!("CDI device {device}: hook {}: `{link}` is not TARGET::LINK", shown()))
                })?;
                out.links.push((at.into(), target.into()));
            }
        }
        "disable-device-node-modification" | "enable-cuda-compat" => {}
        _ => return Err(refused(device, &shown())),
    }
    Ok(())
}

fn refused(device: &str, hook: &str) -> Error {
    Error(format!(
        "CDI device {device}: the hook {hook} is not one bundle knows (nvidia-ctk's update-ldcache, \
         create-symlinks, disable-device-node-modification, enable-cuda-compat); bundle runs no host \
         programs in the container"
    ))
}

/// The values of `--flag VALUE` and `--flag=VALUE` in `args`.
fn flag_values<'a>(args: &'a [String], flag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    args.iter().enumerate().filter_map(move |(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec directory of the test's own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str, files: &[(&str, &str)]) -> Dir {
            let d = std::env::temp_dir().join(format!("bundle-cdi-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).unwrap();
            for (f, text) in files {
                fs::write(d.join(f), text).unwrap();
            }
            Dir(d)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const JSON: &str = r#"{
        "cdiVersion": "0.6.0",
        "kind": "example.com/dev",
        "containerEdits": {"env": ["EXAMPLE_ALL=1"]},
        "devices": [
            {"name": "null", "containerEdits": {
                "deviceNodes": [{"path": "/dev/example0", "hostPath": "/dev/null", "permissions": "r"}],
                "mounts": [{"hostPath": "/etc/hostname", "containerPath": "/opt/ex/name", "options": ["ro", "bind"]}],
                "env": ["EXAMPLE=null"]
            }},
            {"name": "zero", "containerEdits": {"deviceNodes": [{"path": "/dev/zero"}]}}
        ]
    }"#;

    const YAML: &str = "\
cdiVersion: 0.8.0
kind: nvidia.com/gpu
containerEdits:
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-ctk
    args: [nvidia-ctk, hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args:
    - nvidia-cdi-hook
    - create-symlinks
    - --link=libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, disable-device-node-modification]
devices:
- name: \"0\"
  containerEdits:
    deviceNodes:
    - path: /dev/full
";

    fn inject_from(d: &Dir, names: &[&str]) -> Result<Injected> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        inject(&names, &[d.0.as_path()])
    }

    #[test]
    fn a_json_device_becomes_binds_and_variables() {
        let d = Dir::new("json", &[("example.json", JSON)]);
        let got = inject_from(&d, &["example.com/dev=null"]).unwrap();
        assert_eq!(
            got.binds,
            [
                UserBind { src: "/dev/null".into(), dst: "/dev/example0".into(), readonly: true },
                UserBind { src: "/etc/hostname".into(), dst: "/opt/ex/name".into(), readonly: true },
            ]
        );
        assert_eq!(got.env, [("EXAMPLE_ALL".into(), "1".into()), ("EXAMPLE".into(), "null".into())]);
        // =all: every device of the kind, the spec's own edits once.
        let all = inject_from(&d, &["example.com/dev=all"]).unwrap();
        assert_eq!(all.binds.len(), 3);
        assert_eq!(all.env.iter().filter(|(k, _)| k == "EXAMPLE_ALL").count(), 1);
    }

    #[test]
    fn a_yaml_spec_with_nvidias_hooks() {
        let d = Dir::new("yaml", &[("nvidia.yaml", YAML)]);
        let got = inject_from(&d, &["nvidia.com/gpu=0"]).unwrap();
        assert_eq!(got.lib_path, [PathBuf::from("/usr/lib/x86_64-linux-gnu")]);
        assert_eq!(got.links, [(PathBuf::from("/usr/lib/x86_64-linux-gnu/libcuda.so"), PathBuf::from("libcuda.so.1"))]);
        assert_eq!(got.binds, [UserBind { src: "/dev/full".into(), dst: "/dev/full".into(), readonly: false }]);
    }

    #[test]
    fn an_unknown_device_lists_the_known_ones() {
        let d = Dir::new("unknown", &[("a.json", JSON), ("b.yaml", YAML)]);
        let err = inject_from(&d, &["example.com/dev=nope"]).unwrap_err().0;
        assert!(err.contains("unknown CDI device `example.com/dev=nope`"), "{err}");
        assert!(err.contains("example.com/dev=null, example.com/dev=zero, nvidia.com/gpu=0"), "{err}");
        let empty = Dir::new("empty", &[]);
        let err = inject_from(&empty, &["example.com/dev=all"]).unwrap_err().0;
        assert!(err.contains("no CDI specs with devices in"), "{err}");
        let err = inject_from(&d, &["nvidia.com/gpu"]).unwrap_err().0;
        assert!(err.contains("fully qualified name"), "{err}");
    }

    #[test]
    fn bad_specs_are_one_clear_error_naming_the_file() {
        for (file, text, needle) in [
            ("v.json", r#"{"cdiVersion": "0.4.0", "kind": "a.com/b", "devices": []}"#, "cdiVersion `0.4.0`"),
            ("v.yaml", "cdiVersion: 1.0.0\nkind: a.com/b\n", "cdiVersion `1.0.0`"),
            ("k.yaml", "cdiVersion: 0.5.0\nkind: nokind\n", "kind `nokind`"),
            ("j.json", "{\"cdiVersion\": ", "line 1: expected `,`"),
            ("y.yaml", "cdiVersion: 0.5.0\n kind: x\n", "line 2"),
            ("m.yaml", "kind: a.com/b\n", "missing field `cdiVersion`"),
            ("l.json", r#"{"cdiVersion": "0.5.0", "kind": "a.com/b", "devices": {}}"#, "`devices` must be a list"),
        ] {
            let d = Dir::new("bad", &[(file, text)]);
            let err = inject_from(&d, &["a.com/b=x"]).unwrap_err().0;
            let path = d.0.join(file);
            assert!(err.starts_with(&format!("bad CDI spec {}: ", path.display())), "{err}");
            assert!(err.contains(needle), "{file}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn unknown_hooks_other_mounts_and_missing_nodes_are_refused() {
        let spec = |edits: &str| {
            format!(
                r#"{{"cdiVersion": "0.5.0", "kind": "a.com/b", "devices": [{{"name": "x", "containerEdits": {edits}}}]}}"#
            )
        };
        for (edits, needle) in [
            (
                r#"{"hooks": [{"hookName": "createContainer", "path": "/usr/bin/sh", "args": ["sh", "-c", "x"]}]}"#,
                "the hook `/usr/bin/sh -c x` is not one bundle knows",
            ),
            (
                r#"{"hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk", "args": ["nvidia-ctk", "hook", "chmod"]}]}"#,
                "is not one bundle knows",
            ),
            (r#"{"mounts": [{"hostPath": "x", "containerPath": "/x", "type": "tmpfs"}]}"#, "only bind mounts"),
            (r#"{"deviceNodes": [{"path": "/dev/no-such-device"}]}"#, "/dev/no-such-device is not a device node"),
            (r#"{"env": ["NOEQUALS"]}"#, "not NAME=VALUE"),
        ] {
            let d = Dir::new("refused", &[("s.json", &spec(edits))]);
            let err = inject_from(&d, &["a.com/b=x"]).unwrap_err().0;
            assert!(err.starts_with("CDI device a.com/b=x: "), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }
}
