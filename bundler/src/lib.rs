//! The bundler as a library: the `bundle` binary (`main.rs`) is its command line, and the
//! fuzz targets (`fuzz/`) call the same parsers of outside input (RPM packages, file
//! lists) that a build does. Not a stable API: its users are in this workspace.

// Public only for the workspace's own crates: `Tree::len` has no `is_empty` because a
// tree always holds its root.
#![allow(clippy::len_without_is_empty)]

pub mod apptainer;
pub mod assemble;
pub mod buildfile;
pub mod cleanup;
pub mod closure;
pub mod inputs;
pub mod inspect;
pub mod oci;
pub mod owners;
pub mod pipeline;
pub mod progress;
pub mod restub;
pub mod rpm;
pub mod sbom;
pub mod sif;
pub mod sign;
pub mod squashfs;
pub mod stub;
pub mod tree;
pub mod unsquash;
