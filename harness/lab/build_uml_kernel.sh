#!/bin/bash
# Build kpbench's User-Mode Linux kernel: Debian's linux-source-6.1, ARCH=um x86_64_defconfig
# plus harness/lab/uml-kernel.config, everything built in (no modules). One kernel that runs all
# three kube-proxy modes (iptables legacy + nft, IPVS + ipset, nftables NAT).
#
#   harness/lab/build_uml_kernel.sh [OUT_DIR]
#
# OUT_DIR defaults to ~/.cache/kpbench/uml/<source version>-kpbench<fragment hash>; the kernel
# is OUT_DIR/linux (also OUT_DIR/config, OUT_DIR/build-info.txt). The last line printed on
# success is the binary's path. Nothing is built when OUT_DIR/linux already exists.
#
# Environment:
#   KPBENCH_UML_SRC_TARBALL  default /usr/src/linux-source-6.1.tar.xz (apt-get install linux-source-6.1)
#   KPBENCH_UML_CACHE        default ${XDG_CACHE_HOME:-~/.cache}/kpbench/uml (unpacked source, default OUT_DIR)
#   KPBENCH_UML_JOBS         default 2
#   KPBENCH_UML_KEEP_BUILD   1 (default): keep OUT_DIR/build for quick rebuilds; 0: delete it
# Needs: build-essential bc bison flex libssl-dev libelf-dev (xz-utils).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRAGMENT="$HERE/uml-kernel.config"
TARBALL=${KPBENCH_UML_SRC_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
CACHE=${KPBENCH_UML_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kpbench/uml}
JOBS=${KPBENCH_UML_JOBS:-2}
KEEP_BUILD=${KPBENCH_UML_KEEP_BUILD:-1}

die() { echo "build_uml_kernel: $*" >&2; exit 1; }
log() { echo "build_uml_kernel: $*" >&2; }

[ -f "$FRAGMENT" ] || die "$FRAGMENT is missing"
[ -f "$TARBALL" ] || die "$TARBALL not found: apt-get install linux-source-6.1"
for tool in make gcc bc bison flex xz tar sha256sum flock; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install build-essential bc bison flex libssl-dev libelf-dev xz-utils"
done

# <source version>: the Debian package version when the tarball is the packaged one, else the tarball's hash
SRC_VERSION=""
if command -v dpkg-query >/dev/null && owner=$(dpkg-query -S "$TARBALL" 2>/dev/null); then
    SRC_VERSION=$(dpkg-query -W -f='${Version}' "${owner%%:*}" 2>/dev/null || true)
fi
[ -n "$SRC_VERSION" ] || SRC_VERSION="$(basename "$TARBALL" .tar.xz)-$(sha256sum "$TARBALL" | cut -c1-8)"
FRAG_HASH=$(sha256sum "$FRAGMENT" | cut -c1-10)
OUT=${1:-$CACHE/$SRC_VERSION-kpbench$FRAG_HASH}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN="$OUT/linux"

# every CONFIG_X=value line must be in the final .config verbatim; every "# CONFIG_X is not set"
# must not be =y/=m. Prints the offending lines, returns 1 if any.
verify_config() {
    local config=$1 bad=0 line sym want have
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*)
                sym=${line%%=*}; want=$line
                have=$(grep -E "^(# )?$sym[= ]" "$config" | head -1 || true)
                if [ "$have" != "$want" ]; then
                    echo "  want $want, have ${have:-<absent: unknown symbol or unmet dependency>}" >&2
                    bad=1
                fi ;;
            "# CONFIG_"*" is not set")
                sym=${line#\# }; sym=${sym%% *}
                if grep -qE "^$sym=[ym]$" "$config"; then
                    echo "  want $sym off, have $(grep -E "^$sym=" "$config")" >&2
                    bad=1
                fi ;;
        esac
    done <"$FRAGMENT"
    return $bad
}

exec 9>"$OUT/.lock"
flock 9  # one build per OUT_DIR at a time

if [ -x "$BIN" ]; then
    log "$BIN exists, not rebuilding (delete it to rebuild)"
    if [ -f "$OUT/config" ] && ! verify_config "$OUT/config"; then
        die "$OUT/config does not match $FRAGMENT (see above): delete $OUT and rebuild"
    fi
    echo "$BIN"
    exit 0
fi

# unpack the source once per source version (shared by all fragments; builds use O=)
SRC_ROOT="$CACHE/src/$SRC_VERSION"
mkdir -p "$SRC_ROOT"
exec 8>"$SRC_ROOT.lock"
flock 8
if [ ! -f "$SRC_ROOT/.kpbench-unpacked" ]; then
    log "unpacking $TARBALL into $SRC_ROOT"
    rm -rf "${SRC_ROOT:?}"/*
    tar -xJf "$TARBALL" -C "$SRC_ROOT"
    touch "$SRC_ROOT/.kpbench-unpacked"
fi
flock -u 8
SRC=$(find "$SRC_ROOT" -mindepth 2 -maxdepth 2 -name Makefile -printf '%h\n' | head -1)
[ -n "$SRC" ] && [ -f "$SRC/arch/um/configs/x86_64_defconfig" ] || die "no kernel source with ARCH=um under $SRC_ROOT"

BUILD="$OUT/build"
mkdir -p "$BUILD"
MAKE=(make -C "$SRC" O="$BUILD" ARCH=um SUBARCH=x86_64)

log "configuring in $BUILD (x86_64_defconfig + $(basename "$FRAGMENT"))"
"${MAKE[@]}" -s x86_64_defconfig >/dev/null
# merge_config.sh -m: only merge (it warns about every value the fragment overrides); then resolve
(cd "$BUILD" && ARCH=um SUBARCH=x86_64 "$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "$FRAGMENT") \
    >"$BUILD/merge_config.log" 2>&1 || { cat "$BUILD/merge_config.log" >&2; die "merge_config.sh failed"; }
"${MAKE[@]}" -s olddefconfig >/dev/null
if ! verify_config "$BUILD/.config"; then
    die "these options from $FRAGMENT did not end up in $BUILD/.config (see above)"
fi

log "building $(make -s -C "$SRC" kernelversion)-kpbench: nice -n 10 make -j$JOBS ARCH=um (cold builds take a while on 2 shared cores)"
t0=$(date +%s)
if ! nice -n 10 "${MAKE[@]}" -j"$JOBS" linux >"$BUILD/build.log" 2>&1; then
    tail -40 "$BUILD/build.log" >&2
    die "the kernel build failed (full log: $BUILD/build.log)"
fi
t1=$(date +%s)
secs=$((t1 - t0))

verify_config "$BUILD/.config" || die "the final .config lost options from $FRAGMENT (see above)"
[ -x "$BUILD/linux" ] || die "the build finished without $BUILD/linux"
release=$("$BUILD/linux" --version </dev/null 2>/dev/null | head -1 || true)
cp "$BUILD/.config" "$OUT/config"
cp "$BUILD/linux" "$BIN.tmp$$"
mv -f "$BIN.tmp$$" "$BIN"  # atomic: a half-copied binary is never at $BIN
size=$(stat -c %s "$BIN")
cat >"$OUT/build-info.txt" <<EOF
release=$release
source=$TARBALL
source_version=$SRC_VERSION
fragment_sha256_10=$FRAG_HASH
build_seconds=$secs
jobs=$JOBS
size_bytes=$size
built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
host=$(uname -r) nproc=$(nproc)
EOF
[ "$KEEP_BUILD" = 1 ] || rm -rf "$BUILD"
log "built $release in ${secs}s ($((secs / 60))m$((secs % 60))s, -j$JOBS), $(numfmt --to=iec "$size" 2>/dev/null || echo "$size bytes")"
echo "$BIN"
