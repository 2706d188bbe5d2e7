//! Reruns a fuzz target on files, outside any fuzzer: a crash AFL++ found
//! (`target/fuzz/TARGET/default/crashes/*`) or one the tests saved
//! (`target/fuzz-failures/*`), under a debugger if need be.
//!
//!   cargo run -p bundle-fuzz --example replay TARGET FILE...

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let Some(target) = bundle_fuzz::target(&name) else {
        eprintln!("usage: replay TARGET FILE... (TARGET one of: {})", bundle_fuzz::names().join(", "));
        std::process::exit(2);
    };
    for file in args {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        eprintln!("replay: {name} {file} ({} bytes)", data.len());
        (target.run)(&data);
    }
    eprintln!("replay: no panic");
}
