"""Does a node's kernel have what a proxy mode needs? Checked in a pod on every node, before the run
changes kube-proxy, so a mode the nodes cannot run is refused with one line instead of leaving
kube-proxy crash-looping on every node.

Run in the pod (the harness's image) as ``python3 -m harness.cluster.nodecheck FEATURE...``: prints
one JSON object ``{feature: [ok, why]}`` and writes it to the container's termination message too,
which the harness reads from the pod's status (no log access needed).

Only features with a read-only check are checked here (`CHECKS`): the run must not program the
node's dataplane before it changes kube-proxy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence

TERMINATION_LOG = "/dev/termination-log"


def _ipvs() -> tuple[bool, str]:
    """As kube-proxy's IPVS proxier finds IPVS: through its generic netlink family. Resolving the
    family makes the kernel load ip_vs where it is a module (the family's module alias)."""
    from pyroute2.netlink import genlmsg
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    sock = GenericNetlinkSocket()
    try:
        sock.bind("IPVS", genlmsg)
        return True, ""
    except NetlinkError as e:
        return False, f"no IPVS generic netlink family (errno {e.code}): kernel without CONFIG_IP_VS or ip_vs"
    finally:
        sock.close()


CHECKS: dict[str, Callable[[], tuple[bool, str]]] = {"ipvs": _ipvs}


def check(features: Sequence[str]) -> dict[str, list]:
    """{feature: [ok, why]} for every feature with a check here (others are skipped)."""
    out: dict[str, list] = {}
    for f in features:
        fn = CHECKS.get(f)
        if fn is None:
            continue
        try:
            ok, why = fn()
        except Exception as e:  # noqa: BLE001 - a check that cannot run says so as its reason
            ok, why = False, f"check failed: {type(e).__name__}: {e}"
        out[f] = [ok, why]
    return out


def main(argv: list[str] | None = None) -> int:
    res = json.dumps(check(argv if argv is not None else sys.argv[1:]))
    print(res, flush=True)
    try:
        with open(TERMINATION_LOG, "w") as fh:
            fh.write(res)
    except OSError:
        pass  # not in a container
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# -------------------------------------------------------------------- the harness's side (API calls)


def features_to_check(modes: Sequence[str]) -> dict[str, list[str]]:
    """{feature: [modes needing it]} for the scenario's modes, features with a check here only."""
    from harness.modes import mode as mode_spec

    out: dict[str, list[str]] = {}
    for m in modes:
        for f in mode_spec(m).kernel_features:
            if f in CHECKS:
                out.setdefault(f, []).append(m)
    return out


def check_nodes(
    rest, ns: str, run_id: str, image: str, nodes: Sequence, modes: Sequence[str], *, timeout_s: float = 180
) -> None:
    """Run the check pod on every node for what `modes` need; a ClusterError naming the mode, the
    nodes and why when a node lacks it. Nothing of kube-proxy is changed before or by this."""
    import time

    from harness.cluster import ClusterError, manifests
    from harness.lab.caps import FEATURE_TEXT

    need = features_to_check(modes)
    if not need:
        return
    pods = {}
    for n in nodes:
        body = manifests.node_check_pod(ns, run_id, n.name, image, sorted(need))
        path = f"/api/v1/namespaces/{ns}/pods"
        rest.delete(f"{path}/{body['metadata']['name']}")  # an earlier attempt's
        for _ in range(30):
            try:
                rest.create(path, body)
                break
            except Exception as e:
                if getattr(e, "status", None) != 409:
                    raise
                time.sleep(1)
        pods[n.name] = f"{path}/{body['metadata']['name']}"
    answers: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(answers) < len(pods):
        for node, path in pods.items():
            if node in answers:
                continue
            st = rest.get(path).get("status") or {}
            for c in st.get("containerStatuses") or []:
                term = (c.get("state") or {}).get("terminated")
                if term:
                    try:
                        answers[node] = json.loads(term.get("message") or "")
                    except ValueError:
                        raise ClusterError(
                            f"the node check on {node} failed (exit {term.get('exitCode')}, "
                            f"{term.get('reason', '')}): is image {image} the harness's? nothing was changed"
                        ) from None
        if len(answers) < len(pods):
            if time.monotonic() > deadline:
                late = ", ".join(n for n in pods if n not in answers)
                raise ClusterError(
                    f"the node kernel check did not finish on {late} within {timeout_s:.0f}s: is image "
                    f"{image} on the nodes? nothing was changed"
                )
            time.sleep(1)
    for path in pods.values():
        rest.delete(path)
    for feature, modes_needing in need.items():
        lacking = {n: a[feature][1] for n, a in answers.items() if feature in a and not a[feature][0]}
        if lacking:
            first = next(iter(lacking.values()))
            raise ClusterError(
                f"{', '.join(modes_needing)} mode needs {FEATURE_TEXT.get(feature, feature)} but the kernel of "
                f"{', '.join(sorted(lacking)[:4])}{' ...' if len(lacking) > 4 else ''} has none ({first}): "
                f"drop {', '.join(modes_needing)} from --modes (nothing was changed on kube-proxy)"
            )
