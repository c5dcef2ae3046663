#!/usr/bin/env bash
# Installs the pinned helm, which the chart's tests (tests/deploy/helm.rs)
# run, into target/tools/helm/bin: built from source with
# `go install` from the Go module proxy (no release tarball can be fetched
# here), with the module and build caches under target/tools/go too, so
# nothing outside the repository is touched. About 4 minutes on 2 cores
# once, then found in place. Prints the binary's path.
#
# `helm version` prints only "v4.3" for a build from the module proxy (the
# patch level is set by the release build's linker flags), so the version
# is checked with `go version -m`, which reads the module version built in.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=v4.3.2
root="$PWD/target/tools"
# A fixed directory, not one per version: tests/support/helm.rs looks
# there. A pin bump finds the old version (go version -m) and builds over it.
bin="$root/helm/bin"

if [ ! -x "$bin/helm" ] || ! go version -m "$bin/helm" 2>/dev/null | grep -q "mod[[:space:]]*helm.sh/helm/v4[[:space:]]*$VERSION"; then
  if ! command -v go >/dev/null 2>&1; then
    echo "helm: the Go toolchain is needed to build helm $VERSION (apt-get install golang-go, or Go from go.dev)" >&2
    exit 1
  fi
  printf '\n==> building helm %s with go install (takes about 4 minutes once)\n' "$VERSION" >&2
  mkdir -p "$bin"
  # -modcacherw: the module cache is read-only by default, which would
  # make `cargo clean` (or rm -rf target) fail on it.
  GOBIN="$bin" GOPATH="$root/go" GOMODCACHE="$root/go/mod" GOCACHE="$root/go/cache" \
    GOFLAGS=-modcacherw CGO_ENABLED=0 \
    go install "helm.sh/helm/v4/cmd/helm@$VERSION" >&2
fi
echo "$bin/helm"
