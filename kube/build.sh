#!/usr/bin/env bash
# Build upstream etcd, kube-apiserver and kube-proxy from the official Go modules (kube/go.mod).
#
#   kube/build.sh [OUT_DIR]        default: <repo>/.cache/kube/<k8s version>/bin
#
# Skips every binary already present in OUT_DIR (delete it, or set KUBE_REBUILD=1, to rebuild).
# With KUBE_BIN_DIR set (official release binaries), nothing is built when kube-apiserver and
# kube-proxy are there; etcd is then taken from KUBE_BIN_DIR, else built here as usual.
# GOPATH / GOMODCACHE / GOCACHE live under <repo>/.cache/go so a clean clone rebuilds from the
# module proxy alone, deterministically (-trimpath, CGO off, fixed version stamps).
# Env: GO (go binary), KUBE_BUILD_NICE (default 10), GOFLAGS (default -mod=mod), KUBE_REBUILD.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

GO="${GO:-}"
if [[ -z "$GO" ]]; then
  if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
  elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
  else echo "kube/build.sh: no Go toolchain (set GO=/path/to/go)" >&2; exit 2
  fi
fi

kube_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
[[ -n "$kube_version" ]] || { echo "kube/build.sh: k8s.io/kubernetes not required in kube/go.mod" >&2; exit 2; }
out="${1:-$repo/.cache/kube/$kube_version/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if [[ -n "${KUBE_BIN_DIR:-}" ]]; then
  if [[ -x "$KUBE_BIN_DIR/kube-apiserver" && -x "$KUBE_BIN_DIR/kube-proxy" ]]; then
    echo "kube/build.sh: using prebuilt binaries in KUBE_BIN_DIR=$KUBE_BIN_DIR"
    [[ -x "$KUBE_BIN_DIR/etcd" ]] && exit 0
    echo "kube/build.sh: KUBE_BIN_DIR has no etcd; building etcd $etcd_version into $out"
    targets=(etcd)
  else
    echo "kube/build.sh: KUBE_BIN_DIR=$KUBE_BIN_DIR lacks kube-apiserver or kube-proxy" >&2
    exit 2
  fi
else
  targets=(etcd kube-apiserver kube-proxy)
fi

todo=()
for t in "${targets[@]}"; do
  if [[ -x "$out/$t" && -z "${KUBE_REBUILD:-}" ]]; then
    echo "kube/build.sh: $out/$t present, skipped"
  else
    todo+=("$t")
  fi
done
[[ ${#todo[@]} -gt 0 ]] || exit 0

export GOPATH="$repo/.cache/go"
export GOMODCACHE="$GOPATH/mod"
export GOCACHE="$GOPATH/build"
export GOFLAGS="${GOFLAGS:--mod=mod -buildvcs=false}"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

cd "$here"
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
