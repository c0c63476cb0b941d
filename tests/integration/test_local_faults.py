"""Faults of the local target against the real components (etcd, kube-apiserver, kube-proxy on the
host kernel; no mocks):

* the apiserver does not come up: the run stops with a clear one-paragraph error naming
  kube-apiserver and quoting its log tail, no traceback, nothing left behind;
* kube-proxy crashes (SIGKILL to node-a's kube-proxy while the first point is measured): the
  point is recorded as failed with kube-proxy's log tail, the run goes on with the next points
  (kube-proxy restarted), nothing left behind.

Needs root and the binaries from `make kube` (or KUBE_BIN_DIR); skipped with the reason otherwise.
About 40 seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.lab import netns, uml
from harness.targets import localcluster as lc
from tests.integration.test_local_target import _our_processes
from tests.support.skips import kube_skip_reason

pytestmark = [pytest.mark.kube, pytest.mark.kernel, pytest.mark.slow]


_reason = kube_skip_reason(("ip", "nginx", "nft", "iptables-legacy-save"), "network namespaces, kube-proxy")
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"{netns.NETNS_DIR}/{name}").st_ino
    except OSError:
        return None


def _kube_proxy_pid(tag: str, node: str) -> int | None:
    """The running kube-proxy of the run's `node` (not a `--cleanup`), checked to be inside the
    node's namespace kpb-<tag>-<node>."""
    ino = _netns_inode(netns.ns_name(tag, node))
    if ino is None:
        return None
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        cmd = _cmdline(d)
        if (
            "kube-proxy" not in cmd
            or "--config=" not in cmd
            or f"kpb-{tag}-" not in cmd
            or f"kube-proxy-{node}.json" not in cmd
        ):
            continue
        try:
            if os.stat(f"/proc/{d}/ns/net").st_ino != ino:
                continue
        except OSError:
            continue
        return int(d)
    return None


def _tag(run_dir: Path) -> str:
    return json.loads((run_dir / ".jobs" / "local.json").read_text())["tag"]


def _assert_nothing_left(tag: str, before: set[str]) -> None:
    # other work on this machine may make kpb-* namespaces: only those of this run's tag count
    assert not [n for n in netns.list_namespaces() if n.startswith(f"kpb-{tag}-")]
    assert not [n for n in set(netns.list_namespaces()) - before if n.startswith(f"kpb-{tag}-")]
    assert not _our_processes(tag)
    assert not list(Path("/tmp").glob(f"kpb-{tag}-*"))  # the cluster's temp dir (keys, tokens)


def _run_cmd(scenario: Path, out: Path, *sets: str) -> list[str]:
    argv = [sys.executable, "-m", "harness", "run", str(scenario), "--out", str(out), "--no-report"]
    for s in sets:
        argv += ["--set", s]
    return argv


def _write_scenario(path: Path, counts: list[int], mode: str = "iptables", kernel: str = "host") -> Path:
    """One mode, small counts, few samples, short load: a point is a few seconds."""
    sc = {
        "name": "local-faults",
        "target": "local",
        "modes": [mode],
        "services": {"counts": counts},
        "model": {"endpoints": 2},
        "repetitions": 1,
        "kernel": kernel,
        "seed": 1,
        "validate": False,
        "measure": {
            "connect": {"samples": 100, "edge_samples": 20, "direct_samples": 20, "timeout_ms": 300},
            "sync": {"samples": 3, "timeout_s": 2},
            "load": {"users": 2, "rate": 50, "duration_s": 2, "keepalive": [False]},
        },
        "local": {"sync_timeout_s": 60, "ready_timeout_s": 60, "fidelity": False},
    }
    path.write_text(yaml.safe_dump(sc, sort_keys=False))
    return path


# -- the apiserver does not come up ------------------------------------------------------------


@pytest.mark.parametrize(
    "arg,cause",
    [
        ("--no-such-flag", "unknown flag: --no-such-flag"),  # cobra refuses it before logging anything
        (
            "--tls-cert-file=/nonexistent",
            "open /nonexistent: no such file or directory",
        ),  # after the flag dump
    ],
)
def test_apiserver_that_does_not_start_is_reported_with_its_log_tail(tmp_path, arg, cause):
    scen = _write_scenario(tmp_path / "scenario.yaml", [30])
    out = tmp_path / "out"
    before = set(netns.list_namespaces())
    t0 = time.monotonic()
    p = subprocess.run(
        _run_cmd(scen, out, f'local.apiserver_args=["{arg}"]'),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=lc.REPO,
    )
    took = time.monotonic() - t0
    # the worker's fatal error comes back as a LabError: cli.main prints it, exit status 2
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-3000:]
    # one error: names the component, quotes its log tail (the line that says why)
    err = p.stderr[p.stderr.index("kpbench: error:") :] if "kpbench: error:" in p.stderr else ""
    assert err, p.stderr[-3000:]
    assert "kube-apiserver exited" in err.splitlines()[0], err
    assert cause in err, err
    assert len(err.splitlines()) <= 45, err  # the message plus at most the 40-line log tail
    assert took < 120, f"the failure took {took:.0f} s to report"

    (run_dir,) = [x for x in out.iterdir() if x.is_dir()]
    tag = _tag(run_dir)
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "incomplete"
    assert {r["status"] for r in meta["points"]} == {"pending"}  # nothing measured, nothing marked
    assert cause in (run_dir / "local-logs" / "kube-apiserver.log").read_text()  # the whole log is kept
    _assert_nothing_left(tag, before)


@pytest.mark.skipif(not uml.available()[0], reason="no UML guest available (install user-mode-linux)")
def test_apiserver_that_does_not_start_for_the_guest_is_reported(tmp_path):
    """IPVS: the control plane is started by the runner for a UML guest; its failure is the same
    one error, no guest is booted, and its work dir (keys, tokens) in the run folder is gone."""
    scen = _write_scenario(tmp_path / "scenario.yaml", [30], mode="ipvs", kernel="auto")
    out = tmp_path / "out"
    before = set(netns.list_namespaces())
    p = subprocess.run(
        _run_cmd(scen, out, 'local.apiserver_args=["--no-such-flag"]'),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=lc.REPO,
    )
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr[-3000:]
    err = p.stderr[p.stderr.index("kpbench: error:") :] if "kpbench: error:" in p.stderr else ""
    assert err.splitlines()[0].endswith("kube-apiserver exited with 1:"), err
    assert "unknown flag: --no-such-flag" in err and len(err.splitlines()) <= 10, err
    (run_dir,) = [x for x in out.iterdir() if x.is_dir()]
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["status"] == "incomplete" and {r["status"] for r in meta["points"]} == {"pending"}
    assert not list((run_dir / ".jobs").glob("kpb-*")) and not list((run_dir / ".jobs").glob("*.json"))
    assert "unknown flag" in (run_dir / "local-logs" / "kube-apiserver.log").read_text()
    assert not [n for n in set(netns.list_namespaces()) - before if n.startswith("kpb-")]


# -- kube-proxy crashes while a point is measured -----------------------------------------------


def _phases(run_log: Path) -> list[dict]:
    """The worker's events as the runner logged them (one JSON object per run.log line)."""
    evs = []
    try:
        lines = run_log.read_text(errors="replace").splitlines()
    except OSError:
        return evs
    for line in lines:
        i = line.find(" INFO {")
        if i < 0:
            continue
        try:
            evs.append(json.loads(line[i + 6 :]))
        except json.JSONDecodeError:
            pass
    return evs


def test_kube_proxy_crash_fails_the_point_and_the_run_goes_on(tmp_path):
    counts = [30, 60, 90]
    scen = _write_scenario(tmp_path / "scenario.yaml", counts)
    out = tmp_path / "out"
    first, *later = [f"local-iptables-{n}-r1" for n in counts]
    before = set(netns.list_namespaces())
    t0 = time.monotonic()
    # output to files, not pipes: nothing is read until the run ends, so a full pipe cannot stall it
    out_f, err_f = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_f.open("w") as o, err_f.open("w") as e:
        proc = subprocess.Popen(_run_cmd(scen, out), stdout=o, stderr=e, cwd=lc.REPO, start_new_session=True)
    killed: dict = {}
    try:
        deadline = time.monotonic() + 150
        run_dir = None
        while time.monotonic() < deadline and proc.poll() is None:
            if run_dir is None:
                dirs = [x for x in out.iterdir() if x.is_dir()] if out.exists() else []
                run_dir = dirs[0] if dirs else None
            if run_dir is not None and (run_dir / ".jobs" / "local.json").exists():
                evs = _phases(run_dir / "run.log")
                done = [e for e in evs if e.get("event") == "point_done" and e.get("point_id") == first]
                assert not done, f"{first} finished before kube-proxy could be killed: {done[0]}"
                # after the first point's sync_full: kube-proxy is up and has programmed every Service
                if any(
                    e.get("event") == "phase" and e.get("point_id") == first and e.get("phase") == "connect"
                    for e in evs
                ):
                    tag = _tag(run_dir)
                    pid = _kube_proxy_pid(tag, "node-a")
                    assert pid is not None, f"no kube-proxy of node-a (tag {tag}) found while {first} runs"
                    os.kill(pid, signal.SIGKILL)
                    killed = {"pid": pid, "tag": tag, "at": time.monotonic() - t0}
                    break
            time.sleep(0.05)
        assert killed, (
            f"the first point's connect phase was not reached in time (run exit {proc.poll()}): "
            + err_f.read_text()[-3000:]
        )
        proc.wait(timeout=max(10.0, 230 - (time.monotonic() - t0)))
    finally:
        if proc.poll() is None:  # only our own run, by its process group
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    took = time.monotonic() - t0
    stdout, stderr = out_f.read_text(), err_f.read_text()

    # the run goes on to its end: every point has a status, so the run is "complete"; the failed
    # point is said on the last line and makes the exit status 1
    assert proc.returncode == 1, stdout[-2000:] + stderr[-3000:]
    assert "run complete" in stdout and f"1 of 3 points failed: {first}" in stdout, stdout[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    pts = {f.stem: json.loads(f.read_text()) for f in (run_dir / "points").glob("*.json")}
    assert set(pts) == {first, *later}
    bad = pts[first]
    assert bad["status"] == "failed", bad
    assert "kube-proxy" in bad["error"] and "node-a" in bad["error"], bad["error"]
    assert "KubeProxyCrashed" in bad["error"] and "-9" in bad["error"], bad["error"]  # our SIGKILL
    assert bad["kube_proxy_log_tail"].strip(), bad  # kube-proxy's own log lines
    assert "kube-proxy" in bad["kube_proxy_log_tail"] or "proxier" in bad["kube_proxy_log_tail"].lower(), bad
    for pid in later:
        st = pts[pid]
        assert st["status"] == "ok", (pid, st.get("error"))
        assert st["kube_proxy"]["proxy_mode"] == "iptables"
        assert st["kube_proxy"]["starts"] >= 2  # restarted after the crash
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert {r["point_id"]: r["status"] for r in meta["points"]} == {
        first: "failed",
        **{p: "ok" for p in later},
    }
    assert meta["status"] == "complete"
    assert f"failed {first}" in " ".join(stderr.split()), stderr[-3000:]  # the progress line says so
    _assert_nothing_left(killed["tag"], before)
    print(f"kube-proxy pid {killed['pid']} killed {killed['at']:.1f} s into the run; run took {took:.1f} s")
