"""The report renders from canned results: self-contained HTML with figures and tables, a Markdown
twin; plots return figures; the report/compare commands exit 2 on bad input."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from harness import plots, report, results
from harness.commands import compare_cmd, report_cmd

CANNED = Path(__file__).resolve().parents[1] / "canned" / "run-small"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = report.build_report([CANNED], out)
    return path, path.read_text(), (out / "report.md").read_text()


def test_html_is_self_contained_with_figures_and_tables(built):
    path, html, _ = built
    assert path.name == "report.html"
    assert html.count("<svg") >= 5
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html and "<script" not in html
    for section in (
        "Environment",
        "Data quality",
        "Scaling with the number of Services",
        "Quantile tables",
        "Validation matrix",
        "Caveats",
    ):
        assert section in html
    assert "SYNTHETIC DATA" in html and 'id="synthetic-banner"' in html
    assert "grows linearly with the number of Services" in html and "flat within noise" in html
    assert "host-6.18.0-synthetic" in html and "uml-6.1.0-synthetic" in html
    assert "6.18.0-synthetic" in html and "Synthetic CPU" in html and "ipvsadm v1.31" in html  # environment
    assert "saturated" in html and "synthetic failure" in html  # called-out points
    assert "UML" in html and "within one kernel" in html  # caveats
    assert "<table" in html and "connect_us [us]" in html


def test_markdown_twin(built):
    path, _, md = built
    assert md.startswith("> **SYNTHETIC DATA")
    assert "| kernel | mode |" in md and "grows linearly" in md
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (path.parent / png).is_file()
    assert len(re.findall(r"!\[", md)) >= 5


def test_no_banner_without_synthetic_flag(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(CANNED, run)
    meta = json.loads((run / "metadata.json").read_text())
    meta.pop("synthetic")
    (run / "metadata.json").write_text(json.dumps(meta))
    df = results.load(run)
    small = df[(df["kernel"] == "host-6.18.0-synthetic") & df["metric"].isin(["sync_full_s"])]
    ctx_html = report._env(True).get_template("report.html.j2").render(**report.report_context([run], None))
    assert "SYNTHETIC DATA" not in ctx_html
    assert len(small)


def test_plot_functions_return_figures_and_save_all(tmp_path):
    df = results.load(CANNED)
    df = df[df["n_services"].isin([100, 10000])]
    for name, fn in plots.FIGURES.items():
        assert isinstance(fn(df), Figure), name
    assert isinstance(plots.connect_latency(df.iloc[0:0]), Figure)  # empty data: a "no data" figure
    one = df[(df["metric"] == "connect_us") & (df["kernel"] == "host-6.18.0-synthetic")]
    paths = plots.save_all(one, tmp_path)
    assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.stat().st_size > 0 for p in paths)


def _args(mod, argv):
    p = argparse.ArgumentParser()
    mod.add_arguments(p)
    return p.parse_args(argv)


def test_commands_exit_2_on_bad_input(tmp_path, capsys):
    assert report_cmd.run(_args(report_cmd, [str(tmp_path / "missing")])) == 2
    assert report_cmd.run(_args(report_cmd, [str(tmp_path)])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such folder" in err[0] and "not a kpbench run folder" in err[1]
    b = tmp_path / "b"
    shutil.copytree(CANNED, b)
    meta = json.loads((b / "metadata.json").read_text())
    meta["target"], meta["run_id"] = "cluster", "b"
    (b / "metadata.json").write_text(json.dumps(meta))
    assert compare_cmd.run(_args(compare_cmd, [str(CANNED), str(b)])) == 2
    err = capsys.readouterr().err.strip()
    assert "'target' differs" in err and "\n" not in err
    # a report lays different targets side by side (one series per run); compare refuses them
    assert report_cmd.run(_args(report_cmd, [str(CANNED), str(b), "-o", str(tmp_path / "r")])) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "cluster" in page and meta["run_id"] in page


def test_compare_command_same_run(capsys):
    assert (
        compare_cmd.run(
            _args(compare_cmd, [str(CANNED), str(CANNED), "--metric", "sync_full_s", "--bootstrap", "200"])
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "0 of" in out and "no significant difference at any point" in out
