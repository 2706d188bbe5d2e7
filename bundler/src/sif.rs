//! Apptainer/Singularity SIF files: where the primary squashfs partition is.
//!
//! The layout (apptainer/sif, `pkg/sif`): a 128-byte global header (launch line, magic
//! `SIF_MAGIC`, version, arch, id, times, then descriptor and data offsets and sizes as
//! little-endian i64), and a table of fixed-size descriptors packed without padding (data
//! type, used flag, ids, offset, size, times, name, and 384 bytes of type-specific
//! "extra": for a partition its file system type, partition type and arch).

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const HEADER_LEN: usize = 128;
const MAGIC: &[u8] = b"SIF_MAGIC\0";
const DESCRIPTOR_LEN: usize = 585;
const EXTRA_AT: usize = 201;

const DATA_LABELS: i32 = 0x4003;
const DATA_PARTITION: i32 = 0x4004;
const FS_SQUASHFS: i32 = 1;
const FS_ENCRYPTED_SQUASHFS: i32 = 5;
const PART_PRIMARY_SYSTEM: i32 = 2;

/// What a SIF file holds that a bundle takes.
#[derive(Debug)]
pub struct Sif {
    /// The primary partition: a squashfs image at this offset.
    pub offset: u64,
    /// A JSON.Labels object, when the file has one.
    pub labels: Option<Vec<u8>>,
}

pub fn open(path: &Path) -> Result<Sif> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let len = f.metadata()?.len();
    let mut header = [0u8; HEADER_LEN];
    f.read_exact(&mut header).map_err(|_| anyhow::anyhow!("not a SIF file (too short)"))?;
    if &header[32..42] != MAGIC {
        bail!("not a SIF file (no SIF_MAGIC at byte 32)");
    }
    let total = i64_at(&header, 88);
    let table_at = i64_at(&header, 96);
    if !(0..=4096).contains(&total) || table_at < HEADER_LEN as i64 {
        bail!("damaged SIF header: {total} descriptors at offset {table_at}");
    }
    let table_len = total as usize * DESCRIPTOR_LEN;
    if table_at as u64 + table_len as u64 > len {
        bail!("damaged SIF file: its descriptor table runs past the end");
    }
    let mut table = vec![0u8; table_len];
    f.seek(SeekFrom::Start(table_at as u64))?;
    f.read_exact(&mut table)?;
    let (mut primary, mut labels) = (None, None);
    for d in table.chunks_exact(DESCRIPTOR_LEN).filter(|d| d[4] != 0) {
        let (kind, offset, size) = (i32_at(d, 0), i64_at(d, 17), i64_at(d, 25));
        if offset < 0 || size < 0 || offset as u64 + size as u64 > len {
            bail!("damaged SIF file: an object at offset {offset}, size {size} lies outside the file ({len} bytes)");
        }
        match kind {
            DATA_PARTITION if i32_at(d, EXTRA_AT + 4) == PART_PRIMARY_SYSTEM => {
                primary = Some((i32_at(d, EXTRA_AT), offset as u64, size as u64))
            }
            DATA_LABELS => labels = Some((offset as u64, size as u64)),
            _ => {}
        }
    }
    let Some((fs, offset, size)) = primary else {
        bail!("the SIF file has no primary system partition");
    };
    match fs {
        FS_SQUASHFS => {}
        FS_ENCRYPTED_SQUASHFS => {
            bail!("the SIF file's primary partition is encrypted; decrypt it with apptainer first")
        }
        other => bail!(
            "the SIF file's primary partition is not squashfs (file system type {other}: ext3, raw or an archive)"
        ),
    }
    // The partition's own magic, so that a damaged table is told apart from a bad image.
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(offset))?;
    if size < 96 || f.read_exact(&mut magic).is_err() || &magic != b"hsqs" {
        bail!("damaged SIF file: its primary partition does not start with a squashfs superblock");
    }
    let labels = match labels {
        Some((at, n)) if n <= 1 << 20 => {
            let mut v = vec![0u8; n as usize];
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut v)?;
            Some(v)
        }
        _ => None,
    };
    Ok(Sif { offset, labels })
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIF file as pkg/sif lays it out: header, descriptors, then the objects.
    fn sif(descriptors: &[(i32, i32, i32, &[u8])]) -> Vec<u8> {
        let table_at = 4096usize;
        let mut data_at = table_at + descriptors.len() * DESCRIPTOR_LEN;
        let mut out = vec![0u8; data_at];
        out[..32].copy_from_slice(b"#!/usr/bin/env run-singularity\n\0");
        out[32..42].copy_from_slice(MAGIC);
        out[88..96].copy_from_slice(&(descriptors.len() as i64).to_le_bytes());
        out[96..104].copy_from_slice(&(table_at as i64).to_le_bytes());
        for (i, (kind, fs, part, data)) in descriptors.iter().enumerate() {
            let d = &mut out[table_at + i * DESCRIPTOR_LEN..][..DESCRIPTOR_LEN];
            d[0..4].copy_from_slice(&kind.to_le_bytes());
            d[4] = 1;
            d[17..25].copy_from_slice(&(data_at as i64).to_le_bytes());
            d[25..33].copy_from_slice(&(data.len() as i64).to_le_bytes());
            d[EXTRA_AT..EXTRA_AT + 4].copy_from_slice(&fs.to_le_bytes());
            d[EXTRA_AT + 4..EXTRA_AT + 8].copy_from_slice(&part.to_le_bytes());
            data_at += data.len();
        }
        for (.., data) in descriptors {
            out.extend_from_slice(data);
        }
        out
    }

    fn open_bytes(b: &[u8]) -> Result<Sif> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.sif");
        std::fs::write(&p, b).unwrap();
        open(&p)
    }

    #[test]
    fn primary_partition_and_labels() {
        let sqfs = [&b"hsqs"[..], &[0u8; 92]].concat();
        let s = open_bytes(&sif(&[(DATA_LABELS, 0, 0, b"{\"a\":\"b\"}"), (DATA_PARTITION, 1, 2, &sqfs)])).unwrap();
        assert_eq!(s.offset, 4096 + 2 * DESCRIPTOR_LEN as u64 + 9);
        assert_eq!(s.labels.unwrap(), b"{\"a\":\"b\"}");
    }

    #[test]
    fn encrypted_missing_and_damaged_are_explained() {
        let err = |b: &[u8]| format!("{:#}", open_bytes(b).unwrap_err());
        assert!(err(&sif(&[(DATA_PARTITION, FS_ENCRYPTED_SQUASHFS, 2, b"x")])).contains("encrypted"));
        assert!(err(&sif(&[(DATA_PARTITION, 2, 2, b"x")])).contains("not squashfs"));
        assert!(err(&sif(&[(DATA_PARTITION, 1, 1, b"x")])).contains("no primary"));
        assert!(err(b"#!/bin/sh\n").contains("not a SIF file"));
        let mut b = sif(&[(DATA_PARTITION, 1, 2, b"hsqs")]);
        assert!(err(&b).contains("does not start with a squashfs superblock"));
        b.truncate(b.len() - 2);
        assert!(err(&b).contains("outside the file"));
    }
}
