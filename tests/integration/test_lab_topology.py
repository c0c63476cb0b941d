"""The two-node lab on the host kernel: pods answer, down() removes all, the root namespace is
untouched, and cleanup_leftovers removes what a crashed run leaked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.lab import netns, registry
from harness.lab.backends import expected_body, http_get
from harness.lab.cleanup import cleanup_leftovers
from harness.lab.topology import Lab
from harness.model import ModelSpec, build_model

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]


def _root_state() -> dict[str, str]:
    def out(argv: list[str]) -> str:
        p = subprocess.run(argv, capture_output=True, text=True)
        return p.stdout + p.stderr

    def strip(s: str) -> str:  # counters, timestamps and lifetimes change by themselves
        s = re.sub(r"^#.*$", "", s, flags=re.M)
        s = re.sub(r"\[\d+:\d+\]", "[]", s)
        s = re.sub(r"counter packets \d+ bytes \d+", "counter", s)
        return re.sub(r"valid_lft \S+ preferred_lft \S+", "", s)

    return {
        name: strip(out(argv))
        for name, argv in {
            "iptables-save": ["iptables-save"],
            "iptables-legacy-save": ["iptables-legacy-save"],
            "nft": ["nft", "list", "ruleset"],
            "addr": ["ip", "addr"],
            "route": ["ip", "route", "show", "table", "all"],
            "link": ["ip", "-o", "link"],
            "sysctl-fwd": ["cat", "/proc/sys/net/ipv4/ip_forward"],
        }.items()
    }


def _nginx_pids(tag: str) -> list[int]:
    """nginx masters started for lab `tag` and every process in their process groups (workers)."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read()
                procs[int(d)] = (cmd, os.getpgid(int(d)))
            except OSError:
                continue
    groups = {pg for cmd, pg in procs.values() if b"nginx" in cmd and f"-{tag}-".encode() in cmd}
    return sorted(pid for pid, (cmd, pg) in procs.items() if pg in groups and b"nginx" in cmd)


@pytest.fixture
def model():
    return build_model(ModelSpec(n_services=3, endpoints=6, pods_per_node=2))


def test_lab_pods_answer_everywhere_and_down_removes_all(model):
    before = _root_state()
    tag = f"tt{os.getpid()}"
    lab = Lab(model, tag)
    t0 = time.monotonic()
    with lab:
        up_s = time.monotonic() - t0
        assert set(netns.list_namespaces(f"kpb-{tag}-")) == set(lab.namespaces)
        assert lab.node_ip("a") == "10.255.0.1" and lab.node_ip("b") == "10.255.0.2"
        assert lab.client_ns == f"kpb-{tag}-client"
        for src in (lab.client_ns, lab.node_ns("a"), lab.node_ns("b")):
            for pod in model.pods:
                assert len(pod.ports) == 2
                for port in pod.ports:
                    status, body = http_get(src, pod.ip, port)
                    assert (status, body) == (200, expected_body(pod, pod.ip, port)), (src, pod, port)
        # node settings kube-proxy needs, inside the node namespaces
        fwd = netns.run(lab.node_ns("a"), ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
        assert fwd == "1"
        routes = netns.run(lab.node_ns("a"), ["ip", "route"]).stdout
        assert "default via 10.255.0.2" in routes and "10.244.1.0/24 via 10.255.0.2" in routes
        assert len(_nginx_pids(tag)) == 2 * len(model.pods)  # master + 1 worker each
    print(f"host lab: up {up_s:.2f}s ({lab.timings}), down {lab.timings['down_s']:.2f}s")
    assert netns.list_namespaces(f"kpb-{tag}-") == []
    assert _nginx_pids(tag) == []
    assert not [p for p, r in registry.records() if r.get("owner_pid") == os.getpid()]
    assert _root_state() == before


LEAK = textwrap.dedent("""
    import os, sys
    from harness.model import build_model, ModelSpec
    from harness.lab.topology import Lab
    import time
    with Lab(build_model(ModelSpec(n_services=1)), sys.argv[1]):
        print("up", flush=True)
        if sys.argv[2] == "crash":
            os._exit(1)      # no cleanup at all: as after kill -9
        time.sleep(60)       # until SIGINT: KeyboardInterrupt leaves the with block
""")


def _start(tag: str, how: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", LEAK, tag, how],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    return p


def test_cleanup_removes_what_a_crashed_run_leaked():
    tag = f"leak{os.getpid()}"
    p = _start(tag, "crash")
    p.wait(10)
    assert len(netns.list_namespaces(f"kpb-{tag}-")) == 7
    assert _nginx_pids(tag)
    lines: list[str] = []
    cleanup_leftovers(lines.append)
    assert netns.list_namespaces(f"kpb-{tag}-") == []
    assert _nginx_pids(tag) == []
    assert any(f"kpb-{tag}-node-a" in line for line in lines), lines
    assert any("nginx" in line for line in lines), lines
    again: list[str] = []
    cleanup_leftovers(again.append)  # idempotent
    assert not [line for line in again if tag in line]


def test_cleanup_leaves_a_live_lab_alone_and_ctrl_c_tears_down():
    tag = f"live{os.getpid()}"
    p = _start(tag, "wait")
    try:
        lines: list[str] = []
        cleanup_leftovers(lines.append)
        assert not [line for line in lines if tag in line]
        assert len(netns.list_namespaces(f"kpb-{tag}-")) == 7
        p.send_signal(signal.SIGINT)  # Ctrl-C: the with block tears the lab down by itself
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    assert netns.list_namespaces(f"kpb-{tag}-") == []
    assert _nginx_pids(tag) == []
