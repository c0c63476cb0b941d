"""Run folders: loading, must-match checks, append-only idempotent merging of point files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness import analysis, results
from harness.samples import COLUMNS, PointContext, SampleWriter

CANNED = Path(__file__).resolve().parents[1] / "canned" / "run-small"


def copy_run(tmp_path: Path, name: str, **meta_changes) -> Path:
    d = tmp_path / name
    shutil.copytree(CANNED, d)
    meta = json.loads((d / "metadata.json").read_text())
    meta["run_id"] = name
    for k, v in meta_changes.items():
        meta[k] = v
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


def rows(pid="host-iptables-10-r1", n=3, metric="connect_us"):
    ctx = PointContext("r", pid, "lab", "host-6.18", "iptables", "legacy", 10, 1, 1)
    return [ctx.row(metric, 100.0 + i, "us", seq=i, position="random") for i in range(n)]


def test_load_canned_types_and_content():
    df = results.load(CANNED)
    assert list(df.columns) == list(COLUMNS)
    for c in ("mode", "kernel", "metric", "position", "keepalive", "change"):
        assert isinstance(df[c].dtype, pd.CategoricalDtype), c
    assert df["n_services"].dtype == "int64" and df["value"].dtype == "float64"
    assert set(df["kernel"].unique()) == {"host-6.18.0-synthetic", "uml-6.1.0-synthetic"}
    assert set(df["mode"].unique()) == {"iptables", "ipvs", "nftables"}
    assert df["timed_out"].sum() > 0
    assert df.attrs["runs"] == [str(CANNED)]


def test_load_metadata_and_points():
    meta = results.load_metadata(CANNED)
    assert meta["schema_version"] == 1 and results.kernel_labels(meta) == [
        "host-6.18.0-synthetic",
        "uml-6.1.0-synthetic",
    ]
    pts = results.load_points(CANNED)
    assert set(pts["status"]) == {"ok", "failed"}
    assert pts["saturated"].sum() == 1


def test_load_many_runs_by_glob(tmp_path):
    copy_run(tmp_path, "20250101T000000Z-a")
    copy_run(tmp_path, "20250102T000000Z-b")
    df = results.load(str(tmp_path / "2025*"))
    assert len(df) == 2 * len(results.load(CANNED))
    assert results.latest_run(tmp_path).name == "20250102T000000Z-b"


@pytest.mark.parametrize("key,value", [("target", "cluster"), ("schema_version", 2)])
def test_load_refuses_mismatched_runs(tmp_path, key, value):
    a = copy_run(tmp_path, "run-a")
    b = copy_run(tmp_path, "run-b", **{key: value})
    with pytest.raises(results.ResultsError) as e:
        results.load([a, b])
    msg = str(e.value)
    assert "\n" not in msg and repr(key) in msg and "run-b=" + str(value) in msg and "run-a=" in msg


def test_compare_refuses_different_kernels(tmp_path):
    a = copy_run(tmp_path, "run-a")
    b = copy_run(tmp_path, "run-b", kernels=[{"name": "host", "release": "6.19.0"}])
    results.load([a, b])  # loading across kernels is fine ...
    with pytest.raises(results.ResultsError, match="'kernel' differs"):
        analysis.compare(a, b)  # ... comparing is not


def test_check_comparable_warns_on_soft_keys():
    m1 = {"run_id": "a", "schema_version": 1, "target": "lab", "harness": {"version": "0.1"}}
    m2 = {**m1, "run_id": "b", "harness": {"version": "0.2"}}
    warns = results.check_comparable([m1, m2])
    assert len(warns) == 1 and "harness.version" in warns[0]
    assert results.check_comparable([m1]) == []


def test_check_one_kernel():
    df = results.load(CANNED)
    with pytest.raises(results.ResultsError, match="across kernels"):
        results.check_one_kernel(df)
    assert results.check_one_kernel(df[df["kernel"] == "uml-6.1.0-synthetic"]) == "uml-6.1.0-synthetic"


def test_bad_input_messages(tmp_path):
    with pytest.raises(results.ResultsError, match="no such folder"):
        results.load(tmp_path / "missing")
    with pytest.raises(results.ResultsError, match="not a kpbench run folder"):
        results.load(tmp_path)
    with pytest.raises(results.ResultsError, match="no run folders match"):
        results.load(str(tmp_path / "nothing*"))


def test_write_samples_is_append_only_and_idempotent(tmp_path):
    assert results.write_samples(tmp_path, rows(n=3)) == 3
    assert results.write_samples(tmp_path, rows(n=3)) == 0  # same rows again: nothing added
    assert results.write_samples(tmp_path, rows(n=5)) == 2  # grown list: only the new rows
    assert pq.read_table(tmp_path / "samples.parquet").num_rows == 5
    dup = rows(n=1) * 2  # two identical samples are two samples (a multiset, not a set)
    other = tmp_path / "other"
    other.mkdir()
    assert results.write_samples(other, dup) == 2 and results.write_samples(other, dup) == 0


def test_write_samples_rejects_unknown_columns(tmp_path):
    bad = rows(n=1)
    bad[0]["colour"] = "red"
    with pytest.raises(results.ResultsError, match="unknown column"):
        results.write_samples(tmp_path, bad)


def test_merge_points_only_finished_and_idempotent(tmp_path):
    run = tmp_path / "run"
    (run / "points").mkdir(parents=True)
    (run / "metadata.json").write_text(json.dumps({"schema_version": 1, "run_id": "run", "target": "lab"}))
    for pid, finished in (("p1", True), ("p2", False)):
        with open(run / "points" / f"{pid}.jsonl", "w") as fh:
            SampleWriter(fh).extend(rows(pid=pid, n=4))
        if finished:
            (run / "points" / f"{pid}.json").write_text(json.dumps({"point_id": pid, "status": "ok"}))
    with open(run / "points" / "p1.jsonl", "a") as fh:
        fh.write('{"run_id": "r", "point_')  # torn last line of a killed writer
    with pytest.warns(UserWarning, match="torn"):
        results.merge_points(run)
    with pytest.warns(UserWarning):
        results.merge_points(run)
    df = results.load(run)
    assert len(df) == 4 and set(df["point_id"]) == {"p1"}


def test_load_reads_unmerged_finished_points(tmp_path):
    run = tmp_path / "run"
    (run / "points").mkdir(parents=True)
    (run / "metadata.json").write_text(json.dumps({"schema_version": 1, "run_id": "run", "target": "lab"}))
    with open(run / "points" / "p1.jsonl", "w") as fh:
        SampleWriter(fh).extend(rows(pid="p1", n=4))
    (run / "points" / "p1.json").write_text(json.dumps({"point_id": "p1", "status": "ok"}))
    assert len(results.load(run)) == 4
    assert not (run / "samples.parquet").exists()  # loading never writes


def test_old_parquet_without_a_newer_tag_column_loads(tmp_path):
    import pyarrow as pa

    t = pq.read_table(CANNED / "samples.parquet")
    if "error" in t.column_names:
        t = t.drop(["error"])
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(CANNED / "metadata.json", run / "metadata.json")
    pq.write_table(t, run / "samples.parquet")
    df = results.load(run)
    assert "error" not in COLUMNS or (df["error"] == "").all()
    assert isinstance(t, pa.Table)
