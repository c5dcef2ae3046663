#!/usr/bin/env bash
# Makes the two base images deploy/docker/Dockerfile names, locally, for a
# machine that cannot pull them (an air-gapped builder, or this project's
# CI): nothing is pulled from a registry.
#
#   rust:<RUST_VERSION>-bookworm          Debian bookworm (debootstrap, from
#                                         the machine's own apt mirror) with
#                                         gcc, g++, make and perl, plus this
#                                         machine's Rust toolchain and CA
#                                         bundle copied in
#   gcr.io/distroless/cc-debian12:nonroot glibc and libgcc_s from Debian's
#                                         packages, the CA bundle, and the
#                                         nonroot user (65532); no shell
#
# Each is made only when the engine does not have it already, so a warm
# machine spends nothing here. Needs root, debootstrap, dpkg-deb, apt-get
# and podman (or ENGINE="docker").
#
#   bash deploy/docker/base-images.sh            # both, for this rustc's version
#   RUST_VERSION=1.95 bash deploy/docker/base-images.sh
set -euo pipefail

# The engine's command, split on spaces: ENGINE="podman --runtime /usr/sbin/runc".
read -ra engine <<<"${ENGINE:-podman}"
rust_version=${RUST_VERSION:-$(rustc --version | awk '{ split($2, v, "."); print v[1] "." v[2] }')}
builder="rust:${rust_version}-bookworm"
runtime="gcr.io/distroless/cc-debian12:nonroot"

work=$(mktemp -d)
# apt-get download drops privileges to _apt, which must reach the folder.
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

has_image() { "${engine[@]}" image inspect "$1" >/dev/null 2>&1; }

# The mirror this machine's apt already uses for bookworm: no address is
# written here.
mirror() {
  local uri
  uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{ print $2 }' |
        grep -v security | head -1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^\s*deb\s' /etc/apt/sources.list 2>/dev/null | awk '{ print $2 }' |
          grep -v security | head -1 || true)
  fi
  [ -n "$uri" ] || { echo "base-images.sh: no Debian mirror in /etc/apt sources" >&2; exit 1; }
  echo "$uri"
}

if has_image "$builder"; then
  echo "base-images.sh: $builder is there"
else
  echo "base-images.sh: making $builder (debootstrap, then this machine's Rust toolchain)"
  root="$work/builder"
  debootstrap --variant=minbase --include=gcc,g++,libc6-dev,make,perl,ca-certificates \
    bookworm "$root" "$(mirror)" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # This machine's trust store, which may hold a proxy's CA that cargo must
  # trust to reach crates.io from inside the build.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  sysroot=$(rustc --print sysroot)
  mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo"
  # The compiler, cargo and the standard library; not the docs or sources.
  cp -a "$sysroot/bin" "$sysroot/lib" "$root/usr/local/rust/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$root/usr/local/rust/"
  rm -rf "$root/usr/local/rust/lib/rustlib/src"
  tar -C "$root" -c . | "${engine[@]}" import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    - "$builder" >"$work/import.log" 2>&1 || { cat "$work/import.log" >&2; exit 1; }
fi

if has_image "$runtime"; then
  echo "base-images.sh: $runtime is there"
else
  echo "base-images.sh: making $runtime (libc6 and libgcc-s1 from Debian's packages)"
  root="$work/runtime"
  mkdir -p "$root" "$work/debs"
  (cd "$work/debs" && apt-get download libc6 libgcc-s1 >/dev/null)
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
  rm -rf "$root/usr/share/doc" "$root/usr/share/lintian" "$root/usr/share/locale"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
  tar -C "$root" -c . | "${engine[@]}" import \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' \
    - "$runtime" >"$work/import.log" 2>&1 || { cat "$work/import.log" >&2; exit 1; }
fi
