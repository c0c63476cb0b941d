#!/usr/bin/env bash
# Build containerd v2 (containerd, containerd-shim-runc-v2, ctr) from its Go module, for the
# offline test cluster (`make cluster-bins`). Kubernetes 1.35 is the last release that supports
# Debian's containerd 1.6; github.com/containerd/containerd/v2 has no replace directives, so
# `go install module/cmd/x@version` builds it from the module proxy without a go.mod here.
#
#   kube/build_containerd.sh [VERSION] [OUT_DIR]
#
# VERSION: a containerd v2 release (v2.Y.Z), default the one below; one the Go module proxy does
#   not serve is a one-line error (exit 2) listing the served ones.
# OUT_DIR: default ~/.cache/kpbench/containerd/<VERSION>/bin (harness/testcluster/artifacts.py).
#
# CGO off, as upstream's static release: the btrfs snapshotter (the only cgo user) drops out by its
# own build constraint; devmapper and zfs are left out too (the cluster uses overlayfs). The runtime
# is Debian's runc (apt package runc). Skips binaries already in OUT_DIR (CONTAINERD_REBUILD=1
# rebuilds). Env: GO, KUBE_BUILD_NICE (default 10), KUBE_GOPATH (default ~/.cache/kpbench/go).
set -euo pipefail

default_version=v2.4.2
module=github.com/containerd/containerd/v2
binaries=(containerd containerd-shim-runc-v2 ctr)

me=kube/build_containerd.sh
# shellcheck source=kube/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
find_go

version="${1:-$default_version}"
if [[ ! "$version" =~ ^v?2\.[0-9]+\.[0-9]+$ ]]; then
  echo "kube/build_containerd.sh: $version is not a containerd v2 release like $default_version (v2.MINOR.PATCH)" >&2
  exit 2
fi
version="v${version#v}"
out="${2:-$cache_root/containerd/$version/bin}"

missing_binaries "$out" "${CONTAINERD_REBUILD:-}" "${binaries[@]}"
[[ ${#todo[@]} -gt 0 ]] || exit 0

go_build_env -buildvcs=false
export GOFLAGS=-buildvcs=false  # `go install x@version` takes no -mod flag from the environment

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"  # `go install x@version` ignores any go.mod; an empty folder keeps it that way
if ! "$GO" mod download -json "$module@$version" > "$work/mod.json" 2>/dev/null; then
  served="$("$GO" list -m -versions "$module" 2>/dev/null | tr ' ' '\n' | grep -E '^v2\.[0-9]+\.[0-9]+$' | sort -V | tail -8 | xargs)"
  echo "kube/build_containerd.sh: the Go module proxy does not serve $module@$version (latest served: ${served:-none})" >&2
  exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"

tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs"
ldflags="-s -w -X $module/version.Version=$version -X $module/version.Package=$module"
nice_n="${KUBE_BUILD_NICE:-10}"
for t in "${todo[@]}"; do
  start=$(date +%s)
  t_tags="$tags"
  [[ "$t" == containerd-shim-runc-v2 ]] && t_tags+=" no_grpc"  # as upstream's Makefile builds the shim
  echo "kube/build_containerd.sh: building $t (containerd $version) -> $out/$t"
  GOBIN="$work/bin" nice -n "$nice_n" "$GO" install -trimpath -tags "$t_tags" -ldflags "$ldflags" "$module/cmd/$t@$version"
  cp "$work/bin/$t" "$out/$t.tmp" && mv -f "$out/$t.tmp" "$out/$t"
  echo "kube/build_containerd.sh: $t built in $(( $(date +%s) - start ))s, $(du -h "$out/$t" | cut -f1)"
done
