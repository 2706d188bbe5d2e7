#!/bin/sh
# The packaged entry point: a wrapper script, as many HPC applications ship, that sets
# up the environment and starts the real program.
HELLO_NAME="${HELLO_NAME:-bundle}"
export HELLO_NAME
exec /usr/libexec/hello-rpm/hello "$@"
