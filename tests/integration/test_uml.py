"""Boot the UML guest: a tiny command, IPVS inside, the lab topology inside, nothing left behind."""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest

from harness.lab import registry, uml
from harness.lab.netns import LabError

pytestmark = [pytest.mark.uml, pytest.mark.kernel]

if os.geteuid() != 0 or not uml.available()[0]:
    pytest.skip(f"needs root and a UML guest ({uml.available()[1]})", allow_module_level=True)

PY = uml.default_command("x")[0]


def _ours_gone(g: uml.Guest) -> None:
    assert g.proc is not None
    pgid = g.proc.pid
    from harness.lab.cleanup import _group_members

    for _ in range(100):
        if not _group_members(pgid):  # zombies (reparented to init) do not count
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"processes of guest group {pgid} are still alive")
    assert registry.lookup("uml", g.proc.pid) is None
    assert g.tmpdir is None


def test_guest_runs_command_streams_output_and_exit_status(tmp_path):
    lines: list[str] = []
    cmd = "echo hello from $(uname -r); head -1 /proc/net/ip_vs; echo env=$KPB_X/$KPB_Y; exit 7"
    with uml.Guest(tmp_path, cmd, env={"KPB_X": "one", "KPB_Y": "two words"}, mem="512M", timeout=180) as g:
        res = g.wait(lines.append)
    assert res.status == 7, (lines, res)
    assert lines[0] == f"hello from {uml.uml_version()}"
    assert lines[1].startswith("IP Virtual Server version"), lines  # IPVS is there
    assert lines[2] == "env=one/two words"
    assert res.modules_missing == [], res.modules_missing
    assert res.boot_s is not None and res.elapsed_s > res.boot_s
    print(f"guest: boot to command {res.boot_s:.1f}s, total {res.elapsed_s:.1f}s")
    _ours_gone(g)


def test_interrupt_kills_the_whole_guest(tmp_path):
    g = uml.Guest(tmp_path, "echo ready; sleep 600", mem="256M", timeout=180)
    with pytest.raises(KeyboardInterrupt):
        with g:
            for line in g.lines():
                if line == "ready":
                    raise KeyboardInterrupt
    _ours_gone(g)


def _cpus_allowed(pid: int) -> str:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def test_guest_and_its_processes_stay_on_one_host_cpu(tmp_path):
    """Every host process of the guest (the kernel and each guest process it runs under ptrace)
    is pinned to host_cpu(); with cpu="none" they may use any CPU this process may."""
    from harness.lab.cleanup import _group_members

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to pin")
    for cpu, want in (("auto", str(allowed[-1])), ("none", None)):
        g = uml.Guest(tmp_path, "echo cpu=$KPBENCH_UML_HOST_CPU; sleep 600", mem="256M", timeout=180, cpu=cpu)
        with g:
            out = g.lines()  # kept: closing the generator would end the guest
            assert next(line for line in out if line.startswith("cpu=")) == f"cpu={want or 'none'}"
            assert g.proc is not None and g.proc.poll() is None
            members = _group_members(g.proc.pid)
            assert len(members) > 2, members  # the kernel, its helpers and the guest's processes
            lists = {_cpus_allowed(pid) for pid in members if os.path.exists(f"/proc/{pid}")}
            if want is not None:
                assert lists == {want}, lists
            else:
                assert lists == {_cpus_allowed(os.getpid())}, lists
            g.kill()
        _ours_gone(g)


def test_timeout_kills_the_guest(tmp_path):
    g = uml.Guest(tmp_path, "sleep 600", mem="256M", timeout=4)
    with pytest.raises(LabError, match="timed out"):
        with g:
            g.wait()
    _ours_gone(g)


LAB_SCRIPT = textwrap.dedent("""
    import json, time
    t0 = time.monotonic()
    from harness.model import build_model, ModelSpec
    from harness.lab.topology import Lab
    from harness.lab.backends import http_get
    t_import = time.monotonic() - t0
    m = build_model(ModelSpec(n_services=2, endpoints=4, pods_per_node=2))
    lab = Lab(m, "umltest")
    with lab:
        answers = {p.name: http_get(lab.client_ns, p.ip, p.ports[0])[1] for p in m.pods}
        from_b = http_get(lab.node_ns("b"), m.pods[0].ip, m.pods[0].ports[0])[1]
    import os
    print(json.dumps({"answers": answers, "from_b": from_b, "timings": lab.timings,
                      "import_s": t_import, "left": sorted(os.listdir("/run/netns"))}))
""")


def test_lab_topology_inside_the_guest(tmp_path):
    lines: list[str] = []
    res = uml.run_guest(tmp_path, [PY, "-c", LAB_SCRIPT], mem="1G", timeout=300, on_line=lines.append)
    assert res.status == 0, (lines, res.stderr_tail)
    out = json.loads(lines[-1])
    assert out["answers"] == {
        "a0": "a0 10.244.0.10:80\n",
        "a1": "a1 10.244.0.11:80\n",
        "b0": "b0 10.244.1.10:80\n",
        "b1": "b1 10.244.1.11:80\n",
    }
    assert out["from_b"] == "a0 10.244.0.10:80\n"
    assert out["left"] == []
    print(
        f"UML: boot {res.boot_s:.1f}s, imports {out['import_s']:.1f}s, lab {out['timings']}, "
        f"total {res.elapsed_s:.1f}s"
    )
    mine = [r for _, r in registry.records("uml") if r.get("owner_pid") == os.getpid()]
    assert mine == []  # (other people's guests may be running on this machine)


CRASH = textwrap.dedent("""
    import os, sys
    from harness.lab.uml import Guest
    g = Guest(sys.argv[1], "echo ready; sleep 600", mem="256M", timeout=300).start()
    for line in g.lines():
        if line == "ready":
            print(g.proc.pid, g.tmpdir, flush=True)
            os._exit(1)   # the harness dies without cleaning up (as after kill -9)
""")


def test_cleanup_kills_the_guest_of_a_crashed_run(tmp_path):
    import subprocess
    import sys

    from harness.lab.cleanup import cleanup_leftovers

    p = subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path)],
        cwd=uml.REPO,
        capture_output=True,
        text=True,
        timeout=200,
    )
    pid_s, tmpdir = p.stdout.split()
    pid = int(pid_s)
    os.killpg(pid, 0)  # still running: nobody killed it
    lines: list[str] = []
    cleanup_leftovers(lines.append)
    assert any(f"killed uml pid {pid}" in line for line in lines), lines
    from harness.lab.cleanup import _group_members

    assert _group_members(pid) == []  # (zombies are left to init to reap)
    assert not os.path.exists(tmpdir)
    assert registry.lookup("uml", pid) is None
