#!/usr/bin/env bash
# Build upstream etcd, kube-apiserver and kube-proxy from the official Go modules (kube/go.mod).
#
#   kube/build.sh [--cluster] [VERSION] [OUT_DIR]
#
# --cluster: also kubelet, kube-controller-manager and kube-scheduler (the test cluster's,
#   `make cluster-bins`), all six into OUT_DIR whatever KUBE_BIN_DIR says (the test cluster uses
#   only the cache). KUBE_TARGETS="kubelet ..." builds exactly the binaries it names.
# VERSION (vX.Y.Z, optional): the Kubernetes release, v1.33.0 or later; default, and the only one
#   with a committed go.sum, is the one kube/go.mod pins. A release older than v1.33 or one the
#   Go module proxy does not serve is a one-line error (exit 2) listing the built and served ones. Another version gets a module generated under
#   .cache/kube/<VERSION>/src (same main packages, every staging module replaced with v0.Y.Z,
#   go.sum verified against sum.golang.org by `go mod tidy`).
# OUT_DIR: default ~/.cache/kpbench/kube/<VERSION>/bin (where harness/targets/localcluster.py looks).
#
# Skips every binary already present in OUT_DIR (delete it, or set KUBE_REBUILD=1, to rebuild).
# With KUBE_BIN_DIR set (official release binaries), nothing is built when kube-apiserver and
# kube-proxy are there; etcd is then taken from KUBE_BIN_DIR, else built here as usual.
# GOPATH / GOMODCACHE / GOCACHE live under ~/.cache/kpbench/go so a clean clone rebuilds from the
# module proxy alone, deterministically (-trimpath, CGO off, fixed version stamps).
# Env: GO (go binary), KUBE_BUILD_NICE (default 10), GOFLAGS (default "-mod=mod -buildvcs=false"),
# KUBE_REBUILD, KUBE_GOPATH (default ~/.cache/kpbench/go).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
me=kube/build.sh
# shellcheck source=kube/lib.sh
. "$here/lib.sh"
find_go

all_targets=(etcd kube-apiserver kube-proxy kubelet kube-controller-manager kube-scheduler)
cluster=""
if [[ "${1:-}" == --cluster ]]; then cluster=1; shift; fi

pinned="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
[[ -n "$pinned" ]] || { echo "kube/build.sh: k8s.io/kubernetes not required in kube/go.mod" >&2; exit 2; }
kube_version="$pinned"
if [[ $# -gt 0 && "$1" =~ ^v?[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
  kube_version="v${1#v}"
  shift
elif [[ $# -gt 0 && "$1" =~ ^v?[0-9] ]]; then
  echo "kube/build.sh: $1 is not a release like $pinned (vMAJOR.MINOR.PATCH)" >&2; exit 2
fi

# releases built here, and a one-line error for a release this script cannot build
built_here() {
  local b
  b="$(cd "$cache_root/kube" 2>/dev/null && ls -d v*/bin/kube-proxy 2>/dev/null | cut -d/ -f1 | sort -V | xargs)"
  echo "${b:-none}"
}
unbuildable() {  # $1: why
  local served
  served="$(cd "$here" && GOFLAGS=-mod=mod "$GO" list -m -versions k8s.io/kubernetes 2>/dev/null |
            tr ' ' '\n' | grep -E '^v1\.(3[3-9]|[4-9][0-9])\.[0-9]+$' | sort -V | xargs)"
  echo "kube/build.sh: cannot build $kube_version: $1 (built here: $(built_here); buildable: ${served:-any release from v1.33.0 the Go module proxy serves})" >&2
  exit 2
}
minor="${kube_version#v1.}"; minor="${minor%%.*}"
if [[ "$kube_version" != v1.* || "$minor" -lt 33 ]]; then
  unbuildable "only releases from v1.33.0 on are supported"
fi
out="${1:-$cache_root/kube/$kube_version/bin}"

if [[ -n "${KUBE_BIN_DIR:-}" && -z "$cluster" ]]; then
  if [[ -x "$KUBE_BIN_DIR/kube-apiserver" && -x "$KUBE_BIN_DIR/kube-proxy" ]]; then
    echo "kube/build.sh: using prebuilt binaries in KUBE_BIN_DIR=$KUBE_BIN_DIR"
    targets=()
    if [[ ! -x "$KUBE_BIN_DIR/etcd" ]]; then
      echo "kube/build.sh: KUBE_BIN_DIR has no etcd; building etcd into $out"
      targets=(etcd)
    fi
  else
    echo "kube/build.sh: KUBE_BIN_DIR=$KUBE_BIN_DIR lacks kube-apiserver or kube-proxy" >&2
    exit 2
  fi
else
  targets=(etcd kube-apiserver kube-proxy)
fi
if [[ -n "$cluster" ]]; then targets+=(kubelet kube-controller-manager kube-scheduler); fi
if [[ -n "${KUBE_TARGETS:-}" ]]; then
  read -r -a targets <<< "$KUBE_TARGETS"
  for t in "${targets[@]}"; do
    [[ " ${all_targets[*]} " == *" $t "* ]] ||
      { echo "kube/build.sh: KUBE_TARGETS names $t; known: ${all_targets[*]}" >&2; exit 2; }
  done
fi
[[ ${#targets[@]} -gt 0 ]] || exit 0
mkdir -p "$out"
out="$(cd "$out" && pwd)"

missing_binaries "$out" "${KUBE_REBUILD:-}" "${targets[@]}"
[[ ${#todo[@]} -gt 0 ]] || exit 0

go_build_env "-mod=mod -buildvcs=false"

moddir="$here"
if [[ "$kube_version" != "$pinned" ]]; then
  # A module for another release: require it and replace each staging module it lists at v0.0.0.
  moddir="$cache_root/kube/$kube_version/src"
  echo "kube/build.sh: $kube_version is not the pinned $pinned; generating $moddir"
  rm -rf "$moddir" && mkdir -p "$moddir"
  cp -r "$here/cmd" "$moddir/"
  kjson="$(cd "$moddir" && "$GO" mod download -json "k8s.io/kubernetes@$kube_version" 2>/dev/null || true)"
  kmod="$(sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p' <<< "$kjson")"
  if [[ ! -f "$kmod" ]]; then
    rm -rf "$moddir"; rmdir "$out" "$(dirname "$out")" 2>/dev/null || true  # leave no empty release folder
    unbuildable "the Go module proxy does not serve k8s.io/kubernetes@$kube_version"
  fi
  # that release's own main files where they differ between releases (kubelet's takes a context from v1.34)
  ksrc="$(sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p' <<< "$kjson")"
  for t in kubelet kube-controller-manager kube-scheduler; do
    cp "$ksrc/cmd/$t/"*.go "$moddir/cmd/$t/main.go" && chmod u+w "$moddir/cmd/$t/main.go"
  done
  staging_v="v0.${kube_version#v1.}"
  {
    echo "module kpbench/kube"
    echo
    echo "go $(awk '$1 == "go" {print $2; exit}' "$kmod")"
    echo
    echo "require k8s.io/kubernetes $kube_version"
    echo
    echo "replace ("
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print "\t" $1 " => " $1 " '"$staging_v"'"}' "$kmod" | sort -u
    echo ")"
  } > "$moddir/go.mod"
  (cd "$moddir" && "$GO" mod tidy)
fi

cd "$moddir"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' go.mod)"
"$GO" mod download k8s.io/kubernetes
info="$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$kube_version.info"
commit="$(sed -n 's/.*"Hash":"\([0-9a-f]*\)".*/\1/p' "$info" 2>/dev/null || true)"
date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info" 2>/dev/null || true)"
major="${kube_version#v}"; major="${major%%.*}"
minor="${kube_version#v*.}"; minor="${minor%%.*}"
vx=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  vx+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  vx+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${date:-1970-01-01T00:00:00Z}"
  [[ -n "$commit" ]] && vx+=" -X $pkg.gitCommit=$commit"
done

nice_n="${KUBE_BUILD_NICE:-10}"
for t in "${todo[@]}"; do
  start=$(date +%s)
  echo "kube/build.sh: building $t ($([[ $t == etcd ]] && echo "etcd $etcd_version" || echo "kubernetes $kube_version")) -> $out/$t"
  nice -n "$nice_n" "$GO" build -trimpath -ldflags "-s -w$vx" -o "$out/$t.tmp" "./cmd/$t"
  mv -f "$out/$t.tmp" "$out/$t"
  echo "kube/build.sh: $t built in $(( $(date +%s) - start ))s, $(du -h "$out/$t" | cut -f1)"
done
