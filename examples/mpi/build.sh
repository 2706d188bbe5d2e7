#!/usr/bin/env bash
# Builds examples/mpi/ring.sif, an MPI program in a bundle, and runs it with mpirun:
#   mpicc -O2 -o build/ring ring.c
#   bundle build --file build/ring=/usr/local/bin/ring \
#       --include /usr/lib/x86_64-linux-gnu/openmpi --include /usr/lib/x86_64-linux-gnu/pmix2 \
#       --include /usr/share/openmpi --include /etc/openmpi \
#       -e /usr/local/bin/ring -o ring.sif
#   mpirun -n 4 --oversubscribe ./ring.sif
# `bundle build` adds the program's libraries (libmpi and the rest) and, for the
# --include'd directories, those of Open MPI's and PMIx's plugins, which MPI_Init loads
# with dlopen. Debian 12's Open MPI 4.1 (openmpi-bin, libopenmpi-dev); as root, installs
# them with apt-get when missing. Builds the runtime stub and the bundler if missing.
# See README.md here and docs/mpi-slurm.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
say() { printf '==> %s\n' "$*"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# Prerequisites.
missing=()
have mpicc || missing+=(libopenmpi-dev)
have mpirun || missing+=(openmpi-bin)
bundle=$target/debug/bundle
stub=$target/x86_64-unknown-linux-musl/stub/bundle-runtime
if [ ! -x "$stub" ] && ! have musl-gcc; then missing+=(musl-tools); fi
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        die "missing: ${missing[*]} (sudo apt-get install ${missing[*]})"
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
    (
        cd "$repo"
        say "building the runtime stub"
        cargo build --quiet --profile stub --target x86_64-unknown-linux-musl -p runtime-stub
        say "building the bundler"
        cargo build --quiet -p bundler
    )
fi

# The program, and its bundle.
cd "$here"
rm -rf build
mkdir -p build
say "mpicc -O2 -o build/ring ring.c"
mpicc -O2 -Wall -o build/ring ring.c

# Open MPI's plugins (MCA components), the PMIx it uses and PMIx's plugins, help texts
# and the system-wide MCA parameters: where Debian keeps them.
include=()
for dir in /usr/lib/x86_64-linux-gnu/openmpi /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi /etc/openmpi; do
    [ -e "$dir" ] && include+=(--include "$dir")
done
say "bundle build --file build/ring=/usr/local/bin/ring ${include[*]} -e /usr/local/bin/ring -o ring.sif"
"$bundle" build --stub "$stub" --file build/ring=/usr/local/bin/ring "${include[@]}" \
    -e /usr/local/bin/ring --label example=mpi-ring -o ring.sif

# Run it: every rank is ./ring.sif; the ranks of this node share one container.
if [ "$(id -u)" -eq 0 ]; then
    say "as root: mpirun --allow-run-as-root -n 4 --oversubscribe ./ring.sif (kernel mode)"
    mpirun --allow-run-as-root -n 4 --oversubscribe ./ring.sif
else
    say "mpirun -n 4 --oversubscribe ./ring.sif"
    mpirun -n 4 --oversubscribe ./ring.sif
fi
