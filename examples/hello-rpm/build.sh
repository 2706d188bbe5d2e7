#!/bin/sh
# Rebuilds the example RPMs next to this script with rpmbuild (Debian: apt-get install rpm).
# SOURCE_DATE_EPOCH pins the timestamps so that a rebuild changes as little as possible.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"
rpmbuild -bb --nodeps \
    --define "_topdir $top" \
    --define "_sourcedir $here/src" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    "$here/hello-rpm.spec"
cp "$top"/RPMS/x86_64/hello-rpm-*.rpm "$here/"
ls -l "$here"/*.rpm
