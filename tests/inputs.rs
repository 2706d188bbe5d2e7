//! Issue 13, end to end: inputs people already have. OCI images made by `umoci` and
//! converted by `skopeo` (Debian's packages), build files, file lists that follow links;
//! each bundle runs as an ordinary user.

use e2e::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BOTH: [Mode; 2] = [Mode::Fuse, Mode::Extract];

fn require(program: &str, package: &str) {
    let ok = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "{program} is missing (Debian package {package}): run the suite with ./scripts/test");
}

fn ok(cmd: &mut Command) -> Out {
    let out = run(cmd);
    out.assert_success();
    out
}

fn inspect_json(bundle: &Path) -> Value {
    let out = run(e2e::bundle(&[OsStr::new("inspect"), OsStr::new("--json"), bundle.as_os_str()]));
    out.assert_success();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"))
}

fn runs_in_both_modes(t: &Test, bundle: &Path, args: &[&str], stdout: &str) {
    for mode in BOTH {
        if mode == Mode::Fuse {
            require_fuse();
        }
        run(&mut t.app(bundle, mode, args)).assert_success().assert_stdout(stdout);
    }
}

// ---------------------------------------------------------------------------------------
// OCI images

/// What the image's command prints: its environment, working directory (the caller's:
/// the runtime keeps it), and what the upper layers deleted.
const SCRIPT: &str =
    r#"echo "greeting=$GREETING"; ls /opt/data; ls /etc | grep -e gone -e kept -e added; echo "args: $*""#;
const EXPECTED: &str = "greeting=hello\nfresh\nadded\nkept\nargs: one two\n";

/// The image: busybox and the probe; a second layer (umoci unpack/repack) deletes
/// `/etc/gone` (a `.wh.` whiteout) and adds `/etc/added`; a third (added verbatim, as
/// umoci writes per-file whiteouts itself) makes `/opt/data` opaque and adds `fresh`.
/// Returns the OCI layout (tag `t`), a docker-archive and an oci-archive of it.
struct Images {
    layout: PathBuf,
    docker: PathBuf,
    oci_archive: PathBuf,
}

fn images() -> &'static Images {
    static I: OnceLock<Images> = OnceLock::new();
    I.get_or_init(|| {
        require("umoci", "umoci");
        require("skopeo", "skopeo");
        let dir = shared_dir().join("oci");
        fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("layout");
        let umoci = |args: &[&OsStr]| ok(Command::new("umoci").args(args).current_dir(&dir));
        let img = OsStr::new("layout:t");
        umoci(&["init".as_ref(), "--layout".as_ref(), layout.as_os_str()]);
        umoci(&["new".as_ref(), "--image".as_ref(), img]);
        let b = dir.join("b");
        let unpack = || umoci(&["unpack".as_ref(), "--rootless".as_ref(), "--image".as_ref(), img, b.as_os_str()]);
        let repack = || umoci(&["repack".as_ref(), "--image".as_ref(), img, b.as_os_str()]);
        unpack();
        let root = b.join("rootfs");
        make_rootfs(&root);
        for d in ["etc", "opt/data/sub", "work"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["etc/gone", "etc/kept", "opt/data/old", "opt/data/sub/deep"] {
            fs::write(root.join(f), f).unwrap();
        }
        repack();
        fs::remove_dir_all(&b).unwrap();
        unpack();
        fs::remove_file(root.join("etc/gone")).unwrap();
        fs::write(root.join("etc/added"), "added").unwrap();
        repack();
        let l3 = dir.join("l3");
        fs::create_dir_all(l3.join("opt/data")).unwrap();
        fs::write(l3.join("opt/data/.wh..wh..opq"), "").unwrap();
        fs::write(l3.join("opt/data/fresh"), "fresh").unwrap();
        let l3_tar = dir.join("l3.tar");
        ok(Command::new("tar").arg("-C").arg(&l3).arg("-cf").arg(&l3_tar).arg("opt"));
        umoci(&["raw".as_ref(), "add-layer".as_ref(), "--image".as_ref(), img, l3_tar.as_os_str()]);
        umoci(&[
            "config".as_ref(),
            "--image".as_ref(),
            img,
            "--config.entrypoint".as_ref(),
            "/bin/sh".as_ref(),
            "--config.cmd".as_ref(),
            "-c".as_ref(),
            "--config.cmd".as_ref(),
            SCRIPT.as_ref(),
            "--config.cmd".as_ref(),
            "sh".as_ref(),
            "--config.env".as_ref(),
            "GREETING=hello".as_ref(),
            "--config.workingdir".as_ref(),
            "/work".as_ref(),
            "--config.label".as_ref(),
            "org.example.kind=test".as_ref(),
        ]);
        let docker = dir.join("docker.tar");
        let oci_archive = dir.join("oci.tar");
        let src = format!("oci:{}:t", layout.display());
        ok(Command::new("skopeo").arg("copy").arg(&src).arg(format!("docker-archive:{}:app:t", docker.display())));
        ok(Command::new("skopeo").arg("copy").arg(&src).arg(format!("oci-archive:{}:app:t", oci_archive.display())));
        Images { layout, docker, oci_archive }
    })
}

fn oci_bundle_runs(source: &Path, name: &str) {
    let t = Test::new(name);
    let out = t.dir.join("app.sif");
    Build::new().arg("--oci").arg(source).build(&out);
    runs_in_both_modes(&t, &out, &["one", "two"], EXPECTED);
    let m = inspect_json(&out);
    assert_eq!(m["env"]["GREETING"], "hello", "{m:#}");
    assert_eq!(m["workdir"], "/work", "{m:#}");
    assert_eq!(m["labels"]["org.example.kind"], "test", "{m:#}");
    assert_eq!(m["entrypoint"][0], "/bin/sh", "{m:#}");
    let input = &m["inputs"][0];
    assert_eq!(input["kind"], "oci", "{m:#}");
    assert!(input["digest"].as_str().is_some_and(|d| d.starts_with("sha256:") && d.len() == 71), "{m:#}");
    // A whole root: nothing from the build host.
    assert_eq!(m["provided"].as_array().map_or(0, Vec::len), 0, "{m:#}");
}

#[test]
fn oci_layout_from_umoci() {
    oci_bundle_runs(&images().layout, "oci-layout");
}

#[test]
fn docker_archive_from_skopeo() {
    oci_bundle_runs(&images().docker, "docker-archive");
}

#[test]
fn oci_archive_from_skopeo() {
    oci_bundle_runs(&images().oci_archive, "oci-archive");
}

#[test]
fn oci_ref_chooses_and_a_wrong_one_is_named() {
    let t = Test::new("oci-ref");
    let out = t.dir.join("app.sif");
    Build::new().arg("--oci").arg(&images().layout).arg("--oci-ref").arg("t").build(&out);
    let m = inspect_json(&out);
    assert_eq!(m["inputs"][0]["reference"], "t", "{m:#}");
    let bad = t.dir.join("bad.sif");
    Build::new().arg("--oci").arg(&images().docker).arg("--oci-ref").arg("nope").run(&bad).assert_bundle_error("app:t");
    assert!(!bad.exists());
}

#[test]
fn entrypoint_option_replaces_the_image_command() {
    let t = Test::new("oci-entrypoint");
    let out = t.dir.join("app.sif");
    Build::new()
        .arg("--oci")
        .arg(&images().docker)
        .entrypoint("/bin/echo")
        .arg("--env")
        .arg("GREETING=over")
        .build(&out);
    run(&mut t.app(&out, Mode::Extract, &["plain"])).assert_success().assert_stdout("plain\n");
    assert_eq!(inspect_json(&out)["env"]["GREETING"], "over");
}

#[test]
fn a_damaged_layer_is_refused() {
    let t = Test::new("oci-damaged");
    let layout = t.dir.join("layout");
    ok(Command::new("cp").arg("-a").arg(&images().layout).arg(&layout));
    // The biggest blob is the busybox layer: flip a byte in its middle.
    let blobs = layout.join("blobs/sha256");
    let biggest = fs::read_dir(&blobs).unwrap().map(|e| e.unwrap().path()).max_by_key(|p| p.metadata().unwrap().len());
    let biggest = biggest.unwrap();
    let mut bytes = fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&biggest, bytes).unwrap();
    let out = t.dir.join("app.sif");
    let res = Build::new().arg("--oci").arg(&layout).run(&out);
    res.assert_bundle_error("layer");
    assert!(!out.exists());
}

#[test]
fn not_an_image_is_explained() {
    let t = Test::new("oci-not-an-image");
    let empty = t.dir.join("empty");
    fs::create_dir(&empty).unwrap();
    let out = t.dir.join("app.sif");
    Build::new().arg("--oci").arg(&empty).run(&out).assert_bundle_error("not an OCI image layout");
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------
// Build files

/// `examples/hello-rpm/*.rpm`.
fn example_rpms() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-rpm");
    let mut rpms: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some(OsStr::new("rpm")))
        .map(|p| p.display().to_string())
        .collect();
    rpms.sort();
    rpms
}

#[test]
fn build_file_with_every_key_and_the_command_line_over_it() {
    let t = Test::new("buildfile");
    let d = t.dir.path();
    make_rootfs(&d.join("root"));
    fs::write(d.join("note"), "from file\n").unwrap();
    fs::write(d.join("listed"), "from list\n").unwrap();
    fs::write(d.join("list"), "listed=/opt/listed\n").unwrap();
    let toml = format!(
        r#"# every key the command line has
oci = "{layout}"
oci_ref = "t"
rpm = [{rpms}]
dir = "root"
files = "list"
file = ["note=/opt/note"]
include = "/usr/bin/env"
entrypoint = ["/bin/sh", "-c", "cat /opt/note /opt/listed; echo $GREETING $FROM; /usr/libexec/hello-rpm/hello >/dev/null && echo rpm ok; echo $0"]
output = "from-file.sif"
level = 5
block_size = 65536
threads = 1
stub = "{stub}"
closure = true
allow_missing = false
binds = ["/tmp:/mnt"]
[env]
FROM = "buildfile"
[labels]
made = "by a build file"
"#,
        layout = images().layout.display(),
        rpms = example_rpms().iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", "),
        stub = stub_bin().display(),
    );
    let file = d.join("bundle.toml");
    fs::write(&file, toml).unwrap();
    // From another directory: paths are the file's. `-o` and `--level` override it.
    let out = d.join("over.sif");
    let mut c = Command::new(bundle_bin());
    c.arg("build").arg("-f").arg(&file).arg("-o").arg(&out).arg("--level").arg("3").current_dir("/");
    ok(&mut c);
    assert!(!d.join("from-file.sif").exists());
    run(&mut t.app(&out, Mode::Extract, &["arg"]))
        .assert_success()
        .assert_stdout("from file\nfrom list\nhello buildfile\nrpm ok\narg\n");
    let m = inspect_json(&out);
    assert_eq!(m["image"]["level"], 3, "{m:#}");
    assert_eq!(m["image"]["block_size"], 65536, "{m:#}");
    assert_eq!(m["labels"]["made"], "by a build file", "{m:#}");
    assert_eq!(m["labels"]["org.example.kind"], "test", "{m:#}");
    assert_eq!(m["binds"][0], "/tmp:/mnt", "{m:#}");
    let kinds: Vec<&str> = m["inputs"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["oci", "rpm", "rpm", "dir", "files", "file"], "{m:#}");
    assert!(m["provided"].as_array().unwrap().iter().any(|p| p["path"] == "/usr/bin/env"), "{m:#}");
}

#[test]
fn build_file_unknown_key_is_named_with_its_line() {
    let t = Test::new("buildfile-bad-key");
    let file = t.dir.join("bundle.toml");
    fs::write(&file, "dir = \"root\"\n\nentrypiont = \"/bin/sh\"\n").unwrap();
    let out = t.dir.join("app.sif");
    let res = Build::new().arg("-f").arg(&file).run(&out);
    res.assert_bundle_error("bundle.toml:3: unknown field `entrypiont`");
    assert!(!out.exists());
}

#[test]
fn example_build_file_builds_and_runs() {
    let t = Test::new("buildfile-example");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/buildfile/bundle.toml");
    let out = t.dir.join("greet.sif");
    Build::new().arg("-f").arg(&file).build(&out);
    run(&mut t.app(&out, Mode::Extract, &["world"]))
        .assert_success()
        .assert_stdout("hello from a bundle built by bundle.toml (args: --from-build-file world)\n");
}

// ---------------------------------------------------------------------------------------
// File lists that follow links

#[test]
fn bin_sh_from_a_file_list_runs_on_merged_usr() {
    let t = Test::new("list-bin-sh");
    let list = t.dir.join("l");
    fs::write(&list, "/bin/sh\n").unwrap();
    let out = t.dir.join("sh.sif");
    Build::new().arg("--files").arg(&list).entrypoint("/bin/sh").build(&out);
    runs_in_both_modes(&t, &out, &["-c", "echo works"], "works\n");
}

#[test]
fn a_file_option_link_brings_its_target() {
    // `/usr/bin/python3` is a link to `python3.X` on Debian.
    let t = Test::new("file-link");
    let out = t.dir.join("py.sif");
    Build::new().arg("--file").arg("/usr/bin/python3").arg("--level").arg("1").build(&out);
    let m = inspect_json(&out);
    assert!(
        m["provided"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["reason"].as_str().unwrap_or("").contains("target of /usr/bin/python3")),
        "{m:#}"
    );
}

// ---------------------------------------------------------------------------------------
// Interpreters with their standard libraries

fn script_bundle(t: &Test, name: &str, text: &str) -> PathBuf {
    let script = t.dir.join(name);
    fs::write(&script, text).unwrap();
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let list = t.dir.join("list");
    fs::write(&list, format!("{}=/usr/bin/{name}\n", script.display())).unwrap();
    let out = t.dir.join(format!("{name}.sif"));
    let res = Build::new().arg("--files").arg(&list).arg("--level").arg("1").run(&out);
    res.assert_success();
    assert!(res.stderr().contains("its standard library from the build host"), "{res}");
    out
}

#[test]
fn python_script_from_a_file_list_imports_json_and_sqlite3() {
    require("/usr/bin/python3", "python3");
    let t = Test::new("python-stdlib");
    let text = "#!/usr/bin/python3\nimport json, sqlite3\n\
                print(json.dumps({'sum': sqlite3.connect(':memory:').execute('select 1+1').fetchone()[0]}))\n";
    let out = script_bundle(&t, "pyapp", text);
    runs_in_both_modes(&t, &out, &[], "{\"sum\": 2}\n");
}

#[test]
fn perl_script_from_a_file_list_uses_strict_and_posix() {
    require("/usr/bin/perl", "perl");
    let t = Test::new("perl-stdlib");
    let text = "#!/usr/bin/perl\nuse strict;\nuse warnings;\nuse POSIX qw(floor);\nprint floor(2.7), \"\\n\";\n";
    let out = script_bundle(&t, "plapp", text);
    let mut c = t.app(&out, Mode::Extract, &[] as &[&str]);
    // The image has no locales: keep perl from warning about the caller's.
    c.env("LC_ALL", "C");
    run(&mut c).assert_success().assert_stdout("2\n");
}

// ---------------------------------------------------------------------------------------
// SIF files and squashfs images

/// An Apptainer-like root (busybox, a runscript, `%environment`, labels) as a gzip
/// squashfs image made by mksquashfs.
fn apptainer_squashfs(dir: &Path) -> PathBuf {
    let root = dir.join("sif-root");
    make_rootfs(&root);
    let meta = root.join(".singularity.d");
    fs::create_dir_all(meta.join("env")).unwrap();
    fs::write(meta.join("runscript"), "#!/bin/sh\necho \"runscript: $GREETING $*\"\n").unwrap();
    fs::set_permissions(meta.join("runscript"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::write(meta.join("env/90-environment.sh"), "export GREETING=from-environment\n").unwrap();
    fs::write(meta.join("labels.json"), "{\"org.label-schema.name\": \"sif-test\"}").unwrap();
    let image = dir.join("root.sqfs");
    ok(Command::new("mksquashfs").arg(&root).arg(&image).args([
        "-comp",
        "gzip",
        "-quiet",
        "-noappend",
        "-no-progress",
    ]));
    image
}

const DESCRIPTOR_LEN: usize = 585;

/// A SIF file laid out as apptainer/sif's pkg/sif does: the 128-byte global header, a
/// descriptor table at 4096 (a definition file, then the partition with file system
/// type `fs` and partition type `part` in its "extra" bytes), then the objects.
fn sif_file(partition: &[u8], fs_type: i32, part_type: i32) -> Vec<u8> {
    let deffile = b"Bootstrap: scratch\n".to_vec();
    let objects: [(i32, &[u8]); 2] = [(0x4001, &deffile), (0x4004, partition)];
    let table_at = 4096usize;
    let data_at = 32768usize;
    let mut out = vec![0u8; data_at];
    out[..31].copy_from_slice(b"#!/usr/bin/env run-singularity\n");
    out[32..41].copy_from_slice(b"SIF_MAGIC");
    out[42..44].copy_from_slice(b"01");
    out[45..47].copy_from_slice(b"02");
    let i64s = [(88, 48i64), (96, table_at as i64), (104, (2 * DESCRIPTOR_LEN) as i64), (112, data_at as i64)];
    for (at, v) in i64s {
        out[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    let mut at = data_at;
    for (i, (kind, data)) in objects.iter().enumerate() {
        let d = &mut out[table_at + i * DESCRIPTOR_LEN..][..DESCRIPTOR_LEN];
        d[0..4].copy_from_slice(&kind.to_le_bytes());
        d[4] = 1; // used
        d[5..9].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        d[17..25].copy_from_slice(&(at as i64).to_le_bytes());
        d[25..33].copy_from_slice(&(data.len() as i64).to_le_bytes());
        if *kind == 0x4004 {
            d[201..205].copy_from_slice(&fs_type.to_le_bytes());
            d[205..209].copy_from_slice(&part_type.to_le_bytes());
            d[209..211].copy_from_slice(b"02");
        }
        at += data.len();
    }
    for (_, data) in objects {
        out.extend_from_slice(data);
    }
    out
}

#[test]
fn sif_file_with_a_gzip_partition_runs_its_runscript() {
    let t = Test::new("sif");
    let image = apptainer_squashfs(t.dir.path());
    let sif = t.dir.join("in.sif");
    fs::write(&sif, sif_file(&fs::read(&image).unwrap(), 1, 2)).unwrap();
    let out = t.dir.join("app.sif");
    Build::new().arg("--sif").arg(&sif).build(&out);
    runs_in_both_modes(&t, &out, &["a", "b"], "runscript: from-environment a b\n");
    let m = inspect_json(&out);
    assert_eq!(m["labels"]["org.label-schema.name"], "sif-test", "{m:#}");
    assert_eq!(m["image"]["compression"], "zstd", "{m:#}");
    assert_eq!(m["inputs"][0]["kind"], "sif", "{m:#}");
}

#[test]
fn plain_squashfs_image_becomes_the_root() {
    let t = Test::new("sqfs");
    let image = apptainer_squashfs(t.dir.path());
    let out = t.dir.join("app.sif");
    Build::new().arg("--image").arg(&image).build(&out);
    run(&mut t.app(&out, Mode::Extract, &["x"])).assert_success().assert_stdout("runscript: from-environment x\n");
}

#[test]
fn encrypted_corrupt_and_foreign_sif_files_are_explained() {
    let t = Test::new("sif-bad");
    let image = fs::read(apptainer_squashfs(t.dir.path())).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("encrypted", sif_file(&image, 5, 2), "encrypted"),
        ("ext3", sif_file(&image, 2, 2), "not squashfs"),
        ("damaged", sif_file(&image[..image.len() / 2], 1, 2), "squashfs"),
        ("no-magic", b"#!/bin/sh\necho not a sif\n".repeat(10), "not a SIF file"),
    ];
    for (name, bytes, needle) in cases {
        let sif = t.dir.join(format!("{name}.sif"));
        fs::write(&sif, bytes).unwrap();
        let out = t.dir.join(format!("{name}-out.sif"));
        Build::new().arg("--sif").arg(&sif).run(&out).assert_bundle_error(needle);
        assert!(!out.exists(), "{name}");
    }
}

// ---------------------------------------------------------------------------------------
// The CLI around it

#[test]
fn restub_keeps_the_image_and_its_digest() {
    let t = Test::new("restub");
    let root = t.dir.join("root");
    make_rootfs(&root);
    let app = Build::new().dir(&root).entrypoint("/bin/echo").build(&t.dir.join("app.sif"));
    let before = inspect_json(&app);
    let verify = |p: &Path| ok(&mut e2e::bundle(&[OsStr::new("verify"), p.as_os_str()])).stdout();
    let verified = verify(&app);
    // A stub of another size: the image moves to the next 4096-byte boundary.
    let bigger = t.dir.join("bigger-stub");
    let mut stub = fs::read(stub_bin()).unwrap();
    stub.extend(std::iter::repeat_n(0u8, 5000));
    fs::write(&bigger, stub).unwrap();
    let out = ok(&mut e2e::bundle(&[OsStr::new("restub"), app.as_os_str(), OsStr::new("--stub"), bigger.as_os_str()]));
    assert!(out.stderr().contains("unchanged"), "{out}");
    assert_eq!(verify(&app), verified);
    // The metadata is the same but for the stub's digest, which it records.
    let stub_digest = |mut v: serde_json::Value| {
        let d = v["integrity"]["stub_sha256"].take();
        (v, d)
    };
    let ((after, new_stub), (before, old_stub)) = (stub_digest(inspect_json(&app)), stub_digest(before));
    assert_eq!(after, before);
    assert!(new_stub.is_string() && new_stub != old_stub, "{new_stub} {old_stub}");
    run(&mut t.app(&app, Mode::Extract, &["still", "runs"])).assert_success().assert_stdout("still runs\n");
    let not_a_bundle = t.dir.join("root/bin/busybox");
    run(e2e::bundle(&[OsStr::new("restub"), not_a_bundle.as_os_str()])).assert_bundle_error("busybox");
}

#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(&mut e2e::bundle(&[OsStr::new("completions"), OsStr::new(shell)]));
        assert!(out.stdout().contains("restub") && out.stdout().contains("oci-ref"), "{shell}\n{out}");
    }
    let out = ok(&mut e2e::bundle(&[OsStr::new("man")]));
    assert!(out.stdout().contains(".TH bundle 1"), "{out}");
    let out = ok(&mut e2e::bundle(&[OsStr::new("man"), OsStr::new("build")]));
    assert!(out.stdout().contains("oci\\-ref"), "{out}");
}

#[test]
fn inspect_shows_the_build_time_as_a_date() {
    let t = Test::new("inspect-date");
    let root = t.dir.join("root");
    make_rootfs(&root);
    let out = t.dir.join("app.sif");
    Build::new().dir(&root).entrypoint("/bin/echo").env("SOURCE_DATE_EPOCH", "1700000000").build(&out);
    let shown = ok(&mut e2e::bundle(&[OsStr::new("inspect"), out.as_os_str()]));
    assert!(shown.stdout().contains("created:     2023-11-14 22:13:20 UTC"), "{shown}");
}
