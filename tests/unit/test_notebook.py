"""notebooks/analysis.ipynb executes headless against the canned run (KPBENCH_RUN)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"
CANNED = ROOT / "tests" / "canned" / "run-small"


def test_notebook_executes_against_canned_run(monkeypatch):
    monkeypatch.setenv("KPBENCH_RUN", str(CANNED))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.monotonic()
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    elapsed = time.monotonic() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 5
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(CANNED) in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if "data" in o)
    assert "grows linearly with the number of Services" in html and "flat within noise" in html
    first_md = next(
        o["data"]["text/markdown"]
        for o in outputs
        if "text/markdown" in o.get("data", {}) and "Findings" in o["data"]["text/markdown"]
    )
    assert "through iptables costs" in first_md and "Decision rule" in first_md  # the report's findings
    assert elapsed < 120  # ~30 s on 2 shared cores
