//! OCI and Docker images as inputs: an OCI image layout directory (skopeo, umoci,
//! buildah, podman), or an `oci-archive` / `docker-archive` tar (`podman save`,
//! `docker save`, `skopeo copy`).
//!
//! One image is chosen ([`select`]), its layers are applied in order with their
//! whiteouts ([`layers`]), and its config gives the entrypoint (`Entrypoint` + `Cmd`),
//! the environment, the working directory and the labels. Every blob read is checked
//! against its digest: manifests and configs by their descriptors, layers by the
//! config's `diff_ids` (which both archive kinds carry).

mod layers;
mod select;
mod source;

use crate::tree::Tree;
use anyhow::{bail, Context, Result};
use oci_spec::image::ImageConfiguration;
use std::collections::BTreeMap;
use std::path::Path;

/// What the image's config asks of the bundle.
#[derive(Debug, Default)]
pub struct Image {
    /// `Entrypoint` then `Cmd`, as the image gives them (the first may be a bare name).
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `sha256:…` of the manifest (OCI) or of the config, the image id (docker-archive).
    pub digest: String,
    /// The name the image was chosen by, or its only name.
    pub reference: Option<String>,
    pub layers: usize,
    pub skipped_devices: usize,
}

/// Applies the image at `path` to `tree`, staging file contents under `staging`.
pub fn add(tree: &mut Tree, path: &Path, reference: Option<&str>, staging: &Path) -> Result<Image> {
    let blobs = source::Blobs::open(path)?;
    let chosen = select::choose(&blobs, reference)?;
    let config = ImageConfiguration::from_reader(&chosen.config[..])
        .map_err(|e| anyhow::anyhow!("the image config is not valid: {e}"))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != chosen.layers.len() {
        bail!("the image config lists {} layers, its manifest {}", diff_ids.len(), chosen.layers.len());
    }
    let mut applier = layers::Applier::new(tree, staging);
    for (n, (layer, want)) in chosen.layers.iter().zip(diff_ids).enumerate() {
        let got = applier
            .apply(blobs.read(layer)?)
            .with_context(|| format!("layer {} of {} ({layer})", n + 1, chosen.layers.len()))?;
        if want.strip_prefix("sha256:").is_some_and(|w| w != got) {
            bail!("layer {} ({layer}) is damaged: its content is sha256:{got}, the config says {want}", n + 1);
        }
    }
    let skipped_devices = applier.skipped;
    let mut image = from_config(&config);
    image.digest = chosen.digest;
    image.reference = chosen.reference;
    image.layers = chosen.layers.len();
    image.skipped_devices = skipped_devices;
    Ok(image)
}

fn from_config(config: &ImageConfiguration) -> Image {
    let Some(c) = config.config() else {
        return Image::default();
    };
    let command = c.entrypoint().iter().flatten().chain(c.cmd().iter().flatten()).cloned().collect();
    let env = c
        .env()
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let workdir = c.working_dir().clone().filter(|w| !w.is_empty());
    let labels = c.labels().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    Image { command, env, workdir, labels, ..Image::default() }
}
