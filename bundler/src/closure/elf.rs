//! What the closure needs from an ELF file: its loader, its libraries and where it asks
//! for them to be searched. goblin parses; nothing here runs the file (unlike `ldd`).

use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ET_DYN, ET_EXEC};
use goblin::elf::Elf;

pub const MAGIC: &[u8; 4] = b"\x7fELF";

/// The identity two ELF objects must share to be loaded into one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Abi {
    pub class64: bool,
    pub little_endian: bool,
    pub machine: u16,
}

impl Abi {
    /// From the first 20 bytes of a file; `None` if it is not ELF.
    pub fn from_head(head: &[u8]) -> Option<Abi> {
        if head.len() < 20 || !head.starts_with(MAGIC) {
            return None;
        }
        let little_endian = head[EI_DATA] == ELFDATA2LSB;
        let m = [head[18], head[19]];
        Some(Abi {
            class64: head[EI_CLASS] == ELFCLASS64,
            little_endian,
            machine: if little_endian { u16::from_le_bytes(m) } else { u16::from_be_bytes(m) },
        })
    }
}

/// The dynamic-linking facts of one executable or shared object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfInfo {
    pub abi: Option<Abi>,
    /// PT_INTERP: the program loader, an absolute path.
    pub interp: Option<String>,
    /// DT_NEEDED, in order.
    pub needed: Vec<String>,
    /// DT_RPATH entries (split at `:`), ignored by ld.so when DT_RUNPATH is present.
    pub rpath: Vec<String>,
    /// DT_RUNPATH entries (split at `:`).
    pub runpath: Vec<String>,
    pub soname: Option<String>,
    /// ET_DYN: a shared object (or a PIE executable).
    pub shared: bool,
}

impl ElfInfo {
    /// Parses a whole ELF file. `Ok(None)` for ELF files that take no part in dynamic
    /// linking (relocatable objects, core dumps).
    pub fn parse(bytes: &[u8]) -> Result<Option<ElfInfo>, String> {
        let elf = Elf::parse(bytes).map_err(|e| format!("not a valid ELF file: {e}"))?;
        if elf.header.e_type != ET_EXEC && elf.header.e_type != ET_DYN {
            return Ok(None);
        }
        let split = |v: &[&str]| -> Vec<String> { v.iter().flat_map(|s| s.split(':')).map(str::to_string).collect() };
        Ok(Some(ElfInfo {
            abi: Abi::from_head(bytes),
            interp: elf.interpreter.map(str::to_string),
            needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
            rpath: split(&elf.rpaths),
            runpath: split(&elf.runpaths),
            soname: elf.soname.map(str::to_string),
            shared: elf.header.e_type == ET_DYN,
        }))
    }

    /// The directories ld.so takes from this object's RPATH: none once it has a RUNPATH.
    pub fn effective_rpath(&self) -> &[String] {
        if self.runpath.is_empty() {
            &self.rpath
        } else {
            &[]
        }
    }
}

/// The GNU triplet of a machine, as Debian's multiarch directories name it.
pub fn triplet(abi: Abi) -> Option<&'static str> {
    use goblin::elf::header::*;
    Some(match (abi.machine, abi.class64) {
        (EM_X86_64, true) => "x86_64-linux-gnu",
        (EM_X86_64, false) => "x86_64-linux-gnux32",
        (EM_386, false) => "i386-linux-gnu",
        (EM_AARCH64, true) => "aarch64-linux-gnu",
        (EM_PPC64, true) if abi.little_endian => "powerpc64le-linux-gnu",
        (EM_S390, true) => "s390x-linux-gnu",
        (EM_RISCV, true) => "riscv64-linux-gnu",
        _ => return None,
    })
}

/// `$PLATFORM` as the kernel reports it (AT_PLATFORM) for this machine.
pub fn platform(abi: Abi) -> &'static str {
    use goblin::elf::header::*;
    match abi.machine {
        EM_X86_64 => "x86_64",
        EM_386 => "i686",
        EM_AARCH64 => "aarch64",
        EM_PPC64 => "power9",
        EM_S390 => "z13",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_from_head_reads_class_endianness_and_machine() {
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(MAGIC);
        h[EI_CLASS] = ELFCLASS64;
        h[EI_DATA] = ELFDATA2LSB;
        h[18] = 62; // EM_X86_64
        let abi = Abi::from_head(&h).unwrap();
        assert!(abi.class64 && abi.little_endian);
        assert_eq!(abi.machine, goblin::elf::header::EM_X86_64);
        assert_eq!(triplet(abi), Some("x86_64-linux-gnu"));
        assert!(Abi::from_head(b"#!/bin/sh\n and more bytes").is_none());
    }

    #[test]
    fn this_test_binary_parses() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = ElfInfo::parse(&me).unwrap().unwrap();
        assert!(info.abi.is_some());
        // Rust test binaries link libc dynamically on glibc hosts.
        if info.interp.is_some() {
            assert!(info.needed.iter().any(|n| n.starts_with("libc.so")), "{info:?}");
        }
    }
}
