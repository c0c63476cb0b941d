# Shared by kube/build.sh and kube/build_containerd.sh (sourced, not run).
# Callers set `me` (their name for messages) before sourcing.

# outside the work tree, so a fresh clone (CI) on the same machine reuses a build
cache_root="${KPBENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpbench}"

# find_go: sets GO to the Go toolchain (env GO, then PATH, then /usr/local/go), or exits 2.
find_go() {
  GO="${GO:-}"
  if [[ -z "$GO" ]]; then
    if command -v go >/dev/null 2>&1; then GO="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
    else echo "$me: no Go toolchain (set GO=/path/to/go)" >&2; exit 2
    fi
  fi
}

# missing_binaries OUT REBUILD NAME...: sets `todo` to the NAMEs without an executable in OUT
# (all of them when REBUILD is non-empty), saying which were skipped.
missing_binaries() {
  local out="$1" rebuild="$2" t
  shift 2
  todo=()
  for t in "$@"; do
    if [[ -x "$out/$t" && -z "$rebuild" ]]; then
      echo "$me: $out/$t present, skipped"
    else
      todo+=("$t")
    fi
  done
}

# go_build_env DEFAULT_GOFLAGS: the Go environment of every build here: module and build caches
# under the kpbench cache (KUBE_GOPATH), CGO off, the toolchain go.mod asks for.
go_build_env() {
  export GOPATH="${KUBE_GOPATH:-$cache_root/go}"
  export GOMODCACHE="$GOPATH/mod"
  export GOCACHE="$GOPATH/build"
  export GOFLAGS="${GOFLAGS:-$1}"
  export CGO_ENABLED=0
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
}
