"""OCI image layouts edited with umoci (Debian's package) and the single-image archives that
`ctr -n k8s.io images import` reads.

umoci does the layer work (unpack a tag into a bundle, diff the changed rootfs into a new layer, set
the image config); this module only drives it and writes the import archive: an OCI layout tar
holding one image's blobs, whose index names the image with `io.containerd.image.name` (the name
containerd stores and CRI looks up) and `org.opencontainers.image.ref.name` (its tag), as
`ctr images export` writes them. umoci 0.4.7's `insert` writes truncated layer tars, so files are
always added through unpack + repack.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import UserError

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
PLATFORM = {"architecture": "amd64", "os": "linux"}


def normalize_reference(ref: str) -> str:
    """The fully qualified name containerd and CRI store for an image reference, as Docker
    normalizes it: "kpbench:latest" -> "docker.io/library/kpbench:latest", "busybox" ->
    "docker.io/library/busybox:latest", "registry.k8s.io/pause:3.10.2" unchanged."""
    if not ref or ref != ref.strip() or "@" in ref:
        raise ValueError(f"image reference {ref!r}: expected [registry/]path[:tag] without a digest")
    first, sep, rest = ref.partition("/")
    has_domain = bool(sep) and ("." in first or ":" in first or first == "localhost")
    domain, path = (first, rest) if has_domain else ("docker.io", ref)
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if ":" not in path.rpartition("/")[2]:
        path = f"{path}:latest"
    return f"{domain}/{path}"


def tag_of(name: str) -> str:
    """The tag of a fully qualified name ("registry.k8s.io/kube-proxy:v1.37.2" -> "v1.37.2")."""
    return name.rpartition("/")[2].partition(":")[2]


def archive_index(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """index.json of a one-image archive: the manifest's descriptor named for containerd."""
    desc = {k: manifest[k] for k in ("mediaType", "digest", "size")}
    desc["annotations"] = {ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: tag_of(name)}
    desc["platform"] = dict(PLATFORM)
    return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [desc]}


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algo / hexdigest


def manifest_descriptor(layout: Path, tag: str) -> dict[str, Any]:
    """The descriptor index.json gives `tag` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get(ANNOTATION_REF_NAME) == tag:
            return desc
    raise KeyError(f"no tag {tag!r} in {layout}")


def image_digests(layout: Path, tag: str) -> list[str]:
    """Every blob one image needs: its manifest, its config and its layers, in that order."""
    desc = manifest_descriptor(layout, tag)
    manifest = json.loads(blob_path(layout, desc["digest"]).read_bytes())
    return [desc["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def write_archive(layout: Path, tag: str, name: str, out: Path) -> None:
    """Write the image `tag` of `layout` as an importable archive named `name` (atomically)."""
    desc = manifest_descriptor(layout, tag)
    index = json.dumps(archive_index(desc, name), indent=None).encode()
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", (layout / "oci-layout").read_bytes())
        _add_bytes(tar, "index.json", index)
        for digest in dict.fromkeys(image_digests(layout, tag)):  # a layer may repeat
            src = blob_path(layout, digest)
            info = tar.gettarinfo(str(src), arcname=str(src.relative_to(layout)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with src.open("rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def umoci(*args: str) -> None:
    """Run umoci; its own message on failure."""
    if not shutil.which("umoci"):
        raise UserError("umoci is not installed: run `make cluster-images` (installs Debian's umoci)")
    p = subprocess.run(["umoci", "--log=error", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"umoci {' '.join(args)} failed: {(p.stderr or p.stdout).strip()}")


def new_layout(layout: Path, tag: str) -> None:
    """An OCI layout holding one empty image `tag` (no layers)."""
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:{tag}")


def clone_layout(src: Path, dst: Path) -> None:
    """A copy of an OCI layout whose blobs are hard links (blobs are immutable, named by digest)."""
    shutil.copytree(src, dst, copy_function=os.link)
    for name in ("index.json", "oci-layout"):  # rewritten by umoci: real copies
        (dst / name).unlink()
        shutil.copyfile(src / name, dst / name)


def unpack(layout: Path, tag: str, bundle: Path) -> Path:
    """Unpack `tag` into a runtime bundle; returns its rootfs."""
    umoci("unpack", "--image", f"{layout}:{tag}", str(bundle))
    return bundle / "rootfs"


def repack(layout: Path, tag: str, bundle: Path, created_by: str) -> None:
    """Add the bundle's rootfs changes since its unpack to `tag` as one new layer."""
    umoci("repack", "--history.created_by", created_by, "--image", f"{layout}:{tag}", str(bundle))


def configure(
    layout: Path,
    tag: str,
    *,
    user: str | None = None,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str | None = None,
) -> None:
    """Set the image config (what `USER`, `ENTRYPOINT`, `CMD`, `ENV`, `WORKDIR` set in a Dockerfile)."""
    args = ["config", "--image", f"{layout}:{tag}", "--os", "linux", "--architecture", "amd64"]
    if user is not None:
        args += ["--config.user", user]
    args += [a for e in entrypoint for a in ("--config.entrypoint", e)]
    args += [a for c in cmd for a in ("--config.cmd", c)]
    args += [a for e in env for a in ("--config.env", e)]
    if workdir is not None:
        args += ["--config.workingdir", workdir]
    umoci(*args)


def gc(layout: Path) -> None:
    """Drop the blobs no tag reaches (umoci leaves each superseded manifest and config behind)."""
    umoci("gc", "--layout", str(layout))
