"""The test cluster's container images, built here without a registry: the pause image, kubeadm's
`registry.k8s.io/kube-proxy:<version>` and the harness's own image (./Dockerfile's equivalent), each
an OCI archive in ~/.cache/kpbench/images that `ctr -n k8s.io images import` loads into a node's
containerd, so pods using them with `imagePullPolicy: IfNotPresent` never pull.

    python -m harness.testcluster.images build --kube-version v1.37.2     (make cluster-images)

- pause: build/pause/linux/pause.c from the release's k8s.io/kubernetes module zip, `gcc -static`;
  the image is /pause run as 65535, named as kubeadm of that release names it (containerd's CRI
  sandbox image must be configured with that name: kubelet has no flag for it since v1.35).
- kube-proxy: the shared Debian base (debian.py) plus the kube-proxy `make kube` built, at
  /usr/local/bin/kube-proxy where kubeadm's DaemonSet runs it; iptables-legacy is the image's
  iptables (see KUBE_PROXY_IPTABLES).
- harness: the same base plus a virtualenv /opt/venv with the harness's dependencies (one layer,
  rebuilt when pyproject.toml changes) and the harness source at /opt/kpbench installed into it (a
  small layer, rebuilt when the source changes).

Every archive and intermediate layout is keyed by a hash of what its content comes from (recipe,
release, binary, source), so an unchanged input is never rebuilt and a changed one always is.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from harness import releases
from harness.cluster.manifests import DEFAULT_IMAGE
from harness.errors import UserError
from harness.targets.local_binaries import CACHE_ROOT
from harness.testcluster import debian, oci

IMAGES_DIR = CACHE_ROOT / "images"
GO_MOD_DOWNLOAD = CACHE_ROOT / "go" / "mod" / "cache" / "download"  # kube/build.sh's GOMODCACHE
REPO = Path(__file__).resolve().parents[2]
RECIPE_VERSION = 1  # part of every cache key: bump it when the way an image is built changes

# kubeadm's PauseVersion in the default release (v1.37.2), also containerd v2.4's default sandbox image
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
HARNESS_IMAGE = DEFAULT_IMAGE  # what the cluster target's pods run ("kpbench:latest")
# The lab's iptables mode measures iptables-legacy by default (scenario iptables_backend), so the
# kube-proxy image's `iptables` is legacy too: numbers from the cluster compare with the lab's.
# (Upstream's image runs iptables-wrapper, which would follow kubelet's choice, i.e. the host's.)
KUBE_PROXY_IPTABLES = "legacy"
PAUSE_CFLAGS = ("-Os", "-Wall", "-Werror", "-static")  # build/pause/Makefile's CFLAGS
HARNESS_ENV = (
    "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "PIP_NO_CACHE_DIR=1",
    "PIP_DISABLE_PIP_VERSION_CHECK=1",
)
HARNESS_SOURCES = ("pyproject.toml", "README.md", "harness")
IMAGE_KINDS = ("pause", "kube-proxy", "harness")
# superseded archives and layouts kept per image (the newest first) before the older are removed
KEEP_ARCHIVES = 3
KEEP_LAYOUTS = 2


@dataclass(frozen=True)
class ImageArchive:
    """One importable image: `name` is the fully qualified name containerd stores and CRI looks
    up (`ctr images ls` shows it), `path` the OCI archive."""

    name: str
    path: Path
    built: bool = False  # built by this call (else found in the cache)
    seconds: float = 0.0


def kube_proxy_image(version: str) -> str:
    """kubeadm's kube-proxy image name for a release: registry.k8s.io/kube-proxy:v1.37.2."""
    return f"registry.k8s.io/kube-proxy:{_release(version)}"


def pause_image(kube_version: str) -> str:
    """The sandbox image kubeadm of `kube_version` names (its constants.go PauseVersion)."""
    text = _module_file(kube_version, "cmd/kubeadm/app/constants/constants.go")
    m = re.search(r'PauseVersion\s*=\s*"([^"]+)"', text)
    if not m:
        raise UserError(f"kubeadm's PauseVersion not found in k8s.io/kubernetes@{kube_version}")
    return f"registry.k8s.io/pause:{m.group(1)}"


def cache_key(recipe: object) -> str:
    """16 hex digits of the SHA-256 of a JSON-able recipe (keys sorted)."""
    blob = json.dumps({"recipe_version": RECIPE_VERSION, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def archive_path(name: str, key: str) -> Path:
    """registry.k8s.io/kube-proxy:v1.37.2 -> <images>/kube-proxy_v1.37.2-<key>.tar"""
    return IMAGES_DIR / f"{_slug(name)}-{key}.tar"


def _slug(name: str) -> str:
    return name.rpartition("/")[2].replace(":", "_")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_files(root: Path = REPO) -> list[Path]:
    """The files the harness image installs (./Dockerfile copies the same), sorted."""
    out: list[Path] = []
    for top in HARNESS_SOURCES:
        p = root / top
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [
                f
                for f in p.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")
            ]
    return sorted(out)


def source_digest(root: Path = REPO) -> str:
    """SHA-256 over the harness sources' relative paths and contents."""
    h = hashlib.sha256()
    for f in source_files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def harness_dependencies(root: Path = REPO) -> list[str]:
    """The runtime requirements of pyproject.toml ([project] dependencies)."""
    return list(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])


# --- inputs -------------------------------------------------------------------------------------


def _release(version: str) -> str:
    try:
        return releases.normalize(version)
    except releases.UnknownRelease as e:
        raise UserError(f"kube version {version!r}: {e}") from None


def kube_proxy_binary(version: str) -> Path:
    """The kube-proxy `make kube` built for the release; a one-line error naming the command if none."""
    v = _release(version)
    path = CACHE_ROOT / "kube" / v / "bin" / "kube-proxy"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UserError(f"no kube-proxy built for {v} ({path}): run `make kube KUBE_VERSION={v}` first")
    return path


def module_zip(version: str) -> Path:
    v = _release(version)
    path = GO_MOD_DOWNLOAD / "k8s.io" / "kubernetes" / "@v" / f"{v}.zip"
    if not path.is_file():
        raise UserError(
            f"the k8s.io/kubernetes@{v} module is not in the Go module cache ({path}): "
            f"run `make kube KUBE_VERSION={v}` first"
        )
    return path


def _module_file(version: str, rel: str) -> str:
    v = _release(version)
    with zipfile.ZipFile(module_zip(v)) as z:
        return z.read(f"k8s.io/kubernetes@{v}/{rel}").decode()


def _gcc_version() -> str:
    if not shutil.which("gcc"):
        raise UserError("gcc is not installed: run `make cluster-images` (installs gcc and libc6-dev)")
    return subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


# --- builders -----------------------------------------------------------------------------------


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise UserError(f"{what} failed:\n{tail}")


def _layout(name: str, key: str, build: Callable[[Path, Path], None]) -> Path:
    """A cached intermediate OCI layout (tag "img"): <images>/layouts/<name>-<key>, built by
    `build(layout, workdir)` when missing; the KEEP_LAYOUTS newest of the same name are kept."""
    final = IMAGES_DIR / "layouts" / f"{name}-{key}"
    if (final / "index.json").is_file():
        return final
    with _workdir(name) as work:
        layout = work / "oci"
        build(layout, work)
        oci.gc(layout)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(layout, final)
    for old in _stale(final.parent.glob(f"{name}-*"), KEEP_LAYOUTS):
        shutil.rmtree(old, ignore_errors=True)
    return final


def _stale(paths: Iterable[Path], keep: int) -> list[Path]:
    """All but the `keep` newest (several work trees share the cache, each with its own source)."""
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)[keep:]


@contextlib.contextmanager
def _workdir(name: str) -> Iterator[Path]:
    work = IMAGES_DIR / "tmp" / f"{name}-{os.getpid()}"
    debian.remove_tree(work)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        debian.remove_tree(work)


def _base_key() -> str:
    return cache_key({"debian": debian.recipe()})


def base_layout() -> Path:
    """The shared Debian base as a cached OCI layout."""

    def build(layout: Path, work: Path) -> None:
        oci.new_layout(layout, "img")
        rootfs = oci.unpack(layout, "img", work / "bundle")
        debian.build_base(rootfs)
        oci.repack(layout, "img", work / "bundle", "mmdebstrap " + " ".join(debian.PACKAGES))

    return _layout("debian", _base_key(), build)


def _wheels(requirements: list[str], dest: Path) -> None:
    """Wheels of `requirements` and all their dependencies, fetched by this interpreter's pip (the
    same Python minor and platform as Debian's python3: bookworm's is 3.11)."""
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(dest), *requirements],
        "pip wheel (the harness image's Python dependencies)",
    )


def _deps_key() -> str:
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return cache_key({"base": _base_key(), "python": py, "deps": harness_dependencies()})


def deps_layout() -> Path:
    """Base + /opt/venv holding the harness's dependencies, as a cached OCI layout."""
    if sys.version_info[:2] != (3, 11):
        raise UserError(
            "the harness image is built with Python 3.11 (Debian bookworm's python3): run it from .venv"
        )
    base = base_layout()

    def build(layout: Path, work: Path) -> None:
        oci.clone_layout(base, layout)
        rootfs = oci.unpack(layout, "img", work / "bundle")
        wheels = rootfs / "tmp" / "kpbench-wheels"
        _wheels(["pip", *harness_dependencies()], wheels)
        pip = sorted(wheels.glob("pip-*.whl"))[-1].name
        debian.chroot(rootfs, "python3", "-m", "venv", "--without-pip", "/opt/venv")
        debian.chroot(
            rootfs,
            "/opt/venv/bin/python",
            f"/tmp/kpbench-wheels/{pip}/pip",
            "install",
            "-q",
            "--no-cache-dir",
            "--no-index",
            "--find-links",
            "/tmp/kpbench-wheels",
            "pip",
            *harness_dependencies(),
        )
        shutil.rmtree(wheels)
        oci.repack(layout, "img", work / "bundle", "python3 -m venv /opt/venv; pip install <pyproject deps>")

    return _layout("harness-deps", _deps_key(), build)


def build_pause(kube_version: str, out: Path, name: str) -> None:
    with _workdir("pause") as work:
        (work / "pause.c").write_text(_module_file(kube_version, "build/pause/linux/pause.c"))
        version = f"-DVERSION=v{oci.tag_of(name)}-kpbench"
        _run(["gcc", *PAUSE_CFLAGS, version, "-o", "pause", "pause.c"], "gcc -static pause.c", cwd=work)
        _run(["strip", "pause"], "strip pause", cwd=work)
        layout = work / "oci"
        oci.new_layout(layout, "img")
        rootfs = oci.unpack(layout, "img", work / "bundle")
        shutil.copy2(work / "pause", rootfs / "pause")
        oci.repack(layout, "img", work / "bundle", "gcc -static build/pause/linux/pause.c")
        oci.configure(layout, "img", user="65535:65535", entrypoint=["/pause"])
        oci.write_archive(layout, "img", name, out)


def build_kube_proxy(binary: Path, out: Path, name: str) -> None:
    base = base_layout()
    with _workdir("kube-proxy") as work:
        layout = work / "oci"
        oci.clone_layout(base, layout)
        rootfs = oci.unpack(layout, "img", work / "bundle")
        target = rootfs / "usr" / "local" / "bin" / "kube-proxy"
        shutil.copyfile(binary, target)
        target.chmod(0o755)
        for tool in ("iptables", "ip6tables"):
            debian.chroot(
                rootfs, "update-alternatives", "--set", tool, f"/usr/sbin/{tool}-{KUBE_PROXY_IPTABLES}"
            )
        oci.repack(
            layout, "img", work / "bundle", f"kube-proxy at /usr/local/bin; iptables-{KUBE_PROXY_IPTABLES}"
        )
        oci.configure(layout, "img", cmd=["/usr/local/bin/kube-proxy"])
        oci.write_archive(layout, "img", name, out)


def build_harness(out: Path, name: str, digest: str) -> None:
    """`digest`: the source_digest the archive's key holds (the copy must still match it)."""
    deps = deps_layout()
    with _workdir("harness") as work:
        src = work / "src"
        for f in source_files():
            dest = src / f.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        if source_digest(src) != digest:
            raise UserError("the harness source changed while its image was being built: run the build again")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--wheel-dir",
                str(work / "wheel"),
                str(src),
            ],
            "pip wheel (the harness package)",
        )
        wheel = next((work / "wheel").glob("kpbench-*.whl"))
        layout = work / "oci"
        oci.clone_layout(deps, layout)
        rootfs = oci.unpack(layout, "img", work / "bundle")
        shutil.copytree(src, rootfs / "opt" / "kpbench")
        shutil.copy2(wheel, rootfs / "tmp" / wheel.name)
        debian.chroot(
            rootfs,
            "/opt/venv/bin/pip",
            "install",
            "-q",
            "--no-cache-dir",
            "--no-index",
            "--no-deps",
            f"/tmp/{wheel.name}",
        )
        (rootfs / "tmp" / wheel.name).unlink()
        # ./Dockerfile's check: the modules the pods run import in the image
        debian.chroot(
            rootfs, "/opt/venv/bin/python", "-c", "import harness.measure.agent, harness.cluster.backend"
        )
        oci.repack(layout, "img", work / "bundle", "the harness at /opt/kpbench, pip install")
        oci.configure(
            layout,
            "img",
            env=HARNESS_ENV,
            workdir="/opt/kpbench",
            cmd=["python", "-c", "import harness; print('kpbench image', harness.__version__)"],
        )
        oci.write_archive(layout, "img", name, out)


# --- the cache ----------------------------------------------------------------------------------


def plan(
    kube_version: str, kinds: tuple[str, ...] = IMAGE_KINDS
) -> list[tuple[str, Path, Callable[[], None]]]:
    """(name, archive path, builder) of each image, in `kinds` order; checks the inputs exist."""
    v = _release(kube_version)
    out: list[tuple[str, Path, Callable[[], None]]] = []
    for kind in kinds:
        if kind == "pause":
            name = pause_image(v)
            pause_c = _module_file(v, "build/pause/linux/pause.c").encode()
            key = cache_key(
                {
                    "pause.c": hashlib.sha256(pause_c).hexdigest(),
                    "cflags": PAUSE_CFLAGS,
                    "gcc": _gcc_version(),
                }
                | {"name": name}
            )
            out.append(
                (name, archive_path(name, key), partial(build_pause, v, archive_path(name, key), name))
            )
        elif kind == "kube-proxy":
            binary = kube_proxy_binary(v)
            name = kube_proxy_image(v)
            key = cache_key(
                {"base": _base_key(), "kube-proxy": file_digest(binary), "iptables": KUBE_PROXY_IPTABLES}
                | {"name": name}
            )
            out.append(
                (
                    name,
                    archive_path(name, key),
                    partial(build_kube_proxy, binary, archive_path(name, key), name),
                )
            )
        elif kind == "harness":
            name = oci.normalize_reference(HARNESS_IMAGE)
            digest = source_digest()
            key = cache_key({"deps": _deps_key(), "source": digest, "name": name})
            out.append(
                (name, archive_path(name, key), partial(build_harness, archive_path(name, key), name, digest))
            )
        else:
            raise UserError(f"unknown image {kind!r}: choose from {', '.join(IMAGE_KINDS)}")
    return out


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One build at a time per cache; stale work dirs of a crashed build are removed."""
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    with (IMAGES_DIR / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        debian.remove_tree(IMAGES_DIR / "tmp")
        yield


def ensure_images(
    kube_version: str = releases.DEFAULT_KUBE_VERSION,
    kinds: tuple[str, ...] = IMAGE_KINDS,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[ImageArchive]:
    """The archives of the pause, kube-proxy and harness images for a release, building those not
    cached (as root: mmdebstrap and chroot need it)."""
    todo = plan(kube_version, kinds)
    if all(path.is_file() for _, path, _ in todo):  # all cached: no need to wait for another build
        return [ImageArchive(name, path) for name, path, _ in todo]
    out = []
    with _cache_lock():
        for name, path, build in todo:
            if path.is_file():
                out.append(ImageArchive(name, path))
                continue
            if os.geteuid() != 0:
                raise UserError(
                    f"building {name} needs root (mmdebstrap, chroot): run `sudo make cluster-images`"
                )
            log(f"building {name} ...")
            t = time.monotonic()
            build()
            seconds = time.monotonic() - t
            for old in _stale(IMAGES_DIR.glob(f"{_slug(name)}-*.tar"), KEEP_ARCHIVES):
                old.unlink()
            out.append(ImageArchive(name, path, built=True, seconds=round(seconds, 1)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.testcluster.images", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the images not cached yet and print their archives")
    b.add_argument("--kube-version", default=os.environ.get("KUBE_VERSION") or releases.DEFAULT_KUBE_VERSION)
    b.add_argument(
        "--only", default=",".join(IMAGE_KINDS), help=f"comma-separated subset of {','.join(IMAGE_KINDS)}"
    )
    args = parser.parse_args(argv)
    try:
        kinds = tuple(k.strip() for k in args.only.split(",") if k.strip())
        images = ensure_images(args.kube_version, kinds, log=lambda m: print(m, flush=True))
    except UserError as e:
        print(f"kpbench images: error: {e}", file=sys.stderr)
        return 2
    for img in images:
        how = f"built in {img.seconds:.1f}s" if img.built else "cached"
        print(f"{img.name}  {img.path}  {img.path.stat().st_size / 1e6:.1f} MB  ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
