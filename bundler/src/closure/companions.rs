//! Files that well-known runtimes open with `dlopen` or read at run time, so no
//! DT_NEEDED names them: they come along when their core library does.
//!
//! Only for a core library taken from the build host: when the inputs ship the library
//! themselves, they ship (or knowingly leave out) its plugins too. Every companion that
//! is an ELF file gets its own closure; a library that one of them needs and that cannot
//! be found is a warning, not an error, since the runtimes skip a plugin that does not
//! load (the same plugin on the host would fail the same way).

/// One runtime's companions, relative to the directory of its core library on the host
/// (an entry starting with `/` is absolute).
pub struct Rule {
    /// What they are, for the provenance record.
    pub what: &'static str,
    /// File name prefix of the core library (`libmpi.so.` matches `libmpi.so.40`).
    pub core: &'static str,
    /// Plugin directories: the first that exists is taken (layouts differ per distribution).
    pub plugin_dirs: &'static [&'static str],
    /// Further files and directories, each taken if it exists.
    pub extra: &'static [&'static str],
}

pub const RULES: &[Rule] = &[
    Rule {
        what: "glibc NSS modules",
        core: "libc.so.6",
        plugin_dirs: &[],
        extra: &["libnss_files.so.2", "libnss_dns.so.2", "libnss_compat.so.2"],
    },
    Rule { what: "glibc gconv modules (iconv)", core: "libc.so.6", plugin_dirs: &["gconv"], extra: &[] },
    Rule {
        what: "Open MPI components and help files",
        core: "libmpi.so.",
        // Debian: openmpi/lib/openmpi3; Fedora/RHEL (libmpi in .../openmpi/lib) and
        // upstream installs: openmpi next to libmpi.
        plugin_dirs: &["openmpi/lib/openmpi3", "openmpi3", "openmpi"],
        extra: &["/usr/share/openmpi", "/etc/openmpi", "../share/openmpi", "../etc/openmpi-mca-params.conf"],
    },
    Rule {
        what: "PMIx components and help files",
        core: "libpmix.so.",
        plugin_dirs: &["pmix", "pmix2/lib/pmix"],
        extra: &["/usr/share/pmix", "../share/pmix"],
    },
    Rule { what: "hwloc plugins", core: "libhwloc.so.", plugin_dirs: &["hwloc"], extra: &[] },
    Rule {
        what: "libibverbs providers",
        core: "libibverbs.so.",
        plugin_dirs: &["libibverbs"],
        extra: &["/etc/libibverbs.d"],
    },
    Rule { what: "libfabric providers", core: "libfabric.so.", plugin_dirs: &["libfabric"], extra: &[] },
    Rule { what: "UCX transports", core: "libucs.so.", plugin_dirs: &["ucx"], extra: &[] },
];

/// The rules whose core library has this file name.
pub fn rules_for(file_name: &str) -> impl Iterator<Item = &'static Rule> + '_ {
    RULES.iter().filter(move |r| file_name.starts_with(r.core))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_libraries_are_matched_by_prefix() {
        let libc: Vec<_> = rules_for("libc.so.6").map(|r| r.what).collect();
        assert_eq!(libc.len(), 2);
        assert_eq!(rules_for("libmpi.so.40").count(), 1);
        assert_eq!(rules_for("libmpi_cxx.so.40").count(), 0);
        assert_eq!(rules_for("libcap.so.2").count(), 0);
    }
}
