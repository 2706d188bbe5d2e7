//! The dependency closure: makes the staged tree self-contained, so that the bundle runs
//! on a node that has none of the build host's libraries.
//!
//! Every regular file of the tree is looked at once: an ELF file needs its program
//! interpreter (PT_INTERP) and its libraries (DT_NEEDED, found as ld.so finds them, see
//! [`search`]); an executable script needs its `#!` interpreter ([`script`]). What is
//! not in the image comes from the build host, at the same path ([`copy`]), and is
//! looked at in turn. Runtimes' `dlopen`ed plugins follow their core library
//! ([`companions`]). Finally an `/etc/ld.so.cache` for the image is written
//! ([`ldconfig`]). Every file added is recorded with its host source and the reason;
//! every name that cannot be found is reported, in one error (or, with
//! `allow_missing`, one warning).

mod companions;
mod copy;
pub mod elf;
mod interpreters;
mod ldconfig;
mod script;
mod search;
mod view;

pub use view::resolve;

use crate::tree::{Entry, ImagePath, Kind, Source, Tree};
use anyhow::{bail, Context, Result};
use bundle_format::ProvidedFile;
use copy::Copier;
use elf::{Abi, ElfInfo};
use search::{Found, Requester, Search};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use view::{HostView, TreeView, View};

pub struct Options {
    /// Build even if libraries are missing (with a warning naming them).
    pub allow_missing: bool,
    /// Host paths added, with their own closure (`--include`).
    pub includes: Vec<PathBuf>,
    /// The entrypoint: if it is a script, its interpreter is required wherever it lives.
    pub entrypoint: Option<String>,
    /// Symlinks of the inputs at their own host paths: what they point to comes from the
    /// host when the image does not have it.
    pub links: Vec<ImagePath>,
}

#[derive(Debug)]
pub struct Outcome {
    pub provided: Vec<ProvidedFile>,
    pub warnings: Vec<String>,
    /// What was done that no input asked for by name (an interpreter's library).
    pub notes: Vec<String>,
}

/// Makes the host directory `dir` exist in the image as on the host (symlinked parents
/// as symlinks, where the image has no entry of its own); returns where it is.
pub fn host_directory(tree: &mut Tree, dir: &Path) -> Result<ImagePath> {
    let host = HostView { root: "/".into() };
    let mut copier = Copier { host: &host, provided: Vec::new() };
    copier.add(tree, dir, "a parent of an input")
}

/// Adds everything the tree's programs need from the build host.
pub fn complete(tree: &mut Tree, opts: &Options) -> Result<Outcome> {
    let search = Search::load(HostView { root: "/".into() }, tree);
    let mut c = Closure::new(tree, &search);
    c.entrypoint = opts.entrypoint.clone();
    for inc in &opts.includes {
        c.include(inc)?;
    }
    for link in &opts.links {
        c.link_target(link)?;
    }
    c.queue_tree_files();
    c.run()?;
    c.add_companions()?;
    c.write_ld_cache()?;
    c.finish(opts.allow_missing)
}

/// A file to look at, and the context its libraries are searched in.
struct Job {
    path: ImagePath,
    /// RPATH directories of the objects that led here (ld.so searches them too).
    inherited: Vec<PathBuf>,
    need: Need,
}

/// How bad it is when something cannot be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// For the inputs' programs and libraries: an error (a warning with `allow_missing`).
    Required,
    /// Reached only through a `dlopen` companion: the runtimes skip a plugin that does not
    /// load, so a warning.
    Plugin,
    /// The interpreter of a script that is not a program (outside bin, sbin and libexec
    /// directories, not the entrypoint): often a stale `#!` line of a library module, like
    /// Python's own `cgi.py` (`#! /usr/local/bin/python`), so a warning.
    Script,
}

struct Missing {
    needer: String,
    what: String,
    need: Need,
}

struct Closure<'t, 's> {
    tree: &'t mut Tree,
    search: &'s Search,
    copier: Copier<'s>,
    queue: VecDeque<Job>,
    seen: HashSet<ImagePath>,
    missing: Vec<Missing>,
    /// Core libraries taken from the host: (DT_NEEDED name, image path of the file).
    cores: Vec<(String, ImagePath)>,
    cores_done: usize,
    entrypoint: Option<String>,
    /// The ELF ABIs of dynamically linked files, for the generated ld.so.cache.
    abis: Vec<Abi>,
    warnings: Vec<String>,
    notes: Vec<String>,
}

impl<'t, 's> Closure<'t, 's> {
    fn new(tree: &'t mut Tree, search: &'s Search) -> Self {
        Closure {
            tree,
            search,
            copier: Copier { host: &search.host, provided: Vec::new() },
            queue: VecDeque::new(),
            seen: HashSet::new(),
            missing: Vec::new(),
            cores: Vec::new(),
            cores_done: 0,
            entrypoint: None,
            abis: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// `--include PATH`: a host file or directory, at the same path in the image.
    fn include(&mut self, path: &Path) -> Result<()> {
        let abs = crate::inputs::absolute(path);
        self.copier
            .add_recursive(self.tree, &abs, "--include")
            .with_context(|| format!("--include {}", path.display()))?;
        Ok(())
    }

    /// A link of the inputs that leads nowhere in the image: its target from the host,
    /// link by link, as the host resolves it.
    fn link_target(&mut self, link: &ImagePath) -> Result<()> {
        if resolve(self.tree, link.as_path()).is_some() {
            return Ok(());
        }
        let reason = format!("target of {} from the inputs", link.absolute());
        let host = Path::new("/").join(link.as_path());
        if !host.exists() {
            self.warnings.push(format!("{} is a dangling symlink on the build host too", link.absolute()));
            return Ok(());
        }
        self.copier.add_recursive(self.tree, &host, &reason).with_context(|| reason.clone())?;
        Ok(())
    }

    fn queue_tree_files(&mut self) {
        let files: Vec<ImagePath> =
            self.tree.iter().filter(|(_, e)| matches!(e.kind, Kind::File(_))).map(|(p, _)| p.clone()).collect();
        for path in files {
            self.enqueue(path, Vec::new(), Need::Required);
        }
    }

    fn enqueue(&mut self, path: ImagePath, inherited: Vec<PathBuf>, need: Need) {
        if !self.seen.contains(&path) {
            self.queue.push_back(Job { path, inherited, need });
        }
    }

    fn run(&mut self) -> Result<()> {
        while let Some(job) = self.queue.pop_front() {
            if self.seen.insert(job.path.clone()) {
                self.look_at(&job)?;
            }
        }
        Ok(())
    }

    fn look_at(&mut self, job: &Job) -> Result<()> {
        let abs = job.path.absolute();
        let view = TreeView(self.tree);
        let Some(head) = view.head(Path::new(&abs), 256) else {
            return Ok(());
        };
        if head.starts_with(elf::MAGIC) {
            let bytes = view.read(Path::new(&abs)).unwrap_or_default();
            match ElfInfo::parse(&bytes) {
                Ok(Some(info)) => {
                    self.elf(job, &info)?;
                    self.interpreter_library(job)?;
                }
                Ok(None) => {}
                Err(e) => self.warnings.push(format!("{abs}: {e}; its libraries are not followed")),
            }
        } else if let Some(sb) = script::parse(&head) {
            let executable = self.tree.get(&job.path).is_some_and(|e| e.mode & 0o111 != 0);
            if executable {
                self.script(job, &sb)?;
            }
        }
        Ok(())
    }

    fn elf(&mut self, job: &Job, info: &ElfInfo) -> Result<()> {
        let Some(abi) = info.abi else { return Ok(()) };
        if info.interp.is_none() && info.needed.is_empty() {
            return Ok(()); // statically linked
        }
        if !self.abis.contains(&abi) {
            self.abis.push(abi);
        }
        let needer = job.path.absolute();
        if let Some(interp) = &info.interp {
            let found = self.search.at(self.tree, Path::new(interp), abi);
            let what = format!("its program interpreter {interp}");
            let reason = format!("program interpreter of {needer}");
            self.take(found, &needer, &what, &reason, Vec::new(), job.need)?;
        }
        let origin = job.path.parent().unwrap_or_else(ImagePath::root).absolute();
        let mut inherited = search::expand_all(info.effective_rpath(), Path::new(&origin), abi);
        inherited.extend(job.inherited.iter().cloned());
        let req = Requester { info, origin: Path::new(&origin), inherited: &job.inherited };
        for name in &info.needed {
            let found = self.search.find(self.tree, name, &req);
            let from_host = matches!(found, Some(Found::Host(_)));
            let reason = format!("needed by {needer}");
            let got = self.take(found, &needer, name, &reason, inherited.clone(), job.need)?;
            if let (true, Some(path)) = (from_host, got) {
                self.cores.push((name.clone(), path));
            }
        }
        Ok(())
    }

    /// A python or perl binary that is the build host's own (at its host path, not an
    /// RPM's or an image's): its standard library from the host, and the closure of the
    /// extension modules in it.
    fn interpreter_library(&mut self, job: &Job) -> Result<()> {
        let Some(kind) = job.path.file_name().and_then(|n| interpreters::recognise(&n.to_string_lossy())) else {
            return Ok(());
        };
        let host_path = PathBuf::from(job.path.absolute());
        let own =
            matches!(&self.tree.get(&job.path).map(|e| &e.kind), Some(Kind::File(Source::Host(p))) if *p == host_path);
        if !own {
            return Ok(());
        }
        let dirs = match interpreters::library_dirs(kind, &host_path) {
            Ok(d) => d,
            Err(e) => {
                self.warnings.push(format!("{e}; its standard library is not added"));
                return Ok(());
            }
        };
        let reason = format!("{} standard library of {}", kind.name(), host_path.display());
        for d in &dirs {
            let files = self.add_library_dir(d, &reason).with_context(|| reason.clone())?;
            // Extension modules need their libraries; the modules' own `#!` lines (stale
            // ones abound in Python's library) are not programs to follow.
            for f in files {
                let is_elf =
                    TreeView(self.tree).head(Path::new(&f.absolute()), 4).is_some_and(|h| h.starts_with(elf::MAGIC));
                if is_elf {
                    self.enqueue(f, Vec::new(), Need::Plugin);
                }
            }
        }
        if !dirs.is_empty() {
            let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            self.notes.push(format!(
                "{}: its standard library from the build host: {}",
                host_path.display(),
                list.join(", ")
            ));
        }
        Ok(())
    }

    /// A standard library directory without what is not the standard library in it.
    fn add_library_dir(&mut self, dir: &Path, reason: &str) -> Result<Vec<ImagePath>> {
        self.copier.add(self.tree, dir, reason)?;
        let mut names: Vec<_> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        names.sort();
        let mut files = Vec::new();
        for name in names {
            let n = name.to_string_lossy();
            if !interpreters::is_not_standard(&n) {
                files.extend(self.copier.add_recursive(self.tree, &dir.join(&name), reason)?);
            }
        }
        Ok(files)
    }

    fn script(&mut self, job: &Job, sb: &script::Shebang) -> Result<()> {
        let needer = job.path.absolute();
        let need = match job.need {
            Need::Required if !self.is_program(&job.path) => Need::Script,
            n => n,
        };
        let interp = Path::new(&sb.interp);
        let found = self.locate_file(interp);
        let what = format!("its interpreter {}", sb.interp);
        let reason = format!("interpreter of {needer}");
        self.take(found, &needer, &what, &reason, Vec::new(), need)?;
        if let Some(prog) = &sb.env_program {
            let found = self.locate_in_path(prog);
            let what = format!("`{prog}` (run through env) in PATH");
            let reason = format!("run by {needer} through env");
            self.take(found, &needer, &what, &reason, Vec::new(), need)?;
        }
        Ok(())
    }

    /// A file meant to be run: the entrypoint, or anything in a bin, sbin or libexec
    /// directory (at any depth below libexec).
    fn is_program(&self, path: &ImagePath) -> bool {
        let abs = path.absolute();
        let entry = self.entrypoint.as_deref().and_then(|e| resolve(self.tree, Path::new(e)));
        entry.as_ref() == Some(path)
            || path.parent().and_then(|d| d.file_name().map(|n| n == "bin" || n == "sbin")).unwrap_or(false)
            || abs.contains("/libexec/")
    }

    /// Puts a found file into the image (if it is not there) and queues it; records it as
    /// missing if not found. Returns its image path.
    fn take(
        &mut self,
        found: Option<Found>,
        needer: &str,
        what: &str,
        reason: &str,
        inherited: Vec<PathBuf>,
        need: Need,
    ) -> Result<Option<ImagePath>> {
        let path = match found {
            Some(Found::Image(p)) => resolve(self.tree, &p),
            Some(Found::Host(p)) => Some(
                self.copier.add(self.tree, &p, reason).with_context(|| format!("adding {} ({reason})", p.display()))?,
            ),
            None => None,
        };
        match &path {
            // What a plugin pulls in is as optional as the plugin; anything else found is
            // needed for real (an interpreter's own libraries above all).
            Some(p) => self.enqueue(p.clone(), inherited, if need == Need::Plugin { need } else { Need::Required }),
            None => self.missing.push(Missing { needer: needer.to_string(), what: what.to_string(), need }),
        }
        Ok(path)
    }

    /// A file by absolute path, image first (a script's interpreter).
    fn locate_file(&self, path: &Path) -> Option<Found> {
        if TreeView(self.tree).is_file(path) {
            Some(Found::Image(path.to_path_buf()))
        } else if self.search.host.is_file(path) {
            Some(Found::Host(path.to_path_buf()))
        } else {
            None
        }
    }

    /// A program name as `env` finds it: the image's PATH, then the build host's.
    fn locate_in_path(&self, name: &str) -> Option<Found> {
        let image = script::IMAGE_PATH.iter().map(|d| Path::new(d).join(name));
        for p in image {
            if TreeView(self.tree).is_file(&p) {
                return Some(Found::Image(p));
            }
        }
        let host_path = std::env::var("PATH").unwrap_or_else(|_| script::IMAGE_PATH.join(":"));
        host_path
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(name))
            .find(|p| self.search.host.is_file(p))
            .map(Found::Host)
    }

    /// Adds the companions of every core library taken from the host, and their closure;
    /// repeats while companions bring in further core libraries.
    fn add_companions(&mut self) -> Result<()> {
        while self.cores_done < self.cores.len() {
            let (name, lib) = self.cores[self.cores_done].clone();
            self.cores_done += 1;
            let dir = lib.parent().unwrap_or_else(ImagePath::root).absolute();
            for rule in companions::rules_for(&name) {
                let reason = format!("{}, loaded at run time by {name}", rule.what);
                let plugin_dir =
                    rule.plugin_dirs.iter().map(|d| Path::new(&dir).join(d)).find(|p| self.search.host.is_dir(p));
                let extra = rule.extra.iter().map(|e| Path::new(&dir).join(e));
                for p in plugin_dir.into_iter().chain(extra) {
                    if !self.search.host.real(&p).exists() {
                        continue;
                    }
                    let files = self
                        .copier
                        .add_recursive(self.tree, &p, &reason)
                        .with_context(|| format!("adding {} ({reason})", p.display()))?;
                    for f in files {
                        self.enqueue(f, Vec::new(), Need::Plugin);
                    }
                }
            }
            self.run()?;
        }
        Ok(())
    }

    /// Writes `/etc/ld.so.cache` for the libraries in the image's library directories.
    fn write_ld_cache(&mut self) -> Result<()> {
        if self.abis.is_empty() {
            return Ok(());
        }
        let entries = self.cache_entries();
        let at = ImagePath::new("/etc/ld.so.cache").map_err(anyhow::Error::msg)?;
        if self.tree.contains(&at) {
            self.warnings.push("/etc/ld.so.cache of the inputs replaced by one generated for the whole image".into());
        }
        let n = entries.len();
        let entry = Entry {
            kind: Kind::File(Source::Bytes(Arc::from(ldconfig::write_cache(&entries)))),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: self.tree.get(&ImagePath::root()).map_or(0, |e| e.mtime),
        };
        self.tree.insert(at, entry).map_err(|e| anyhow::anyhow!("cannot write /etc/ld.so.cache: {e}"))?;
        self.copier.provided.push(ProvidedFile {
            path: "/etc/ld.so.cache".into(),
            source: "(generated)".into(),
            reason: format!("library cache for the image ({n} entries), in place of ldconfig"),
            package: None,
        });
        Ok(())
    }

    /// One entry per (soname, ABI), from the directories ld.so's cache would cover, in
    /// search order: the image's ld.so.conf, the host's (host libraries keep their host
    /// paths), the default directories.
    fn cache_entries(&self) -> Vec<ldconfig::CacheEntry> {
        let view = TreeView(self.tree);
        let mut dirs: Vec<PathBuf> = search::image_conf_dirs(self.tree);
        dirs.extend(self.search.host_conf.iter().cloned());
        for abi in &self.abis {
            dirs.extend(search::default_dirs(*abi));
        }
        let mut seen_dirs = HashSet::new();
        let mut seen_names = HashSet::new();
        let mut out = Vec::new();
        for dir in dirs {
            let Some(real) = resolve(self.tree, &dir) else { continue };
            if !seen_dirs.insert(real) {
                continue;
            }
            for name in view.list(&dir) {
                let name = name.to_string_lossy();
                if !(name.starts_with("lib") || name.starts_with("ld-")) || !name.contains(".so") {
                    continue;
                }
                if let Some(e) = cache_entry(&view, &dir, &name) {
                    if seen_names.insert((e.name.clone(), e.flags)) {
                        out.push(e);
                    }
                }
            }
        }
        out
    }

    fn finish(mut self, allow_missing: bool) -> Result<Outcome> {
        let mut lines: Vec<String> = Vec::new();
        for m in &self.missing {
            let line = format!("{} needs {}", m.needer, m.what);
            match m.need {
                Need::Plugin => self.warnings.push(format!("plugin {line}: not found, the plugin will not load")),
                Need::Script => self.warnings.push(format!("{line}: not found, the script cannot run in the bundle")),
                Need::Required if !lines.contains(&line) => lines.push(line),
                Need::Required => {}
            }
        }
        if !lines.is_empty() {
            let list = lines.join("; ");
            if !allow_missing {
                bail!("not found on the build host: {list} (use --allow-missing to build anyway)");
            }
            self.warnings.push(format!("building without these (--allow-missing): {list}"));
        }
        Ok(Outcome { provided: self.copier.provided, warnings: self.warnings, notes: self.notes })
    }
}

/// The cache entry for one library file: keyed by its SONAME (as ldconfig keys it),
/// pointing at the SONAME link when the directory has one.
fn cache_entry(view: &TreeView, dir: &Path, name: &str) -> Option<ldconfig::CacheEntry> {
    let path = dir.join(name);
    let abi = Abi::from_head(&view.head(&path, 64)?)?;
    let flags = ldconfig::cache_flags(abi)?;
    let info = ElfInfo::parse(&view.read(&path)?).ok()??;
    if !info.shared {
        return None;
    }
    let key = info.soname.unwrap_or_else(|| name.to_string());
    let by_soname = dir.join(&key);
    let same = resolve(view.0, &by_soname).is_some() && resolve(view.0, &by_soname) == resolve(view.0, &path);
    Some(ldconfig::CacheEntry { flags, path: if same { by_soname } else { path }.display().to_string(), name: key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(tree: &mut Tree, path: &str, mode: u32, bytes: Vec<u8>) {
        let kind = Kind::File(Source::Bytes(Arc::from(bytes)));
        tree.insert(ImagePath::new(path).unwrap(), Entry { kind, mode, uid: 0, gid: 0, mtime: 0 }).unwrap();
    }

    fn opts(allow_missing: bool) -> Options {
        Options { allow_missing, includes: Vec::new(), entrypoint: None, links: Vec::new() }
    }

    #[test]
    fn missing_interpreters_of_programs_fail_and_of_other_scripts_warn() {
        let script = b"#!/nonexistent/python -u\nprint(1)\n".to_vec();
        let mut t = Tree::new(0);
        put(&mut t, "/usr/lib/app/module.py", 0o755, script.clone());
        let out = complete(&mut t, &opts(false)).unwrap();
        assert!(out.warnings.iter().any(|w| w.contains("module.py needs its interpreter")), "{:?}", out.warnings);

        put(&mut t, "/usr/bin/tool", 0o755, script.clone());
        let err = complete(&mut t, &opts(false)).unwrap_err().to_string();
        assert!(err.contains("/usr/bin/tool needs its interpreter /nonexistent/python"), "{err}");
        assert!(!err.contains("module.py"), "{err}");
        let out = complete(&mut t, &opts(true)).unwrap();
        assert!(out.warnings.iter().any(|w| w.contains("--allow-missing") && w.contains("/usr/bin/tool")));

        // A non-executable file's `#!` line is not followed at all.
        let mut t = Tree::new(0);
        put(&mut t, "/usr/bin/notes", 0o644, script);
        assert!(complete(&mut t, &opts(false)).unwrap().warnings.is_empty());
    }

    /// The test binary itself, as an input: whatever it links dynamically comes from the
    /// host at the host's paths, and the image gets a loader cache naming its libraries.
    #[test]
    fn a_host_program_gets_its_loader_libraries_and_a_cache() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = ElfInfo::parse(&me).unwrap().unwrap();
        let Some(interp) = info.interp.clone() else { return }; // a static build: nothing to do
        let mut t = Tree::new(0);
        put(&mut t, "/opt/test/bin/me", 0o755, me);
        let out = complete(&mut t, &opts(false)).unwrap();
        let provided: Vec<&str> = out.provided.iter().map(|p| p.path.as_str()).collect();
        assert!(resolve(&t, Path::new(&interp)).is_some(), "{interp} not in the image: {provided:?}");
        for lib in &info.needed {
            let cache = TreeView(&t).read(Path::new("/etc/ld.so.cache")).unwrap();
            let entries = ldconfig::read_cache(&cache).unwrap();
            let e = entries.iter().find(|e| &e.name == lib).unwrap_or_else(|| panic!("{lib} not in {entries:?}"));
            assert!(resolve(&t, Path::new(&e.path)).is_some(), "{} is not in the image", e.path);
        }
        assert!(out.provided.iter().all(|p| !p.reason.is_empty() && !p.source.is_empty()));
    }
}
