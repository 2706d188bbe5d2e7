//! `bundle inspect --sbom`: what is in a bundle, as an SPDX 2.3 JSON document.
//!
//! Packages: the bundle itself, each RPM input (name, version, architecture and the
//! file's SHA-256, with a `pkg:rpm` purl), and each package of the build host that
//! owns a file the closure added (recorded at build time, see `owners.rs`; `pkg:deb`
//! or `pkg:rpm` purl). Files: those closure files, with their SHA-256 read from the
//! image, each contained in the bundle and, where known, in its host package.

use crate::inspect::{open, open_image};
use anyhow::{Context, Result};
use bundle_format::{hex, Bundle, HostPackage};
use bundle_squashfs::{Image, Kind};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

pub fn sbom(path: &Path) -> Result<()> {
    let b = open(path)?;
    let image = open_image(&b, path)?;
    let doc = document(path, &b, &image)?;
    println!("{}", serde_json::to_string_pretty(&doc).expect("JSON serialises"));
    Ok(())
}

fn document(path: &Path, b: &Bundle, image: &Image) -> Result<Value> {
    let m = &b.metadata;
    let name = path.file_name().map_or("bundle".into(), |n| n.to_string_lossy().into_owned());
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-Bundle",
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{"algorithm": "SHA256", "checksumValue": b.image_digest()}],
        "comment": "the bundle's squashfs image; the checksum is the image's (bundle inspect)",
    })];
    let mut relationships = vec![rel("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Bundle")];
    for (n, input) in m.inputs.iter().enumerate().filter(|(_, i)| i.kind == "rpm") {
        let id = format!("SPDXRef-Rpm-{n}");
        let nevra = input.nevra.clone().unwrap_or_else(|| input.path.clone());
        let (pname, version, arch) = split_nevra(&nevra);
        let mut p = json!({
            "SPDXID": id,
            "name": pname,
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "packageFileName": input.path,
            "externalRefs": [purl(&format!("pkg:rpm/{pname}@{version}?arch={arch}"))],
        });
        if let Some(sha) = &input.sha256 {
            p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sha}]);
        }
        packages.push(p);
        relationships.push(rel("SPDXRef-Bundle", "CONTAINS", &id));
    }
    let mut host: BTreeMap<(String, String, String), String> = BTreeMap::new();
    let mut files = Vec::new();
    for (n, f) in m.provided.iter().enumerate() {
        let Some(sha) = file_sha256(image, &f.path).with_context(|| format!("{}: {}", path.display(), f.path))? else {
            continue;
        };
        let id = format!("SPDXRef-File-{n}");
        files.push(json!({
            "SPDXID": id,
            "fileName": format!(".{}", f.path),
            "checksums": [{"algorithm": "SHA256", "checksumValue": sha}],
            "comment": format!("from {} on the build host: {}", f.source, f.reason),
        }));
        relationships.push(rel("SPDXRef-Bundle", "CONTAINS", &id));
        if let Some(pkg) = &f.package {
            let next = format!("SPDXRef-Host-{}", host.len());
            let key = (pkg.manager.clone(), pkg.name.clone(), pkg.version.clone());
            let pid = host.entry(key).or_insert_with(|| {
                packages.push(host_package(&next, pkg));
                next.clone()
            });
            relationships.push(rel(pid, "CONTAINS", &id));
        }
    }
    Ok(json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://spdx.org/spdxdocs/bundle-{}", hex(&b.trailer.metadata_sha256)),
        "creationInfo": {"created": iso8601(m.created), "creators": [format!("Tool: {}", m.bundler.replace(' ', "-"))]},
        "packages": packages,
        "files": files,
        "relationships": relationships,
    }))
}

fn host_package(id: &str, p: &HostPackage) -> Value {
    let purl = match p.manager.as_str() {
        "dpkg" => format!("pkg:deb/{}@{}?arch={}", p.name, p.version, p.arch),
        _ => format!("pkg:rpm/{}@{}?arch={}", p.name, p.version, p.arch),
    };
    json!({
        "SPDXID": id,
        "name": p.name,
        "versionInfo": p.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "comment": format!("installed on the build host ({})", p.manager),
        "externalRefs": [crate::sbom::purl(&purl)],
    })
}

fn purl(locator: &str) -> Value {
    json!({"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": locator})
}

fn rel(from: &str, kind: &str, to: &str) -> Value {
    json!({"spdxElementId": from, "relationshipType": kind, "relatedSpdxElement": to})
}

/// `name-version-release.arch` → (name, version-release, arch).
fn split_nevra(nevra: &str) -> (String, String, String) {
    let (rest, arch) = nevra.rsplit_once('.').unwrap_or((nevra, ""));
    let mut parts = rest.rsplitn(3, '-');
    let (release, version, name) = (parts.next(), parts.next(), parts.next());
    match (name, version, release) {
        (Some(n), Some(v), Some(r)) => (n.into(), format!("{v}-{r}"), arch.into()),
        _ => (nevra.into(), "NOASSERTION".into(), String::new()),
    }
}

/// The SHA-256 of a regular file of the image; `None` for links and directories.
fn file_sha256(image: &Image, path: &str) -> Result<Option<String>> {
    let Some(inode) = image.lookup_path(Path::new(path))? else { return Ok(None) };
    if inode.kind != Kind::File {
        return Ok(None);
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 17];
    let mut pos = 0;
    while pos < inode.size {
        let n = image.read_at(&inode, pos, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(Some(hex(&h.finalize())))
}

/// Seconds since the epoch as `YYYY-MM-DDThh:mm:ssZ`.
fn iso8601(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = crate::inspect::civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nevra_and_dates() {
        assert_eq!(split_nevra("hello-rpm-1.0-1.x86_64"), ("hello-rpm".into(), "1.0-1".into(), "x86_64".into()));
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_796_163_631), "2026-12-01T22:20:31Z");
    }
}
