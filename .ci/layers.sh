#!/usr/bin/env bash
# Fails when the top-level parts of src/ (a file or folder directly under it)
# import each other in a cycle: the layers that src/lib.rs's docs and the
# README map must stay true.
#
# cargo-modules (rust-analyzer's view of the crate) draws the graph of `use`
# edges between modules, each edge of a nested module counted for its
# top-level part (--max-depth 1); Graphviz's `acyclic -n` decides whether
# that graph has a cycle and `sccmap` names the parts in it. cargo-modules'
# own --acyclic cannot serve: it checks every item (a method and its type
# form a cycle) before filtering. A child module using its parent
# (`super::`) stays inside one part and is not an edge here.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'layers: %s\n' "$*" >&2; }

export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

# 0.27.0 is the last release for rustc 1.95; about 15 minutes of CPU to build
# once (installed beside cargo-deny, so a CI machine builds it once).
if ! cargo modules --version 2>/dev/null | grep -qx 'cargo-modules 0.27.0'; then
  say "installing cargo-modules 0.27.0 (cargo install, takes several minutes once)"
  cargo install cargo-modules --locked --version 0.27.0
fi
if ! command -v acyclic >/dev/null 2>&1 || ! command -v sccmap >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    say "Graphviz is missing; as root, run: apt-get install -y --no-install-recommends graphviz"
    exit 1
  fi
  say "installing graphviz (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz >/dev/null; }
fi

mkdir -p target
graph=target/layers.dot
cargo modules dependencies --lib --no-externs --no-sysroot --no-fns --no-types --no-traits \
  --no-owns --max-depth 1 --layout dot >"$graph"
edges=$(grep -c -- '->' "$graph" || true)
if [ "$edges" -lt 10 ]; then
  say "cargo-modules drew only $edges edges between the parts of src/ ($graph): the check would see nothing"
  exit 1
fi
if ! acyclic -n "$graph"; then
  say "the top-level parts of src/ import each other in a cycle; the imports that close it:"
  sccmap "$graph" 2>/dev/null \
    | grep -o '"apizee_bridge::[a-z_]*" -> "apizee_bridge::[a-z_]*"' \
    | sed 's/apizee_bridge:://g; s/"//g; s/^/  /' >&2
  say "each part may import only parts below it (src/lib.rs, the layers); move the shared value down, or the composition up"
  exit 1
fi
printf 'layers: %s imports between the top-level parts of src/, no cycle\n' "$edges"
