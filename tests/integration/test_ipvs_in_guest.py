"""The kernel tests that need IPVS run inside the UML guest (the host kernel has no IPVS)."""

import re
import sys

import pytest

from harness.lab import uml

pytestmark = [pytest.mark.uml, pytest.mark.kernel]


@pytest.mark.skipif(not uml.available()[0], reason="no UML guest available (install user-mode-linux)")
def test_ipvs_dataplane_tests_pass_inside_the_guest(tmp_path):
    lines: list[str] = []
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
        "--color=no",
        "tests/integration/test_dataplane_kernel.py",
        "-k",
        "ipvs",
    ]
    res = uml.run_guest(tmp_path, cmd, on_line=lines.append, mem="2G", timeout=900, name="ipvs-tests")
    out = "".join(lines)
    assert res.status == 0, out[-3000:] + res.stderr_tail[-2000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\b[1-9]\d* passed", summary), out[-2000:]
    assert "skipped" not in summary and "failed" not in summary and "error" not in summary, summary
