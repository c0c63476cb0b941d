"""The report as a reader sees it: rendered in headless Chromium (Debian's `chromium`, installed by
`make browser`), the page loads with no console error, every figure is displayed, no text
overflows its box (figure labels included), and every figure's axes name their unit.

KPBENCH_SCREENSHOT_DIR=DIR keeps a full-page screenshot of each report there."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from harness import metrics, plots, report, results
from tests.support import browser

CANNED = Path(__file__).resolve().parents[1] / "canned"
RUNS = ["run-real-host", "run-small"]

CHECKS = r"""
(() => {
  const out = {images: [], figures: [], overflow: [], svgText: [], pageOverflow: 0};
  for (const img of document.images)
    out.images.push({src: img.currentSrc.slice(0, 60), ok: img.complete && img.naturalWidth > 0});
  for (const fig of document.querySelectorAll('figure')) {
    const svg = fig.querySelector('svg');
    const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    out.figures.push({id: fig.id, width: r.width, height: r.height});
    if (!svg) continue;
    for (const t of svg.querySelectorAll('text')) {
      const b = t.getBoundingClientRect();
      if (!t.textContent.trim() || b.width === 0) continue;
      if (b.left < r.left - 1 || b.right > r.right + 1 || b.top < r.top - 1 || b.bottom > r.bottom + 1)
        out.svgText.push(fig.id + ': ' + t.textContent.trim());
    }
  }
  const sel = 'h1,h2,h3,h4,p,li,td,th,dt,dd,summary,div.scroll';
  for (const el of document.querySelectorAll(sel)) {
    if (el.closest('pre') || getComputedStyle(el).display === 'inline') continue;
    if (el.scrollWidth > el.clientWidth + 1)
      out.overflow.push(el.tagName + (el.id ? '#' + el.id : '') + ': ' + el.textContent.trim().slice(0, 80));
  }
  out.pageOverflow = document.documentElement.scrollWidth - window.innerWidth;
  return out;
})()
"""


@pytest.fixture(scope="module")
def chromium():
    if browser.executable() is None:
        pytest.skip("chromium is not installed (make browser installs Debian's chromium)")
    with browser.Chromium() as b:
        yield b


@pytest.mark.parametrize("run", RUNS)
def test_report_reads_well_in_chromium(chromium, run, tmp_path):
    html = report.build_report([CANNED / run], tmp_path)
    page = chromium.open(html, width=1280)
    try:
        got = page.evaluate(CHECKS)
        keep = os.environ.get("KPBENCH_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            page.screenshot(Path(keep) / f"report-{run}.png")
        errors = list(page.errors)
    finally:
        page.close()
    assert errors == []
    assert len(got["figures"]) >= 5
    assert all(f["width"] > 300 and f["height"] > 150 for f in got["figures"]), got["figures"]
    assert all(i["ok"] for i in got["images"]), got["images"]
    assert got["svgText"] == [], "figure text outside its figure: " + "; ".join(got["svgText"][:5])
    assert got["overflow"] == [], "text overflows its box: " + "; ".join(got["overflow"][:5])
    assert got["pageOverflow"] <= 0


def test_published_folder_opens_alone(chromium, tmp_path):
    out = tmp_path / "pub"
    index = report.publish([CANNED / "run-real-host"], out)
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), moved)  # self-contained: nothing points back at the run folder
    page = chromium.open(moved / index.name)
    try:
        n_svg = page.evaluate("document.querySelectorAll('figure svg').length")
        errors = list(page.errors)
    finally:
        page.close()
    assert errors == [] and n_svg >= 5
    assert {p.name for p in moved.iterdir()} >= {
        "index.html",
        "report.md",
        "figures",
        "samples.parquet",
        "samples.csv",
        "metadata.json",
    }


UNIT_IN_LABEL = re.compile(r"\[(ns|us|ms|s|%|/s|count)\]")


@pytest.mark.parametrize("run", RUNS)
def test_every_figure_axis_names_its_unit(run):
    df = results.load(CANNED / run)
    figs = plots.figures(df)
    assert "hashing_vs_chain" in figs
    for name, fig in figs.items():
        labels = plots.axis_labels(fig)
        assert labels, name
        for x, y in labels:
            assert x and y, (name, x, y)
            assert UNIT_IN_LABEL.search(x) or x.startswith("Services"), (name, x)
            assert UNIT_IN_LABEL.search(y) or y == "fraction of requests", (name, y)
        fig.canvas.draw()
        for ax in fig.axes:  # tick labels are plain numbers with a unit, never "7.3 x 10^1"
            for t in ax.get_yticklabels() + ax.get_xticklabels():
                assert "10^" not in t.get_text() and "times" not in t.get_text(), (name, t.get_text())


def test_hashing_figure_shows_fits_and_positions():
    df = results.load(CANNED / "run-small")
    fig = plots.hashing_vs_chain(df)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {
        "iptables",
        "nftables",
        "ipvs",
        "first Service (median)",
        "last Service (median)",
        "straight-line fit",
    } <= labels
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_ylabel() == f"connect latency [{metrics.unit('connect_us')}]"
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert ticks and all(re.fullmatch(r"[\d,.]+ (ns|us|ms|s)", t) for t in ticks), ticks
    xt = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert xt == ["100", "1,000", "5,000", "10,000"]
