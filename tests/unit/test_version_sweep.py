"""The kube-proxy release (and endpoints per Service) as sweep axes: scenario, points, samples,
plan, findings, report and `kpbench compare` (issue 14 item 3)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness import analysis, findings, plan as pl, plots, report, results, runner
from harness.commands import compare_cmd
from harness.samples import COLUMNS, PointContext
from harness.scenario import ScenarioError, load_scenario, parse_override

CANNED = Path(__file__).resolve().parents[1] / "canned"
SMALL = CANNED / "run-small"  # written before the release was a column
SWEEP = (
    CANNED / "run-versions-host"
)  # real: lab, host kernel, nftables v1.34.12 and v1.37.2, 1 and 2 endpoints
KP = {"iptables": ["host"], "nftables": ["host"]}


def scen(*sets: str, name: str = "quick"):
    return load_scenario(name, [parse_override(s) for s in sets])


# -- scenario --------------------------------------------------------------------------------


def test_a_comma_list_of_releases_is_a_sweep_oldest_first_and_the_newest_is_the_apiservers():
    sc = scen("kube_proxy_version=v1.37.2,1.34.12")
    assert sc.releases() == ["v1.34.12", "v1.37.2"]
    assert sc.kube_proxy_version == "v1.37.2" and sc.local.kube_version == "v1.37.2"
    assert sc.local.apiserver_args == []  # v1.37 cannot take the flat allocator's flags
    assert scen().releases() == ["v1.37.2"] and scen().versions is None


def test_a_versions_list_and_its_overrides():
    sc = scen("versions=[v1.33.13, v1.37.2]")
    assert sc.releases() == ["v1.33.13", "v1.37.2"]
    assert scen("versions=v1.34.12,v1.36.3").releases() == ["v1.34.12", "v1.36.3"]
    # the resolved scenario saved beside a run loads back to the same sweep
    again = load_scenario(data=sc.resolved(), source="scenario.yaml")
    assert again.releases() == sc.releases() and again.kube_proxy_version == "v1.37.2"
    # --set kube_proxy_version replaces a scenario's versions list
    assert load_scenario("versions", [parse_override("kube_proxy_version=v1.34.12")]).releases() == [
        "v1.34.12"
    ]


@pytest.mark.parametrize(
    "sets, words",
    [
        (["kube_proxy_version=v1.34.12,v1.99.0"], "v1.99.0"),
        (
            ["target=cluster", "kube_proxy_version=v1.34.12,v1.37.2"],
            "version sweep needs --target lab or local",
        ),
        (["model.endpoints=[]"], "must not be empty"),
        (["model.endpoints=[1, 2000]"], "between 0 and 1000"),
    ],
)
def test_bad_sweeps_are_one_line_errors(sets, words):
    with pytest.raises(ScenarioError) as e:
        scen(*sets)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_scenario_giving_two_different_sweeps_is_refused():
    with pytest.raises(ScenarioError) as e:
        load_scenario(data={"versions": ["v1.34.12", "v1.37.2"], "kube_proxy_version": "v1.34.12,v1.36.3"})
    assert "differ" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        load_scenario(data={"versions": ["v1.34.12", "v1.37.2"], "kube_proxy_version": "v1.34.12"})
    assert "not the newest of versions" in str(e.value)


def test_an_unknown_release_names_the_known_ones():
    with pytest.raises(ScenarioError) as e:
        scen("versions=[v1.34.12, v1.38.0]")
    assert "v1.38.0" in str(e.value) and "v1.37.0-v1.37.2" in str(e.value)


def test_the_versions_scenario_is_oldest_and_newest_with_one_and_two_endpoints():
    sc = load_scenario("versions")
    from harness import releases

    known = releases.known_releases()
    assert sc.releases() == [known[0], known[-1]]
    assert sc.endpoint_counts() == [1, 2] and sc.modes == ["iptables", "nftables"]
    assert sc.counts()[0] == 1000 and sc.counts()[-1] == 50000 and sc.budget != "none"


# -- points ----------------------------------------------------------------------------------


def test_releases_and_endpoints_are_interleaved_axes_with_their_own_point_ids():
    sc = scen(
        "modes=[iptables, nftables]",
        "services.counts=[100, 200]",
        "repetitions=2",
        "kube_proxy_version=v1.34.12,v1.37.2",
        "model.endpoints=[1, 2]",
    )
    pts = runner.plan_points(sc, KP)
    assert len(pts) == 2 * 2 * 2 * 2 * 2 and len({p.point_id for p in pts}) == len(pts)
    p0 = pts[0]
    assert (p0.point_id, p0.kube_proxy_version, p0.endpoints) == (
        "host-iptables-v1.34.12-e1-100-r1",
        "v1.34.12",
        1,
    )
    # every (mode, release, endpoints) of a count and repetition before the next repetition
    first_rep = [(p.mode, p.kube_proxy_version, p.endpoints) for p in pts[:8]]
    assert len(set(first_rep)) == 8 and all(p.rep == 1 and p.n_services == 100 for p in pts[:8])
    # rotated by one per repetition, as modes are
    second_rep = [(p.mode, p.kube_proxy_version, p.endpoints) for p in pts[8:16]]
    assert second_rep == first_rep[1:] + first_rep[:1]


def test_a_single_release_keeps_the_point_ids_older_runs_wrote():
    pts = runner.plan_points(scen("modes=[nftables]", "services.counts=[100]"), {"nftables": ["host"]})
    assert [p.point_id for p in pts] == ["host-nftables-100-r1"]
    assert pts[0].kube_proxy_version == "v1.37.2" and pts[0].endpoints == 2


# -- samples and results ---------------------------------------------------------------------


def test_every_row_carries_its_release():
    assert "kube_proxy_version" in COLUMNS
    ctx = PointContext("r", "p", "lab", "host", "nftables", "", 10, 1, 1, kube_proxy_version="v1.34.12")
    assert ctx.row("sync_full_s", 1.0)["kube_proxy_version"] == "v1.34.12"


def test_old_runs_without_the_column_read_as_their_metadatas_release(tmp_path):
    assert "kube_proxy_version" not in pq.read_schema(SMALL / "samples.parquet").names
    df = results.load(SMALL)
    assert list(df.columns) == list(COLUMNS) and len(df)
    # run-small's metadata predates kube_proxy_version: nothing to say, ""
    assert set(df["kube_proxy_version"].astype(str)) == {""}
    d = tmp_path / "old"
    shutil.copytree(SMALL, d)
    meta = json.loads((d / "metadata.json").read_text())
    meta["scenario"]["local"] = {"kube_version": "v1.34.12"}  # the older name of the release
    (d / "metadata.json").write_text(json.dumps(meta))
    assert set(results.load(d)["kube_proxy_version"].astype(str)) == {"v1.34.12"}
    assert set(results.load_points(d)["kube_proxy_version"]) == {"v1.34.12"}


def test_a_cluster_runs_release_is_what_its_tools_recorded_never_the_scenario_default():
    meta = {"target": "cluster", "scenario": {"kube_proxy_version": "v1.37.2"}}
    assert results.run_release(meta) == ""
    assert results.run_release({**meta, "tools": {"kube-proxy": "Kubernetes v1.35.4"}}) == "v1.35.4"
    assert results.run_release({"target": "lab", "scenario": {"kube_proxy_version": "v1.36.3"}}) == "v1.36.3"


def test_the_sweep_run_loads_with_both_releases():
    df = results.load(SWEEP)
    assert analysis.releases(df) == ["v1.34.12", "v1.37.2"]
    assert sorted(df["endpoints"].unique()) == [1, 2]


# -- plan ------------------------------------------------------------------------------------


def test_the_plan_lists_the_release_and_projects_each_familys_full_sync():
    sc = scen(
        "modes=[nftables]",
        "services.counts=[10000]",
        "kube_proxy_version=v1.34.12,v1.37.2",
        "model.endpoints=[1, 2]",
    )
    pts = runner.plan_points(sc, {"nftables": ["host"]})
    plan = pl.build_plan(sc, "lab", {"nftables": ["host"]}, pts, "none")
    full = {
        (pp.point.kube_proxy_version, pp.point.endpoints): pp.projected["sync_full"] for pp in plan.points
    }
    # v1.37 with one endpoint: a plain dnat, linear; every other cell: an anonymous set per Service
    assert full[("v1.37.2", 1)] < 0.1 * full[("v1.34.12", 1)]
    assert full[("v1.37.2", 1)] < full[("v1.37.2", 2)] < full[("v1.34.12", 2)]
    meta = plan.to_meta("RUN")["points"]
    assert meta["host-nftables-v1.37.2-e1-10000-r1"]["full_sync_growth"] == "linear"
    assert meta["host-nftables-v1.34.12-e1-10000-r1"]["full_sync_growth"] == "quadratic"
    assert meta["host-nftables-v1.34.12-e1-10000-r1"]["kube_proxy_version"] == "v1.34.12"
    text = plan.render("RUN")
    assert "v1.34.12" in text and "v1.37.2" in text and "full sync linear in N" in text
    # the command that measures a point left out names its release and endpoint count
    cmd = plan.measure_command(plan.points[0], "RUN")
    assert "--set kube_proxy_version=v1.34.12 --set model.endpoints=1 " in cmd


# -- findings, report, figures, compare -------------------------------------------------------


def test_findings_state_the_version_effect_with_the_mode_statistics():
    df = results.load(SWEEP)
    s = findings.summary(df, results.load_points(SWEEP), n_boot=300)
    (k,) = s["kernels"]
    full = [x for x in k["versions"] if "a full sync" in x]
    assert len(full) == 2  # one per endpoint count
    one = next(x for x in full if "(1 endpoint per Service)" in x)
    assert (
        one.startswith(
            f"At {k['n_services']:,} Services (1 endpoint per Service), nftables: a full sync with "
            "v1.37.2 takes "
        )
        and "v1.34.12's" in one
        and "95% CI" in one
    )
    assert "Version effect" in findings.markdown(s)
    # growth is fitted per release, never pooled across them
    assert any("nftables (v1.34.12, 1 endpoint)" in x for x in k["growth"])


def test_compare_releases_agrees_with_compare_samples():
    df = results.load(SWEEP)
    c = analysis.compare_releases(df, metrics=["sync_full_s"], n_services=-1, n_boot=300)
    assert set(c["kube_proxy_version"]) == {"v1.37.2"} and set(c["baseline"]) == {"v1.34.12"}
    r = c[c["endpoints"] == 1].iloc[0]
    n = int(df["n_services"].max())
    sel = df[(df["metric"] == "sync_full_s") & (df["n_services"] == n) & (df["endpoints"] == 1)]
    direct = analysis.compare_samples(
        sel[sel["kube_proxy_version"] == "v1.34.12"]["value"],
        sel[sel["kube_proxy_version"] == "v1.37.2"]["value"],
        n_boot=300,
    )
    assert r["ratio"] == pytest.approx(direct["ratio"]) and r["ci_lo"] == pytest.approx(direct["ci_lo"])


def test_report_has_a_release_table_and_figures_one_series_per_mode_and_release():
    df = results.load(SWEEP)
    t = report.version_comparison_table(df)
    assert t is not None and any("v1.37.2 vs v1.34.12" in str(row) for row in t["rows"])
    assert report.version_comparison_table(results.load(SMALL)) is None
    fig = plots.sync_latency(df)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"nftables v1.34.12 1 ep", "nftables v1.37.2 1 ep", "nftables v1.34.12 2 ep"} <= labels


def _compare_args(argv):
    p = argparse.ArgumentParser()
    compare_cmd.add_arguments(p)
    return p.parse_args(argv)


def test_kpbench_compare_one_sweep_run_puts_each_release_against_the_oldest(capsys):
    assert compare_cmd.run(_compare_args([str(SWEEP), "--metric", "sync_full_s", "--all"])) == 0
    out = capsys.readouterr().out
    assert "kube-proxy v1.37.2 relative to v1.34.12" in out
    assert "nftables v1.37.2 vs v1.34.12 e1" in out and "95% CI" in out


def test_kpbench_compare_one_run_of_one_release_is_refused_in_one_line(capsys):
    assert compare_cmd.run(_compare_args([str(SMALL)])) == 2
    err = capsys.readouterr().err
    assert "one kube-proxy release" in err and len(err.strip().splitlines()) == 1


def _split_by_release(tmp_path: Path, release: str) -> Path:
    """A copy of the sweep run holding only `release`'s rows (a run of one release)."""
    d = tmp_path / release
    d.mkdir()
    shutil.copy(SWEEP / "metadata.json", d / "metadata.json")
    meta = json.loads((d / "metadata.json").read_text())
    meta["run_id"] = release
    meta["scenario"].pop("versions", None)
    meta["scenario"]["kube_proxy_version"] = release
    (d / "metadata.json").write_text(json.dumps(meta))
    df = pd.read_parquet(SWEEP / "samples.parquet")
    df[df["kube_proxy_version"] == release].to_parquet(d / "samples.parquet", index=False)
    return d


def test_two_runs_of_one_release_each_are_compared_across_releases(tmp_path, capsys):
    a, b = _split_by_release(tmp_path, "v1.34.12"), _split_by_release(tmp_path, "v1.37.2")
    c = analysis.compare(a, b, metrics=["sync_full_s"], n_boot=300)
    assert len(c) and "kube_proxy_version" not in c.columns  # paired across releases, not on them
    assert compare_cmd.run(_compare_args([str(a), str(b), "--metric", "sync_full_s"])) == 0
    assert "(kube-proxy v1.37.2 vs v1.34.12)" in capsys.readouterr().out


def test_the_local_api_phase_is_projected_by_the_allocator_the_release_runs():
    from harness import costmodel as cm

    flat = scen("target=local", "kube_proxy_version=v1.34.12")
    upstream = scen("target=local")  # v1.37.2: the IPAddress allocator cannot be turned off
    assert cm.api_seconds(flat, 0, 5000) == pytest.approx(10000 / cm.API_OBJECTS_PER_S)
    # measured on v1.37.2: 37 + 59 + 150 + 239 s for 4 x 5,000 Services + slices
    assert cm.api_seconds(upstream, 0, 20000) == pytest.approx(485, rel=0.1)
    assert cm.api_seconds(upstream, 10000, 20000) > 3 * cm.api_seconds(upstream, 0, 10000) / 2
    assert cm.api_seconds(upstream, 20000, 10000) == cm.api_seconds(upstream, 10000, 20000)
