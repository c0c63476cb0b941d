"""The pure parts of the offline images: names, cache keys, the archive's index and blob set."""

from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from harness import releases
from harness.cluster.manifests import DEFAULT_IMAGE
from harness.errors import UserError
from harness.testcluster import debian, images, oci


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("kpbench:latest", "docker.io/library/kpbench:latest"),
        ("kpbench", "docker.io/library/kpbench:latest"),
        ("me/kpbench:1", "docker.io/me/kpbench:1"),
        ("registry.k8s.io/kube-proxy:v1.37.2", "registry.k8s.io/kube-proxy:v1.37.2"),
        ("localhost:5000/kpbench", "localhost:5000/kpbench:latest"),
        ("localhost/kpbench:dev", "localhost/kpbench:dev"),
    ],
)
def test_references_normalize_as_containerd_stores_them(ref, name):
    assert oci.normalize_reference(ref) == name


@pytest.mark.parametrize("ref", ["", " kpbench", "kpbench@sha256:00"])
def test_a_reference_it_cannot_name_is_refused(ref):
    with pytest.raises(ValueError):
        oci.normalize_reference(ref)


def test_image_names():
    assert images.kube_proxy_image("1.37.2") == "registry.k8s.io/kube-proxy:v1.37.2"
    assert images.HARNESS_IMAGE == DEFAULT_IMAGE
    assert oci.tag_of("registry.k8s.io/pause:3.10.2") == "3.10.2"
    assert oci.tag_of("localhost:5000/kpbench:dev") == "dev"
    assert images.archive_path("registry.k8s.io/kube-proxy:v1.37.2", "k").name == "kube-proxy_v1.37.2-k.tar"


def test_pause_image_is_what_kubeadm_of_the_release_names(monkeypatch, tmp_path):
    v = "v1.37.2"
    zdir = tmp_path / "k8s.io" / "kubernetes" / "@v"
    zdir.mkdir(parents=True)
    with zipfile.ZipFile(zdir / f"{v}.zip", "w") as z:
        z.writestr(
            f"k8s.io/kubernetes@{v}/cmd/kubeadm/app/constants/constants.go", '\tPauseVersion = "3.10.2"\n'
        )
    monkeypatch.setattr(images, "GO_MOD_DOWNLOAD", tmp_path)
    assert images.pause_image(v) == "registry.k8s.io/pause:3.10.2"
    assert images.pause_image(releases.DEFAULT_KUBE_VERSION) == images.PAUSE_IMAGE


def test_the_pause_constant_matches_the_default_releases_kubeadm():
    """PAUSE_IMAGE is the default release's: checked against its module when it is downloaded."""
    try:
        actual = images.pause_image(releases.DEFAULT_KUBE_VERSION)
    except UserError as e:
        pytest.skip(str(e))
    assert actual == images.PAUSE_IMAGE


def test_cache_keys_change_with_every_input_and_only_then():
    a = images.cache_key({"x": 1, "y": [1, 2]})
    assert a == images.cache_key({"y": [1, 2], "x": 1})
    assert len(a) == 16
    assert a != images.cache_key({"x": 2, "y": [1, 2]})
    assert a != images.cache_key({"x": 1, "y": [2, 1]})


def test_source_digest_follows_the_source(tmp_path):
    (tmp_path / "harness").mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\ndependencies = ['pyyaml>=6']\n")
    (tmp_path / "harness" / "a.py").write_text("x = 1\n")
    (tmp_path / "harness" / "__pycache__").mkdir()
    (tmp_path / "harness" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    d1 = images.source_digest(tmp_path)
    (tmp_path / "harness" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"other junk")
    assert images.source_digest(tmp_path) == d1  # bytecode is not source
    (tmp_path / "harness" / "a.py").write_text("x = 2\n")
    assert images.source_digest(tmp_path) != d1
    assert [p.name for p in images.source_files(tmp_path)] == ["a.py", "pyproject.toml"]
    assert images.harness_dependencies(tmp_path) == ["pyyaml>=6"]


def test_the_repository_installs_what_the_dockerfile_copies():
    dockerfile = (images.REPO / "Dockerfile").read_text()
    for top in images.HARNESS_SOURCES:
        assert top in dockerfile
    for pkg in ("iptables", "nftables", "ipset", "ipvsadm", "iproute2", "conntrack", "procps", "kmod"):
        assert pkg in dockerfile and pkg in debian.PACKAGES


def test_mmdebstrap_command():
    argv = debian.mmdebstrap_argv(Path("/x/rootfs"))
    assert argv[0] == "mmdebstrap" and argv[-3:] == ["bookworm", "/x/rootfs", debian.MIRROR]
    assert "--variant=minbase" in argv
    include = next(a for a in argv if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert {"iptables", "nftables", "ipset", "conntrack", "iproute2", "kmod"} <= set(include)


def test_unknown_release_or_missing_kube_proxy_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "CACHE_ROOT", tmp_path)
    with pytest.raises(UserError) as e:
        images.kube_proxy_binary("v1.99.0")
    assert "make kube KUBE_VERSION=v1.99.0" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError) as e:
        images.kube_proxy_binary("latest")
    assert "\n" not in str(e.value)


def test_the_cli_says_what_to_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(images, "CACHE_ROOT", tmp_path)
    monkeypatch.setattr(images, "GO_MOD_DOWNLOAD", tmp_path)
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path / "images")
    assert images.main(["build", "--kube-version", "v1.99.0", "--only", "kube-proxy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kpbench images: error: no kube-proxy built for v1.99.0") and "\n" not in err
    assert images.main(["build", "--only", "busybox"]) == 2
    assert "unknown image 'busybox'" in capsys.readouterr().err


def _layout(tmp_path: Path) -> tuple[Path, dict, list[str]]:
    """A hand-written OCI layout with one image (config + two layers) and one unrelated blob."""
    layout = tmp_path / "oci"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        import hashlib

        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return {"digest": f"sha256:{h}", "size": len(data)}

    config = {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(b'{"architecture":"amd64"}')}
    layers = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(d)} for d in (b"l1", b"l2")]
    blob(b"unrelated")
    manifest = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **blob(json.dumps({"schemaVersion": 2, "config": config, "layers": layers}).encode()),
    }
    index = {"schemaVersion": 2, "manifests": [{**manifest, "annotations": {oci.ANNOTATION_REF_NAME: "img"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return layout, manifest, [manifest["digest"], config["digest"], *(d["digest"] for d in layers)]


def test_archive_holds_one_image_named_for_containerd(tmp_path):
    layout, manifest, digests = _layout(tmp_path)
    assert oci.image_digests(layout, "img") == digests
    out = tmp_path / "img.tar"
    oci.write_archive(layout, "img", "registry.k8s.io/kube-proxy:v1.37.2", out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert sorted(names) == sorted(["oci-layout", "index.json", *(f"blobs/sha256/{d[7:]}" for d in digests)])
    [desc] = index["manifests"]
    assert desc["digest"] == manifest["digest"] and desc["size"] == manifest["size"]
    assert desc["annotations"] == {
        "io.containerd.image.name": "registry.k8s.io/kube-proxy:v1.37.2",
        "org.opencontainers.image.ref.name": "v1.37.2",
    }
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    assert index["mediaType"] == oci.INDEX_MEDIA_TYPE
    assert not (tmp_path / "img.tar.tmp").exists()
    with pytest.raises(KeyError):
        oci.manifest_descriptor(layout, "other")


def test_ensure_images_builds_only_what_is_missing_and_keeps_the_newest(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "IMAGES_DIR", tmp_path)
    monkeypatch.setattr(images.os, "geteuid", lambda: 0)
    name = "registry.k8s.io/kube-proxy:v1.37.2"
    built: list[str] = []
    for i, key in enumerate(["old1", "old2", "old3"]):
        old = images.archive_path(name, key)
        old.write_bytes(b"x")
        os.utime(old, (1000 + i, 1000 + i))

    def plan(version, kinds):
        path = images.archive_path(name, "new")
        return [(name, path, lambda: (built.append(name), path.write_bytes(b"image")))]

    monkeypatch.setattr(images, "plan", plan)
    [a] = images.ensure_images("v1.37.2")
    assert a.built and a.path.read_bytes() == b"image" and built == [name]
    # the new archive and the two newest before it stay (other work trees may still use them)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [
        "kube-proxy_v1.37.2-new.tar",
        "kube-proxy_v1.37.2-old2.tar",
        "kube-proxy_v1.37.2-old3.tar",
    ]
    [again] = images.ensure_images("v1.37.2")
    assert not again.built and again.path == a.path and built == [name]
