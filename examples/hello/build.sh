#!/usr/bin/env bash
# Builds examples/hello/hello.sif and runs it:
#   a static hello program (+ busybox for a shell, when installed) in a root tree,
#   packed with `bundle build --dir rootfs -e /bin/hello -o hello.sif`.
# Builds the runtime stub and the bundler first if they are missing, and, as root,
# installs gcc / libc6-dev / busybox-static / musl-tools with apt-get when missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
say() { printf '==> %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# Prerequisites.
missing=()
have gcc || missing+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
[ -x /bin/busybox ] || missing+=(busybox-static)
bundle=$target/debug/bundle
stub=$target/x86_64-unknown-linux-musl/stub/bundle-runtime
if [ ! -x "$stub" ] && ! have musl-gcc; then missing+=(musl-tools); fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        printf 'build.sh: missing: %s (sudo apt-get install %s)\n' "${missing[*]}" "${missing[*]}" >&2
        have gcc && [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || exit 1
    fi
fi

# The bundler and the static runtime stub.
if [ ! -x "$bundle" ] || [ ! -x "$stub" ]; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    have cargo || die "cargo not found: install Rust (https://rustup.rs), or run ./scripts/test once"
    if have rustup && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        say "adding the Rust target x86_64-unknown-linux-musl"
        rustup target add x86_64-unknown-linux-musl
    fi
    cd "$repo"
    say "building the runtime stub"
    cargo build --quiet --profile stub --target x86_64-unknown-linux-musl -p runtime-stub
    say "building the bundler"
    cargo build --quiet -p bundler
fi

# The application and its root tree.
cd "$here"
rm -rf build
mkdir -p build/rootfs/bin
say "compiling hello.c (static)"
gcc -static -O2 -o build/rootfs/bin/hello hello.c
if [ -x /bin/busybox ]; then
    cp /bin/busybox build/rootfs/bin/busybox
    for applet in sh ls cat echo env; do ln -s busybox "build/rootfs/bin/$applet"; done
fi

say "bundle build --dir build/rootfs -e /bin/hello -o hello.sif"
"$bundle" build --stub "$stub" --dir build/rootfs -e /bin/hello --label example=hello -o hello.sif

say "./hello.sif arg1 \"two words\""
./hello.sif arg1 "two words"
