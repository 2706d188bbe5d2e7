#!/bin/sh
# An sbatch job script that runs a bundle like any other program:
#
#   sbatch job.sh                 (with app.sif next to it; e.g. examples/mpi/ring.sif)
#
# The bundle needs nothing installed on the nodes: no container runtime, no module.
#SBATCH --job-name=app
#SBATCH --ntasks=4
#SBATCH --time=00:10:00
#SBATCH --output=app-%j.out
set -eu

app=${APP:-./app.sif}

# Serial runs in the batch step: the first one mounts the image; the next ones join
# the container it leaves behind for BUNDLE_LINGER seconds (default 3), so a loop
# pays the mount once.
export BUNDLE_LINGER=${BUNDLE_LINGER:-10}
for input in one two three; do
    "$app" "$input"
done

# A parallel step: every task is the bundle; the tasks of one node share one container
# (one user and mount namespace, one mount), so MPI's shared-memory transport can use
# single-copy CMA between them. Debian's Open MPI talks PMIx to Slurm: --mpi=pmix.
srun --mpi=pmix "$app"

# The exit status of the bundle is the application's (255: the bundle itself could not
# start; the message is in the output file), so `set -e` and `$?` work as usual.
