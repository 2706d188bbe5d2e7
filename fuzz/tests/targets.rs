//! Every fuzz target, without a fuzzing engine: each file of its seed corpus, then a
//! bounded number of random mutations of them (`BUNDLE_FUZZ_CASES` per target, 400 by
//! default; the seed of a failing case is printed and its input saved under
//! `target/fuzz-failures/`, to be rerun with `cargo run -p bundle-fuzz --example
//! replay`). A panic fails the test; a case that runs longer than the watchdog's limit,
//! or one allocation larger than [`ALLOC_LIMIT`], aborts the test binary, naming the
//! case.

use bundle_fuzz::mutate::{mutate, Rng};
use bundle_fuzz::Target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// No input to any parser here justifies one allocation this large: the largest
/// legitimate ones are a 1 MiB data block and the 1 MiB read buffer of a digest.
const ALLOC_LIMIT: usize = 256 << 20;

/// Aborts on an allocation over [`ALLOC_LIMIT`] (an allocator must not unwind, so it
/// cannot panic; the message says which size was asked for).
struct Bounded;

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            too_large(layout.size());
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            too_large(layout.size());
        }
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            too_large(new_size);
        }
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The case the current thread runs: its label, and a NUL-terminated file name to save
/// its input under, prepared beforehand because the allocator must not allocate.
struct Current {
    label: String,
    save_as: std::ffi::CString,
    input: Vec<u8>,
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Current>> = const { std::cell::RefCell::new(None) };
}

fn too_large(_size: usize) -> ! {
    // No allocation until the input is saved: write(2) what is known, save, abort.
    let say = |b: &[u8]| {
        // SAFETY: writing a buffer we hold to stderr.
        unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
    };
    say(b"fuzz target ");
    let _ = CURRENT.try_with(|c| {
        if let Ok(c) = c.try_borrow() {
            if let Some(c) = c.as_ref() {
                say(c.label.as_bytes());
                // SAFETY: a NUL-terminated path; the fd is closed right after the write.
                unsafe {
                    let fd = libc::open(c.save_as.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644);
                    if fd >= 0 {
                        libc::write(fd, c.input.as_ptr().cast(), c.input.len());
                        libc::close(fd);
                    }
                }
                say(b" (input saved as ");
                say(c.save_as.as_bytes());
                say(b")");
            }
        }
    });
    say(b": one allocation of more than 256 MiB, from:\n");
    // Small allocations are fine now (only the huge one was refused): say where.
    eprintln!("{}", std::backtrace::Backtrace::force_capture());
    std::process::abort()
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// Longest one case may run (a debug build; the slowest seed takes milliseconds).
const CASE_LIMIT: Duration = Duration::from_secs(20);

fn cases() -> u64 {
    std::env::var("BUNDLE_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(400)
}

fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the seed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("reading the corpus").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the seed corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).expect("a seed")))
        .collect()
}

/// Runs one case under the watchdog; on a panic, saves the input and says how to
/// rerun it.
fn run_case(target: &Target, label: &str, input: &[u8]) {
    let file = failures().join(format!("{}-{}", target.name, label.replace(['/', ' '], "-")));
    let save_as = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current { label: format!("{} {label}", target.name), save_as, input: input.to_vec() })
    });
    let (done, watch) = mpsc::channel::<()>();
    let what = format!("{} {label}", target.name);
    let dog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(CASE_LIMIT) {
            eprintln!("fuzz target {what}: still running after {CASE_LIMIT:?} (a hang)");
            std::process::abort();
        }
    });
    let result = std::panic::catch_unwind(|| (target.run)(input));
    let _ = done.send(());
    dog.join().expect("the watchdog");
    if result.is_err() {
        let _ = std::fs::write(&file, input);
        panic!(
            "fuzz target {} failed on {label}; input saved as {} (rerun: cargo run -p bundle-fuzz --example replay {} {})",
            target.name,
            file.display(),
            target.name,
            file.display()
        );
    }
}

/// Where failing inputs are saved: `target/fuzz-failures/`.
fn failures() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn run(name: &str) {
    let target = bundle_fuzz::target(name).expect("a target of the table");
    let seeds = corpus(name);
    for (file, data) in &seeds {
        run_case(target, &format!("seed {file}"), data);
    }
    for case in 0..cases() {
        let mut rng = Rng::new(case ^ (name.len() as u64) << 32);
        let (file, seed) = &seeds[rng.below(seeds.len())];
        let mut input = seed.clone();
        mutate(&mut input, &mut rng);
        run_case(target, &format!("case {case} from {file}"), &input);
    }
}

#[test]
fn every_target_has_a_corpus() {
    for t in bundle_fuzz::TARGETS {
        assert!(!corpus(t.name).is_empty());
    }
}

#[test]
fn trailer() {
    run("trailer");
}

#[test]
fn metadata() {
    run("metadata");
}

#[test]
fn squashfs() {
    run("squashfs");
}

#[test]
fn rpm() {
    run("rpm");
}

#[test]
fn filelist() {
    run("filelist");
}

#[test]
fn bind() {
    run("bind");
}

#[test]
fn buildfile() {
    run("buildfile");
}

#[test]
fn cdi() {
    run("cdi");
}
