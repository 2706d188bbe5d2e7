//! Which image of a layout or archive to take, and its manifest, config and layers.
//!
//! An OCI layout's `index.json` names images by the `org.opencontainers.image.ref.name`
//! annotation (the tag for skopeo and umoci, a full name for podman); an entry may be an
//! index of per-platform manifests, of which linux/amd64 is taken. A docker archive's
//! `manifest.json` lists images with their `RepoTags`.

use super::source::Blobs;
use anyhow::{bail, Context, Result};
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, Os};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const IMAGE_NAME: &str = "io.containerd.image.name";

pub struct Chosen {
    pub config: Vec<u8>,
    /// Layer blobs, bottom first, as names for [`Blobs::read`].
    pub layers: Vec<String>,
    pub digest: String,
    pub reference: Option<String>,
}

pub fn choose(blobs: &Blobs, reference: Option<&str>) -> Result<Chosen> {
    if blobs.exists("index.json") {
        from_layout(blobs, reference)
    } else if blobs.exists("manifest.json") {
        from_docker_archive(blobs, reference)
    } else {
        bail!("not an OCI image layout, oci-archive or docker-archive (it has no index.json or manifest.json)")
    }
}

fn from_layout(blobs: &Blobs, reference: Option<&str>) -> Result<Chosen> {
    let index = parse_index(&blobs.read_all("index.json")?)?;
    let named = |d: &&Descriptor| reference.is_none_or(|r| names(d).iter().any(|n| matches(n, r)));
    let candidates: Vec<&Descriptor> = index.manifests().iter().filter(named).collect();
    let desc = match candidates.as_slice() {
        [one] => *one,
        [] if reference.is_some() => {
            bail!("no image named {} here; it holds: {}", reference.unwrap_or(""), listing(index.manifests()))
        }
        [] => bail!("the image index lists no image"),
        many => match many.iter().filter(|d| is_amd64(d)).collect::<Vec<_>>().as_slice() {
            [one] => **one,
            _ => bail!("it holds several images, choose one with --oci-ref: {}", listing(index.manifests())),
        },
    };
    let reference = reference.map(str::to_string).or_else(|| names(desc).into_iter().next());
    let (manifest, digest) = resolve_manifest(blobs, desc, 0)?;
    let config = checked_blob(blobs, manifest.config())?;
    let layers = manifest.layers().iter().map(|l| Blobs::blob_name(l.digest().as_ref())).collect::<Result<_>>()?;
    Ok(Chosen { config, layers, digest, reference })
}

/// Follows nested indexes down to one manifest, taking linux/amd64 at each level.
fn resolve_manifest(blobs: &Blobs, desc: &Descriptor, depth: usize) -> Result<(ImageManifest, String)> {
    if depth > 4 {
        bail!("image indexes nest too deep");
    }
    let bytes = checked_blob(blobs, desc)?;
    let media = desc.media_type().to_string();
    if media.contains("index") || media.contains("manifest.list") {
        let index = parse_index(&bytes)?;
        let Some(m) = index.manifests().iter().find(|d| is_amd64(d)) else {
            bail!("the image has no linux/amd64 variant");
        };
        return resolve_manifest(blobs, m, depth + 1);
    }
    let manifest = ImageManifest::from_reader(&bytes[..]).map_err(|e| anyhow::anyhow!("invalid manifest: {e}"))?;
    Ok((manifest, desc.digest().to_string()))
}

/// A blob's bytes, checked against the digest its descriptor gives.
fn checked_blob(blobs: &Blobs, desc: &Descriptor) -> Result<Vec<u8>> {
    let digest = desc.digest().to_string();
    let bytes = blobs.read_all(&Blobs::blob_name(&digest)?)?;
    if let Some(want) = digest.strip_prefix("sha256:") {
        let got = bundle_format::hex(&Sha256::digest(&bytes));
        if got != want {
            bail!("blob {digest} is damaged (its content is sha256:{got})");
        }
    }
    Ok(bytes)
}

fn parse_index(bytes: &[u8]) -> Result<ImageIndex> {
    ImageIndex::from_reader(bytes).map_err(|e| anyhow::anyhow!("invalid image index: {e}"))
}

fn names(d: &Descriptor) -> Vec<String> {
    let a = d.annotations().as_ref();
    [REF_NAME, IMAGE_NAME].iter().filter_map(|k| a.and_then(|a| a.get(*k)).cloned()).collect()
}

/// `--oci-ref` matches a name exactly, or its tag (`latest` for `app:latest`), or the
/// name without the default registry (`app:1` for `docker.io/library/app:1`).
fn matches(name: &str, wanted: &str) -> bool {
    let short = name.strip_prefix("docker.io/").map(|n| n.strip_prefix("library/").unwrap_or(n));
    name == wanted || short == Some(wanted) || name.rsplit_once(':').is_some_and(|(_, tag)| tag == wanted)
}

fn is_amd64(d: &Descriptor) -> bool {
    d.platform().as_ref().is_some_and(|p| *p.architecture() == Arch::Amd64 && *p.os() == Os::Linux)
}

fn listing(ds: &[Descriptor]) -> String {
    let all: Vec<String> =
        ds.iter().map(|d| names(d).into_iter().next().unwrap_or_else(|| d.digest().to_string())).collect();
    all.join(", ")
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn from_docker_archive(blobs: &Blobs, reference: Option<&str>) -> Result<Chosen> {
    let images: Vec<DockerImage> =
        serde_json::from_slice(&blobs.read_all("manifest.json")?).context("invalid manifest.json")?;
    let tags = |i: &DockerImage| i.repo_tags.clone().unwrap_or_default();
    let chosen: Vec<&DockerImage> =
        images.iter().filter(|i| reference.is_none_or(|r| tags(i).iter().any(|t| matches(t, r)))).collect();
    let image = match chosen.as_slice() {
        [one] => *one,
        [] => bail!("no image named {} here; it holds: {}", reference.unwrap_or(""), docker_listing(&images)),
        _ => bail!("it holds several images, choose one with --oci-ref: {}", docker_listing(&images)),
    };
    let config = blobs.read_all(&image.config)?;
    // The image id is the config's digest: what `docker images` shows.
    let digest = format!("sha256:{}", bundle_format::hex(&Sha256::digest(&config)));
    let reference = reference.map(str::to_string).or_else(|| tags(image).into_iter().next());
    Ok(Chosen { config, layers: image.layers.clone(), digest, reference })
}

fn docker_listing(images: &[DockerImage]) -> String {
    let all: Vec<String> = images.iter().map(|i| i.repo_tags.clone().unwrap_or_default().join(" ")).collect();
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_match_names_tags_and_short_names() {
        assert!(matches("app:1", "app:1"));
        assert!(matches("latest", "latest"));
        assert!(matches("localhost/app:1", "1"));
        assert!(matches("docker.io/library/app:1", "app:1"));
        assert!(!matches("app:1", "app:2"));
    }
}
