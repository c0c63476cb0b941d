"""Switching kube-proxy's mode on a kubeadm cluster, and putting it back.

One procedure for both directions (`KubeProxyController.apply`):

1. (iptables <-> ipvs only) take kube-proxy off every node by adding a nodeSelector that no node
   matches (`kpbench.io/kube-proxy-paused`), wait until its pods are gone, then run
   `kube-proxy --cleanup` as a privileged host-network Job per node with the DaemonSet's own image;
2. write config.conf (the ConfigMap is annotated with the run id while it is not the original);
3. remove the pause nodeSelector and set the rollout-restart annotation in one patch;
4. wait for the rollout, then until every node's /proxyMode (through the API server's node proxy)
   reports the new mode.

The restore file is rewritten before every change. Waiting is delegated to a `Waits` object so that
tests against an API server without kubelets can stand in for steps 1 and 4.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from harness.cluster import (
    ANN_MODIFIED,
    KP_KEY,
    KP_NAME,
    KP_NAMESPACE,
    LABEL_RUN,
    PAUSE_KEY,
    RESTART_ANN,
    ClusterError,
    kubeproxy_config as kpc,
    manifests,
    run_label_value,
)
from harness.cluster.kube import Rest, api_error, is_status
from harness.cluster.preflight import list_nodes, read_node_mode
from harness.cluster.restore import RestoreState, save

CM_PATH = f"/api/v1/namespaces/{KP_NAMESPACE}/configmaps/{KP_NAME}"
DS_PATH = f"/apis/apps/v1/namespaces/{KP_NAMESPACE}/daemonsets/{KP_NAME}"


class ClusterRunError(RuntimeError):
    """A step of a cluster run failed (timeout, rejected request); kube-proxy is then restored."""


class Waits:
    """Polling waits against the API server."""

    def __init__(
        self,
        rest: Rest,
        log: Callable[[str], None] = print,
        *,
        rollout_timeout_s: float = 600,
        cleanup_timeout_s: float = 300,
        poll_s: float = 2.0,
    ):
        self.rest, self.log = rest, log
        self.rollout_timeout_s, self.cleanup_timeout_s, self.poll_s = (
            rollout_timeout_s,
            cleanup_timeout_s,
            poll_s,
        )

    def _until(self, what: str, timeout: float, check: Callable[[], tuple[bool, str]]) -> None:
        deadline = time.monotonic() + timeout
        detail = ""
        while True:
            ok, detail = check()
            if ok:
                return
            if time.monotonic() > deadline:
                raise ClusterRunError(f"timed out after {timeout:.0f}s waiting for {what} ({detail})")
            time.sleep(self.poll_s)

    def pods_gone(self, selector: dict) -> None:
        sel = ",".join(f"{k}={v}" for k, v in selector.items())

        def check():
            items = self.rest.get(f"/api/v1/namespaces/{KP_NAMESPACE}/pods", query={"labelSelector": sel})[
                "items"
            ]
            # a NotReady node's pod cannot go (no kubelet to stop it): not waited for
            down = {n.name for n in list_nodes(self.rest) if not n.ready}
            items = [p for p in items if (p.get("spec") or {}).get("nodeName") not in down]
            return not items, f"{len(items)} kube-proxy pods left"

        self._until("kube-proxy pods to stop", self.rollout_timeout_s, check)

    def rollout(self) -> list[str]:
        """Until every kube-proxy pod runs the new template; -> the nodes left out because they are
        NotReady (a dead kubelet: its pod can neither be replaced nor become available, and the
        kube-proxy still running there keeps its previous mode until the kubelet is back)."""
        down: list[str] = []

        def check():
            nonlocal down
            ds = self.rest.get(DS_PATH)
            st, gen = ds.get("status") or {}, (ds.get("metadata") or {}).get("generation", 0)
            want = st.get("desiredNumberScheduled", 0)
            down = [n.name for n in list_nodes(self.rest) if not n.ready]
            ok = (
                st.get("observedGeneration", 0) >= gen
                # a NotReady node's old pod stays Terminating (no kubelet confirms it), so the
                # DaemonSet cannot put an updated one there either
                and st.get("updatedNumberScheduled", 0) >= want - len(down)
                and st.get("numberAvailable", 0) >= want - len(down)
                and (st.get("numberUnavailable") or 0) <= len(down)
            )
            return (
                ok,
                f"{st.get('updatedNumberScheduled', 0)}/{want} updated, {st.get('numberAvailable', 0)} available"
                + (f", NotReady: {', '.join(down)}" if down else ""),
            )

        self._until("the kube-proxy rollout", self.rollout_timeout_s, check)
        if down:
            self.log(f"kube-proxy rollout done on every Ready node; NotReady, not rolled: {', '.join(down)}")
        return down

    def jobs_done(self, namespace: str, names: list[str]) -> None:
        def check():
            pending, failed = [], []
            for n in names:
                st = self.rest.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{n}").get("status") or {}
                conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
                if conds.get("Failed") == "True":
                    failed.append(n)
                elif not st.get("succeeded"):
                    pending.append(n)
            if failed:
                raise ClusterRunError(
                    f"kube-proxy --cleanup failed on {', '.join(failed)} (see the Jobs' pod logs "
                    f"in namespace {namespace})"
                )
            return not pending, f"{len(pending)} of {len(names)} cleanup Jobs running"

        self._until("kube-proxy --cleanup on every node", self.cleanup_timeout_s, check)

    def node_modes(self, nodes: list[str], mode: str, port: int, *, verify: bool = True) -> dict[str, str]:
        """Until every node's /proxyMode says `mode`; -> node -> "mode" or "unverified: why".

        When no node has answered at all after the rollout plus 60 s (the API server cannot reach
        the metrics port), the mode is reported unverified instead of failing the run.
        """
        if not verify:
            return {n: "unverified: metrics port not reachable through the node proxy" for n in nodes}
        start = time.monotonic()
        seen: dict[str, str] = {}

        def check():
            errs = {}
            for n in nodes:
                if seen.get(n) == mode:
                    continue
                m, err = read_node_mode(self.rest, n, port)
                if m:
                    seen[n] = m
                else:
                    errs[n] = err
            done = all(seen.get(n) == mode for n in nodes)
            if not done and not seen and time.monotonic() - start > 60:
                return True, "unreachable"
            wrong = {n: m for n, m in seen.items() if m != mode}
            return done, f"{sum(seen.get(n) == mode for n in nodes)}/{len(nodes)} report {mode}; " + (
                f"other mode on {', '.join(wrong)}; " if wrong else ""
            ) + (f"no answer from {', '.join(list(errs)[:3])} ({next(iter(errs.values()))})" if errs else "")

        self._until(f"every node to report /proxyMode {mode}", self.rollout_timeout_s, check)
        return {
            n: (seen[n] if seen.get(n) == mode else f"unverified: {n} never answered /proxyMode")
            for n in nodes
        }


class KubeProxyController:
    def __init__(
        self,
        rest: Rest,
        state: RestoreState,
        state_path,
        *,
        waits: Waits | None = None,
        log: Callable[[str], None] = print,
        sync: kpc.SyncSettings = kpc.SyncSettings(),
        namespace_wait_s: float = 120,
    ):
        self.rest, self.state, self.state_path, self.log, self.sync = rest, state, state_path, log, sync
        self.namespace_wait_s = namespace_wait_s  # how long the final delete waits for namespaces to go
        self.waits = waits or Waits(rest, log)
        self.last_node_modes: dict[str, str] = {}

    # -- reading ---------------------------------------------------------------------------------
    def read_cm(self) -> dict | None:
        return self.rest.get_or_none(CM_PATH)

    def read_ds(self) -> dict | None:
        return self.rest.get_or_none(DS_PATH)

    def _save(self, event: str, **kw) -> None:
        self.state.note(event, **kw)
        save(self.state, self.state_path)

    # -- steps -----------------------------------------------------------------------------------
    def write_config(self, text: str, *, original: bool) -> None:
        """PUT the ConfigMap: `text` as config.conf; the original's labels/annotations when restoring,
        else annotated with the run id. Other keys (kubeconfig.conf) are kept as the original had them."""
        cm = self.read_cm()
        if cm is None:
            raise ClusterRunError(f"ConfigMap {KP_NAMESPACE}/{KP_NAME} disappeared during the run")
        orig = self.state.configmap
        meta = cm.setdefault("metadata", {})
        if original:
            cm["data"] = dict(orig["data"])
            meta["annotations"] = dict(orig.get("annotations") or {}) or None
            meta["labels"] = dict(orig.get("labels") or {}) or None
        else:
            cm["data"] = {**dict(orig["data"]), KP_KEY: text}
            meta["annotations"] = {**(meta.get("annotations") or {}), ANN_MODIFIED: self.state.run_id}
        meta.pop("managedFields", None)
        self.rest.put(CM_PATH, cm)

    def pause(self) -> None:
        self._save("pausing kube-proxy")
        self.rest.merge_patch(
            DS_PATH, {"spec": {"template": {"spec": {"nodeSelector": {PAUSE_KEY: "true"}}}}}
        )

    def unpause_and_restart(self) -> None:
        self._save("restarting kube-proxy")
        self.rest.merge_patch(
            DS_PATH,
            {
                "spec": {
                    "template": {
                        "metadata": {
                            "annotations": {RESTART_ANN: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                        },
                        "spec": {"nodeSelector": {PAUSE_KEY: None}},
                    }
                }
            },
        )

    def ds_selector(self) -> dict:
        ds = self.read_ds() or {}
        return ((ds.get("spec") or {}).get("selector") or {}).get("matchLabels") or {"k8s-app": KP_NAME}

    def ensure_namespace(self) -> None:
        ns = self.state.namespace
        for _ in range(150):
            cur = self.rest.get_or_none(f"/api/v1/namespaces/{ns}")
            if cur is None:
                try:
                    self.rest.create("/api/v1/namespaces", manifests.namespace(ns, self.state.run_id))
                except Exception as e:
                    if not is_status(e, 409):
                        raise
                continue
            if (cur.get("status") or {}).get("phase") != "Terminating":
                return
            time.sleep(2)
        raise ClusterRunError(f"namespace {ns} stayed Terminating; cannot create the cleanup Jobs")

    def run_cleanup(self, nodes: list[str]) -> None:
        ds = self.state.daemonset
        self.ensure_namespace()
        names = []
        for node in nodes:
            job = manifests.cleanup_job(
                self.state.namespace, self.state.run_id, node, ds["image"], ds["binary"]
            )
            name = job["metadata"]["name"]
            # a Job left by an earlier attempt would report its old result: replace it
            self.rest.delete(f"/apis/batch/v1/namespaces/{self.state.namespace}/jobs/{name}")
            for _ in range(30):
                try:
                    self.rest.create(f"/apis/batch/v1/namespaces/{self.state.namespace}/jobs", job)
                    break
                except Exception as e:
                    if not is_status(e, 409):
                        raise
                    time.sleep(1)
            names.append(name)
        self.waits.jobs_done(self.state.namespace, names)

    def apply(self, text: str, mode: str, *, cleanup: bool, original: bool = False) -> dict[str, str]:
        """Run `mode` with config.conf = `text` on every node (the procedure in the module docstring)."""
        doc = kpc.parse(text)
        self.state.add_running(mode)
        self.state.status = "restoring" if original else "changed"
        if cleanup:
            self.pause()
            self.waits.pods_gone(self.ds_selector())
            nodes = [n.name for n in list_nodes(self.rest) if n.ready]  # a Job cannot run without a kubelet
            self._save("cleanup", nodes=len(nodes))
            self.run_cleanup(nodes)
        self._save("writing config.conf", mode=mode, original=original)
        self.write_config(text, original=original)
        self.unpause_and_restart()
        down = self.waits.rollout() or []
        nodes = [n.name for n in list_nodes(self.rest) if n.name not in down]
        verify = not kpc.metrics_on_loopback(doc)
        self.last_node_modes = self.waits.node_modes(nodes, mode, kpc.metrics_port(doc), verify=verify)
        self.last_node_modes.update(
            {
                n: "not rolled: node NotReady (its kube-proxy keeps the previous mode until the kubelet is back)"
                for n in down
            }
        )
        if not original:
            self.state.modes_possibly_running = [mode]
        self._save("mode running", mode=mode, nodes=self.last_node_modes)
        return self.last_node_modes

    def switch(self, current_mode: str, mode: str, scheduler: str | None = None) -> dict[str, str]:
        """From the mode running now to `mode`, with the harness's sync settings."""
        base = kpc.parse(self.state.original_text)
        text = kpc.dump(
            kpc.with_mode(base, mode, kpc.SyncSettings(**{**self.sync.__dict__, "ipvs_scheduler": scheduler}))
        )
        cleanup = kpc.needs_cleanup(current_mode, mode) or (
            self.state.cleanup_always and current_mode != mode
        )
        self.log(
            f"kube-proxy: {current_mode} -> {mode}"
            + (" (with kube-proxy --cleanup on every node)" if cleanup else "")
        )
        return self.apply(text, mode, cleanup=cleanup)

    def delete_run_objects(self, wait_s: float | None = None) -> None:
        """Delete every object and namespace labelled with the run; wait up to `wait_s` for the
        namespaces to go (not fatal: a namespace controller finishes it on its own)."""
        wait_s = self.namespace_wait_s if wait_s is None else wait_s
        sel = f"{LABEL_RUN}={run_label_value(self.state.run_id)}"
        try:
            items = self.rest.get("/api/v1/namespaces", query={"labelSelector": sel})["items"]
        except Exception as e:  # noqa: BLE001 - ApiException or transport error -> one-line ClusterRunError
            raise ClusterRunError(f"listing namespaces labelled {sel} failed: {api_error(e)}") from None
        from harness.cluster.objects import ObjectStore

        for it in items:
            ns = it["metadata"]["name"]
            # objects first, by label (one deletecollection per kind): kube-proxy drops their rules
            # at once, and nothing depends on the namespace controller (which a bare API server
            # does not run); the wait is bounded and says how far it got
            store = ObjectStore(self.rest, ns, self.state.run_id)
            store.delete_by_label()
            if wait_s > 0:
                store.wait_deleted(self.log, stall_s=max(wait_s, 30))
            self.rest.delete(f"/api/v1/namespaces/{ns}")
        deadline = time.monotonic() + wait_s
        while items:
            items = self.rest.get("/api/v1/namespaces", query={"labelSelector": sel})["items"]
            if not items or time.monotonic() >= deadline:
                break
            time.sleep(1)
        if items:
            self.log(
                f"namespaces {', '.join(i['metadata']['name'] for i in items)} are still terminating "
                f"(label {sel}); they go away on their own"
            )


def check_mode_supported(mode: str) -> None:
    if mode not in kpc.MODES:
        raise ClusterError(f"mode {mode!r} is not a kube-proxy mode")
