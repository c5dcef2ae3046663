#!/usr/bin/env bash
# Installs what tests/contract/models.rs generates and runs consumer models
# with, without root, under target/tools/ (`cargo clean` removes it):
# - target/tools/modelina: the npm packages pinned by
#   tests/contract/modelina/package-lock.json (Modelina, the AsyncAPI parser,
#   TypeScript), with `npm ci`; skipped when that lock file is the one
#   installed;
# - target/tools/modelina-python: pydantic, which the generated Python
#   models import (.ci/tools/venv.sh).
# Needs node and npm (Debian: apt-get install nodejs npm). Prints nothing on
# stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SOURCE=$ROOT/tests/contract/modelina
DIR=$ROOT/target/tools/modelina
say() { echo "modelina.sh: $*" >&2; }

command -v npm >/dev/null || { say "npm not found (as root: apt-get install nodejs npm)"; exit 1; }
# npm ci leaves node_modules/.package-lock.json once every package is in.
if ! { cmp -s "$SOURCE/package-lock.json" "$DIR/package-lock.json" &&
       [[ -f $DIR/node_modules/.package-lock.json ]]; }; then
    say "installing the pins of tests/contract/modelina/package-lock.json (npm) into $DIR"
    mkdir -p "$DIR"
    cp "$SOURCE/package.json" "$SOURCE/package-lock.json" "$DIR/"
    # No install scripts: none of these packages needs one to work.
    npm ci --prefix "$DIR" --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi
bash "$(dirname "$0")/venv.sh" modelina-python pydantic==2.12.5 >/dev/null
