"""The restore file (RUN/cluster-restore.json) and putting kube-proxy back as it was found.

The file is written before the run changes anything on the cluster and rewritten (atomically)
before each further change, so that a crash at any moment leaves enough on disk for
`kpbench restore RUN_DIR` to finish. The restore itself looks at the cluster as it is now (not at
what the file says happened last): ConfigMap contents, the DaemonSet's pause nodeSelector, and the
set of modes that may be running on some node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.cluster import (
    ANN_MODIFIED,
    KP_KEY,
    KP_NAME,
    KP_NAMESPACE,
    LABEL_RUN,
    PAUSE_KEY,
    RESTORE_FILE,
    ClusterError,
    kubeproxy_config as kpc,
    run_label_value,
)
from harness.jsonfile import write_json

VERSION = 1


@dataclass
class RestoreState:
    run_id: str
    namespace: str
    kubeconfig: str
    context: str
    server: str
    original_mode: str  # effective mode found ("" in config.conf -> "iptables")
    configmap: dict  # {"data": {...}, "labels": {...}, "annotations": {...}, "resourceVersion": ...}
    daemonset: dict  # {"nodeSelector": {...}, "image": ..., "binary": ...}
    node_modes: dict = field(default_factory=dict)  # node -> /proxyMode found (when readable)
    modes_possibly_running: list = field(default_factory=list)
    cleanup_always: bool = False  # cluster option cleanup=always: --cleanup Jobs at every switch
    status: str = "saved"  # saved | changed | restoring | restored | restore-failed
    saved_at: str = ""
    history: list = field(default_factory=list)
    version: int = VERSION

    @property
    def original_text(self) -> str:
        return self.configmap["data"][KP_KEY]

    def note(self, event: str, **kw: Any) -> None:
        self.history.append({"t": _now(), "event": event, **kw})

    def add_running(self, mode: str) -> None:
        if mode not in self.modes_possibly_running:
            self.modes_possibly_running.append(mode)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RestoreState:
        if not isinstance(d, dict) or d.get("version") != VERSION:
            raise ClusterError(
                f"restore file version {d.get('version') if isinstance(d, dict) else '?'} is not "
                f"{VERSION}: restore it by hand from its configmap.data"
            )
        names = set(cls.__dataclass_fields__)
        missing = [
            k for k in ("run_id", "namespace", "original_mode", "configmap", "daemonset") if k not in d
        ]
        if missing or KP_KEY not in (d.get("configmap") or {}).get("data", {}):
            raise ClusterError(
                f"restore file lacks {', '.join(missing) or 'configmap.data.' + KP_KEY}: "
                "it cannot be used to restore kube-proxy"
            )
        return cls(**{k: v for k, v in d.items() if k in names})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def restore_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / RESTORE_FILE


def save(state: RestoreState, path: Path) -> None:
    """Atomic write (tmp + fsync + rename): the file is whole at every moment."""
    path = Path(path)
    write_json(path, state.to_dict(), default=None, fsync=True)


def load(path: Path | str) -> RestoreState:
    path = Path(path)
    if path.is_dir():
        path = restore_path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(
            f"{path} does not exist: this run folder is not from a cluster run that "
            "changed kube-proxy (nothing to restore)"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ClusterError(f"{path} cannot be read ({e}): restore kube-proxy's ConfigMap by hand") from None
    return RestoreState.from_dict(d)


def state_from_cluster(run_id: str, namespace: str, conn, cm: dict, kp, node_modes: dict) -> RestoreState:
    """The restore state for what the cluster looks like now (before the run changes anything)."""
    meta = cm.get("metadata") or {}
    return RestoreState(
        run_id=run_id,
        namespace=namespace,
        kubeconfig=conn.kubeconfig,
        context=conn.context,
        server=conn.server,
        original_mode=kp.mode,
        configmap={
            "namespace": KP_NAMESPACE,
            "name": KP_NAME,
            "data": dict(cm.get("data") or {}),
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        daemonset={
            "namespace": KP_NAMESPACE,
            "name": KP_NAME,
            "nodeSelector": dict(kp.ds_node_selector),
            "image": kp.image,
            "binary": kp.binary,
        },
        node_modes=dict(node_modes),
        modes_possibly_running=[kp.mode],
        saved_at=_now(),
    )


def save_initial(path: Path, state: RestoreState) -> RestoreState:
    """Save `state` unless the run folder already holds an unfinished one (a resumed run): then the
    earlier original is kept (the cluster now shows the run's own changes, not the original)."""
    path = Path(path)
    if path.exists():
        old = load(path)
        if old.status != "restored":
            old.note("resumed")
            save(old, path)
            return old
        state.history = old.history + [{"t": _now(), "event": "new session after restore"}]
    state.note("saved")
    save(state, path)
    return state


def cluster_diff(state: RestoreState, cm: dict | None, ds: dict | None) -> dict:
    """What differs from the original now: {"configmap": bool, "paused": bool, "dirty_modes": [...]}."""
    data = (cm or {}).get("data") or {}
    ann = ((cm or {}).get("metadata") or {}).get("annotations") or {}
    ns = (((ds or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("nodeSelector") or {}
    return {
        "configmap": data != state.configmap["data"] or ANN_MODIFIED in ann,
        "paused": PAUSE_KEY in ns,
        "dirty_modes": [m for m in state.modes_possibly_running if m != state.original_mode],
    }


def restore_cluster(
    ctl, state: RestoreState, path: Path, log: Callable[[str], None] = print, delete_objects: bool = True
) -> None:
    """Put kube-proxy back as found, then delete everything labelled with the run.

    `ctl` is a switch.KubeProxyController. Raises (after recording "restore-failed") when kube-proxy
    could not be put back; the caller prints how to retry.
    """
    state.status = "restoring"
    state.note("restore started")
    save(state, path)
    try:
        cm, ds = ctl.read_cm(), ctl.read_ds()
        diff = cluster_diff(state, cm, ds)
        if diff["configmap"] or diff["paused"] or diff["dirty_modes"]:
            log(
                f"restore: putting kube-proxy back to {state.original_mode} (ConfigMap changed: {diff['configmap']}, "
                f"paused: {diff['paused']}, modes that may run: {', '.join(state.modes_possibly_running)})"
            )
            cleanup = any(kpc.needs_cleanup(m, state.original_mode) for m in diff["dirty_modes"]) or (
                state.cleanup_always and bool(diff["dirty_modes"])
            )
            ctl.apply(state.original_text, state.original_mode, cleanup=cleanup, original=True)
            state.modes_possibly_running = [state.original_mode]
            state.note("kube-proxy restored", mode=state.original_mode)
            save(state, path)
        else:
            log("restore: kube-proxy was not changed")
        if delete_objects:
            ctl.delete_run_objects()
            state.note("run objects deleted", label=f"{LABEL_RUN}={run_label_value(state.run_id)}")
    except BaseException as e:
        state.status = "restore-failed"
        state.note("restore failed", error=f"{type(e).__name__}: {e}"[:500])
        save(state, path)
        raise
    state.status = "restored"
    state.note("restored")
    save(state, path)
