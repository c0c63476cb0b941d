"""Connecting to the cluster: kubeconfig loading and API reachability, with one-line errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.cluster import ClusterError
from harness.k8s.rest import REQUEST_TIMEOUT, Rest, is_status

__all__ = ["REQUEST_TIMEOUT", "Connection", "Rest", "api_error", "connect", "is_status", "read_kubeconfig"]


@dataclass
class Connection:
    api: Any  # kubernetes.client.ApiClient
    kubeconfig: str
    context: str
    server: str
    version: str = ""

    def where(self) -> str:
        return f"context {self.context!r} of {self.kubeconfig} (server {self.server})"


def default_kubeconfig() -> str:
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return first or str(Path.home() / ".kube" / "config")


def read_kubeconfig(path: str | None) -> tuple[str, dict]:
    """-> (path, parsed kubeconfig); a ClusterError saying what was found otherwise."""
    p = Path(path or default_kubeconfig()).expanduser()
    how = "--kubeconfig" if path else ("$KUBECONFIG" if os.environ.get("KUBECONFIG") else "the default path")
    if not p.exists():
        raise ClusterError(
            f"kubeconfig {p} (from {how}) does not exist: pass --kubeconfig FILE pointing at "
            "your test cluster's kubeconfig"
        )
    if p.is_dir():
        raise ClusterError(f"kubeconfig {p} is a directory: pass --kubeconfig FILE")
    try:
        text = p.read_text()
    except OSError as e:
        raise ClusterError(
            f"kubeconfig {p} cannot be read ({e.strerror}): fix its permissions or pass another --kubeconfig"
        ) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ClusterError(
            f"kubeconfig {p} is not valid YAML ({getattr(e, 'problem', e)}): pass a kubeconfig "
            "file such as the one `kubeadm init` writes to /etc/kubernetes/admin.conf"
        ) from None
    if not isinstance(doc, dict) or not doc.get("clusters") or not doc.get("contexts"):
        raise ClusterError(
            f"kubeconfig {p} has no clusters or contexts: it is not a usable kubeconfig; "
            "pass the one of your test cluster"
        )
    return str(p), doc


def resolve_context(doc: dict, context: str | None, path: str) -> tuple[str, str]:
    """-> (context name, server URL) after checking the context and its cluster exist."""
    names = [str(c["name"]) for c in doc.get("contexts") or [] if isinstance(c, dict) and c.get("name")]
    ctx = context or doc.get("current-context")
    if not ctx:
        raise ClusterError(
            f"kubeconfig {path} has no current-context: pass --context, one of {', '.join(names)}"
        )
    entry = next((c for c in doc["contexts"] if isinstance(c, dict) and c.get("name") == ctx), None)
    if entry is None:
        raise ClusterError(
            f"context {ctx!r} not found in {path}: pass --context, one of {', '.join(map(str, names))}"
        )
    cluster_name = (entry.get("context") or {}).get("cluster")
    cluster = next(
        (c for c in doc.get("clusters") or [] if isinstance(c, dict) and c.get("name") == cluster_name), None
    )
    if cluster is None:
        raise ClusterError(
            f"context {ctx!r} in {path} names cluster {cluster_name!r}, which the kubeconfig "
            "does not define: fix the kubeconfig"
        )
    server = (cluster.get("cluster") or {}).get("server") or ""
    if not server:
        raise ClusterError(f"cluster {cluster_name!r} in {path} has no server address: fix the kubeconfig")
    return ctx, server


def connect(kubeconfig: str | None, context: str | None, *, timeout: float = 5.0) -> Connection:
    """Load the kubeconfig and check the API server answers /version; one-line errors."""
    path, doc = read_kubeconfig(kubeconfig)
    ctx, server = resolve_context(doc, context, path)
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        api = config.new_client_from_config(config_file=path, context=ctx)
    except ConfigException as e:
        raise ClusterError(
            f"kubeconfig {path} context {ctx!r} cannot be used: {str(e).splitlines()[0]}; "
            "fix the kubeconfig's credentials"
        ) from None
    except (OSError, ValueError) as e:
        raise ClusterError(
            f"kubeconfig {path} context {ctx!r} cannot be used ({e}): fix the kubeconfig"
        ) from None
    conn = Connection(api=api, kubeconfig=path, context=ctx, server=server)
    conn.version = check_reachable(conn, timeout=timeout)["git_version"]
    return conn


def check_reachable(conn: Connection, timeout: float = 5.0) -> dict:
    from kubernetes.client.rest import ApiException

    try:
        v = Rest(conn.api).get("/version", timeout=(timeout, timeout))
    except ApiException as e:
        if e.status in (401, 403):
            raise ClusterError(
                f"the API server at {conn.server} refused the credentials of {conn.where()} "
                f"(HTTP {e.status}): refresh the kubeconfig's credentials"
            ) from None
        raise ClusterError(
            f"the API server at {conn.server} answered /version with HTTP {e.status}: "
            f"check {conn.where()} points at a Kubernetes API server"
        ) from None
    except Exception as e:  # noqa: BLE001 - urllib3 errors (refused, timeout, TLS, DNS) -> one-line ClusterError
        raise ClusterError(
            f"cannot reach the API server at {conn.server} ({_short(e)}) using {conn.where()}: "
            "check the cluster is up and the kubeconfig's server address, or pass another "
            "--context"
        ) from None
    if not isinstance(v, dict) or "gitVersion" not in v:
        raise ClusterError(
            f"{conn.server}/version did not answer like a Kubernetes API server: check {conn.where()}"
        )
    return {"git_version": v["gitVersion"], "platform": v.get("platform", "")}


def _short(e: BaseException) -> str:
    text = str(e)
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted"),
        ("Name or service not known", "host name not resolved"),
        ("No route to host", "no route to host"),
    ):
        if needle in text:
            return short
    return type(e).__name__ + (": " + text.splitlines()[0][:120] if text else "")


def api_error(e: Exception) -> str:
    """A short description of an ApiException (status, reason, message)."""
    status = getattr(e, "status", None)
    body = getattr(e, "body", None)
    msg = ""
    if body:
        try:
            import json

            msg = json.loads(body).get("message", "")
        except (ValueError, AttributeError, TypeError):
            msg = str(body)[:200]
    return f"HTTP {status}" + (f": {msg}" if msg else "") if status else _short(e)
