#!/bin/sh
# The example's application: prints what the build file set.
echo "$GREETING from a bundle built by bundle.toml (args: $*)"
