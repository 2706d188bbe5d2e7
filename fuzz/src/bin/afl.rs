//! The AFL++ driver: `bundle-fuzz-afl TARGET`, run under `afl-fuzz` by `scripts/fuzz`.
//! One binary for all targets, so one instrumented build serves them all.

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = bundle_fuzz::target(&name) else {
        eprintln!("usage: bundle-fuzz-afl TARGET (one of: {})", bundle_fuzz::names().join(", "));
        std::process::exit(2);
    };
    let run = target.run;
    afl::fuzz!(|data: &[u8]| run(data));
}
