//! Which package of the build host owns a file the closure brought: for the SBOM
//! (`bundle inspect --sbom`), recorded in the metadata at build time, because the
//! build host's package database is not there when the bundle is inspected.
//!
//! dpkg's database is read directly (`/var/lib/dpkg/info/*.list` for the files,
//! `/var/lib/dpkg/status` for versions); rpm's through `rpm -qf`, once per file, only
//! where there is no dpkg database. A file no package owns is left without one.

use bundle_format::{HostPackage, ProvidedFile};
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;

const DPKG: &str = "/var/lib/dpkg";

pub fn annotate(provided: &mut [ProvidedFile]) {
    if Path::new(DPKG).join("status").is_file() {
        let owners = dpkg_owners(Path::new(DPKG));
        for p in provided.iter_mut() {
            p.package = aliases(&p.source).iter().find_map(|a| owners.get(a)).cloned();
        }
    } else if ["/var/lib/rpm", "/usr/lib/sysimage/rpm"].iter().any(|d| Path::new(d).is_dir()) {
        for p in provided.iter_mut().filter(|p| p.source.starts_with('/')) {
            p.package = rpm_owner(&p.source);
        }
    }
}

/// The names a file may be listed under: merged-/usr hosts list `/lib/x` or `/usr/lib/x`.
fn aliases(path: &str) -> Vec<String> {
    let mut out = vec![path.to_string()];
    match path.strip_prefix("/usr") {
        Some(rest) if rest.starts_with('/') => out.push(rest.to_string()),
        _ => out.push(format!("/usr{path}")),
    }
    out
}

/// Every file dpkg knows, with its package.
fn dpkg_owners(db: &Path) -> HashMap<String, HostPackage> {
    let versions = dpkg_versions(&fs::read_to_string(db.join("status")).unwrap_or_default());
    let mut owners = HashMap::new();
    for entry in fs::read_dir(db.join("info")).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pkg) = file.strip_suffix(".list") else { continue };
        let (name, arch) = pkg.split_once(':').unwrap_or((pkg, ""));
        let Some((version, db_arch)) = versions.get(name) else { continue };
        let arch = if arch.is_empty() { db_arch.clone() } else { arch.to_string() };
        let package = HostPackage { manager: "dpkg".into(), name: name.into(), version: version.clone(), arch };
        for line in fs::read_to_string(entry.path()).unwrap_or_default().lines() {
            owners.entry(line.to_string()).or_insert_with(|| package.clone());
        }
    }
    owners
}

/// Installed packages in a dpkg status file: name → (version, architecture).
fn dpkg_versions(status: &str) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    for stanza in status.split("\n\n") {
        let field = |k: &str| stanza.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
        let installed = field("Status:").is_some_and(|s| s.ends_with("installed") && !s.contains("not-installed"));
        if let (true, Some(name), Some(version)) = (installed, field("Package:"), field("Version:")) {
            out.insert(name, (version, field("Architecture:").unwrap_or_default()));
        }
    }
    out
}

fn rpm_owner(path: &str) -> Option<HostPackage> {
    let out = Command::new("rpm")
        .args(["-qf", "--queryformat", "%{NAME}\\t%{EVR}\\t%{ARCH}\\n", path])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.lines().next()?.split('\t');
    let (name, version, arch) = (f.next()?, f.next()?, f.next().unwrap_or_default());
    Some(HostPackage { manager: "rpm".into(), name: name.into(), version: version.into(), arch: arch.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_and_aliases() {
        let status = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n";
        let v = dpkg_versions(status);
        assert_eq!(v.get("libc6"), Some(&("2.36-9".to_string(), "amd64".to_string())));
        assert!(!v.contains_key("gone"));
        assert_eq!(aliases("/usr/lib/x.so"), ["/usr/lib/x.so", "/lib/x.so"]);
        assert_eq!(aliases("/lib/x.so"), ["/lib/x.so", "/usr/lib/x.so"]);
    }

    #[test]
    fn this_hosts_libc_has_an_owner() {
        if !Path::new(DPKG).join("status").is_file() {
            return;
        }
        let libc = fs::canonicalize("/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let mut p = [ProvidedFile {
            path: "/x".into(),
            source: libc.display().to_string(),
            reason: String::new(),
            package: None,
        }];
        annotate(&mut p);
        assert_eq!(p[0].package.as_ref().map(|p| p.name.as_str()), Some("libc6"), "{:?}", p[0]);
    }
}
