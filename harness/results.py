"""Reading and writing run folders: samples.parquet, metadata.json, point files.

A run folder (``results/<UTC timestamp>-<id>/``) holds

- ``metadata.json``   schema_version, run_id, harness, target, kernels, tools, machine, scenario,
                      status, points (one entry per planned point) ...
- ``samples.parquet`` the tidy long-format sample table (columns ``harness.samples.COLUMNS``)
- ``points/<point_id>.jsonl`` / ``.json``  rows and status written by workers
- ``scenario.yaml``, ``run.log``

This is the only module that imports pandas for results; workers never import it.

Must-match keys (pyperf style): runs whose ``schema_version`` or ``target`` differ are never
combined. Comparing *modes* additionally needs one kernel: a DataFrame may span kernels (every
row carries its kernel) but comparisons and plots facet by kernel; comparing two *runs* needs
the same kernels (``MUST_MATCH_COMPARE``).
"""

from __future__ import annotations

import glob as _glob
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import UserError
from harness.samples import COLUMNS, TAGS

SAMPLES = "samples.parquet"
METADATA = "metadata.json"
POINTS_DIR = "points"

# Keys that must be equal before runs are combined at all, and before two runs are compared.
MUST_MATCH: tuple[str, ...] = ("schema_version", "target")
MUST_MATCH_COMPARE: tuple[str, ...] = MUST_MATCH + ("kernel",)
# A report lays runs side by side, one series per run (targets, kernels, releases, machines):
# only the row format must match; every row says its target and kernel.
MUST_MATCH_REPORT: tuple[str, ...] = ("schema_version",)
# Keys that should match; a difference is reported as a warning, not refused.
SHOULD_MATCH: tuple[str, ...] = ("harness.version", "machine.cpu_model", "machine.cores")

_INT = ("n_services", "endpoints", "rep", "seq")
_TYPES = {c: pa.int64() for c in _INT} | {"value": pa.float64(), "timed_out": pa.bool_()}
# every other column (ids, mode, kernel, metric, unit, tags ...) is a string; derived from
# samples.COLUMNS so that a column added there (e.g. a new tag) needs no change here
_ARROW_SCHEMA = pa.schema([(c, _TYPES.get(c, pa.string())) for c in COLUMNS])
# Columns stored as categoricals after loading (low-cardinality strings).
CATEGORICAL = tuple(c for c in COLUMNS if c not in _TYPES)
# Columns a row may omit: tags default to "", seq to 0, timed_out to false, kube_proxy_version to
# the run's single release (rows of runs made before the release was a column, or of a target
# that does not know it, say "" and are filled from metadata.json when loaded).
RELEASE = "kube_proxy_version"
_OPTIONAL = set(TAGS) | {"seq", "timed_out", RELEASE}
_EMPTY_STR = set(TAGS) | {RELEASE}


class ResultsError(UserError):
    """A run folder cannot be read, or runs cannot be combined. The message is one line."""


# --------------------------------------------------------------------------------------------
# Locating run folders


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / METADATA).is_file()


def find_runs(root: str | os.PathLike = "results") -> list[Path]:
    """Run folders directly under `root`, oldest first (folder names start with a UTC stamp)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_run_dir(p))


def latest_run(root: str | os.PathLike = "results") -> Path:
    runs = find_runs(root)
    if not runs:
        raise ResultsError(f"{root}: no run folders (folders with {METADATA})")
    return runs[-1]


def default_run(
    env: str = "KPBENCH_RUN", roots: Sequence[str | os.PathLike] = ("results", "../results")
) -> Path:
    """The run named by environment variable `env`, else the newest run under the first
    existing root (the notebook runs from notebooks/, the CLI from the repo root)."""
    named = os.environ.get(env)
    if named:
        p = Path(named)
        if not is_run_dir(p):
            raise ResultsError(f"{env}={named}: not a run folder (no {METADATA})")
        return p
    for root in roots:
        if find_runs(root):
            return latest_run(root)
    raise ResultsError(f"no run folders under {', '.join(map(str, roots))}; set {env}=RUN_DIR")


def resolve_runs(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """A run folder, a glob, or a list of either -> existing run folders (order kept, no repeats)."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise ResultsError("no run folders given")
    out: list[Path] = []
    for item in items:
        s = os.fspath(item)
        if any(c in s for c in "*?["):
            matches = sorted(Path(m) for m in _glob.glob(s) if is_run_dir(m))
            if not matches:
                raise ResultsError(f"{s}: no run folders match")
        else:
            p = Path(s)
            if not p.exists():
                raise ResultsError(f"{s}: no such folder")
            if not p.is_dir() or not is_run_dir(p):
                raise ResultsError(f"{s}: not a kpbench run folder (no {METADATA})")
            matches = [p]
        for m in matches:
            if m.resolve() not in {o.resolve() for o in out}:
                out.append(m)
    return out


# --------------------------------------------------------------------------------------------
# Metadata


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata.json of a run folder (or the file itself), with ``_dir`` set to the folder."""
    p = Path(path)
    f = p if p.is_file() else p / METADATA
    if not f.exists():
        if not p.exists():
            raise ResultsError(f"{p}: no such folder")
        raise ResultsError(f"{p}: not a kpbench run folder (no {METADATA})")
    try:
        meta = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(
            f"{f}: unreadable metadata ({e.__class__.__name__}: {e})".splitlines()[0]
        ) from None
    if not isinstance(meta, dict):
        raise ResultsError(f"{f}: metadata is not a JSON object")
    meta.setdefault("run_id", f.parent.name)
    meta["_dir"] = str(f.parent)
    return meta


def kernel_labels(meta: Mapping[str, Any]) -> list[str]:
    """Kernel labels of a run as rows carry them ("host-6.18.1", "uml-6.1.0"), sorted."""
    out = set()
    for k in meta.get("kernels") or []:
        if isinstance(k, Mapping):
            name, rel = k.get("name"), k.get("release")
            out.add(k.get("label") or (f"{name}-{rel}" if name and rel else str(name or rel)))
        else:
            out.add(str(k))
    if not out and meta.get("kernel"):
        out.add(str(meta["kernel"]))
    return sorted(out)


def meta_value(meta: Mapping[str, Any], key: str) -> Any:
    """Dotted lookup ("harness.version"); "kernel" means the run's kernel labels."""
    if key in ("kernel", "kernels"):
        return ", ".join(kernel_labels(meta)) or None
    cur: Any = meta
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def harness_version(meta: Mapping[str, Any]) -> str:
    h = meta.get("harness")
    if isinstance(h, Mapping):
        return f"{h.get('version', '?')} ({h.get('git_sha', '?')})"
    return str(meta.get("harness_version", h or "?"))


def check_comparable(
    metas: Sequence[Mapping[str, Any]],
    keys: Sequence[str] = MUST_MATCH,
    *,
    warn_keys: Sequence[str] = SHOULD_MATCH,
    what: str = "combine",
) -> list[str]:
    """Refuse runs whose must-match metadata differs.

    Raises ResultsError with one line naming the key and the differing values, e.g.
    ``cannot combine runs: 'target' differs (A=lab, B=cluster)``. Returns warnings (one line
    each) for `warn_keys` that differ. One run is always comparable with itself.
    """

    def label(m: Mapping[str, Any]) -> str:
        return str(m.get("run_id") or m.get("_dir") or "?")

    for key in keys:
        vals = {label(m): meta_value(m, key) for m in metas}
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals.values()}) > 1:
            shown = ", ".join(f"{r}={v}" for r, v in vals.items())
            raise ResultsError(f"cannot {what} runs: metadata {key!r} differs ({shown})")
    out = []
    for key in warn_keys:
        vals = {label(m): meta_value(m, key) for m in metas}
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals.values()}) > 1:
            out.append(f"metadata {key!r} differs: " + ", ".join(f"{r}={v}" for r, v in vals.items()))
    return out


def check_one_kernel(df: pd.DataFrame, what: str = "compare modes") -> str:
    """The single kernel of `df`; ResultsError if it spans several (facet by kernel instead)."""
    ks = sorted(map(str, df["kernel"].dropna().unique()))
    if len(ks) != 1:
        raise ResultsError(
            f"cannot {what} across kernels: 'kernel' differs ({', '.join(ks) or 'none'}); facet by kernel"
        )
    return ks[0]


# --------------------------------------------------------------------------------------------
# Point files and samples.parquet


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a killed writer leaves a torn last line
                warnings.warn(f"{path}: ignoring a torn last line", stacklevel=2)
                continue
            raise ResultsError(f"{path}:{i + 1}: not a JSON line") from None
    return rows


def point_statuses(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """points/<id>.json status files (finished points: ok, failed or invalid)."""
    out = {}
    for f in sorted((Path(run_dir) / POINTS_DIR).glob("*.json")):
        try:
            st = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(st, dict):
            out[str(st.get("point_id", f.stem))] = st
    return out


def _normalize_rows(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for i, r in enumerate(rows):
        extra = set(r) - set(COLUMNS)
        if extra:
            raise ResultsError(f"sample row {i}: unknown column(s) {sorted(extra)}")
        missing = [c for c in COLUMNS if c not in r and c not in _OPTIONAL]
        if missing:
            raise ResultsError(f"sample row {i}: missing column(s) {missing}")
        for c in COLUMNS:
            v = r.get(c)
            if c in _EMPTY_STR:
                v = "" if v is None else (("true" if v else "false") if isinstance(v, bool) else str(v))
            elif c == "seq":
                v = int(v or 0)
            elif c == "timed_out":
                v = bool(v)
            elif c == "value":
                v = float("nan") if v is None else float(v)
            cols[c].append(v)
    try:
        return pa.table(cols, schema=_ARROW_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ResultsError(f"sample rows do not fit the schema: {str(e).splitlines()[0]}") from None


def _read_parquet_table(path: Path) -> pa.Table:
    try:
        t = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
        raise ResultsError(f"{path}: unreadable Parquet ({str(e).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in t.column_names]
    required = [c for c in missing if c not in _OPTIONAL]
    if required:
        raise ResultsError(f"{path}: missing column(s) {required}")
    for c in missing:  # a file written before an optional column (a tag) existed
        default = "" if c in _EMPTY_STR else (0 if c == "seq" else False)
        t = t.append_column(c, pa.array([default] * t.num_rows, type=_ARROW_SCHEMA.field(c).type))
    return t.select(list(COLUMNS)).cast(_ARROW_SCHEMA)


def _key_frame(t: pa.Table) -> pd.DataFrame:
    df = t.to_pandas()
    # multiset identity: identical rows are told apart by their occurrence number
    df["_occ"] = df.groupby(list(COLUMNS), dropna=False, sort=False).cumcount()
    return df


def write_samples(run_dir: str | os.PathLike, rows_iter: Iterable[Mapping[str, Any]]) -> int:
    """Append sample rows to RUN/samples.parquet; returns how many rows were added.

    Append-only and idempotent: rows already in the file are never changed or removed, and a
    row is added only if the file does not already hold it (rows are a multiset: writing the
    same rows again adds nothing; writing a grown list adds only the new rows). The file is
    replaced atomically.
    """
    run_dir = Path(run_dir)
    path = run_dir / SAMPLES
    new = _normalize_rows(rows_iter)
    if path.exists():
        old = _read_parquet_table(path)
        if new.num_rows == 0:
            return 0
        old_k, new_k = _key_frame(old), _key_frame(new)
        keys = list(COLUMNS) + ["_occ"]
        merged = new_k.merge(old_k[keys].drop_duplicates(), on=keys, how="left", indicator=True)
        fresh = merged[merged["_merge"] == "left_only"][list(COLUMNS)]
        if fresh.empty:
            return 0
        table = pa.concat_tables(
            [old, pa.Table.from_pandas(fresh, schema=_ARROW_SCHEMA, preserve_index=False)]
        )
        added = len(fresh)
    else:
        table, added = new, new.num_rows
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return added


def _finished_rows(run_dir: Path, skip: Set[str] = frozenset()) -> list[dict[str, Any]]:
    statuses = point_statuses(run_dir)
    rows: list[dict[str, Any]] = []
    for f in sorted((run_dir / POINTS_DIR).glob("*.jsonl")):
        if f.stem not in statuses or f.stem in skip:  # unfinished points are measured again whole
            continue
        rows.extend(_read_jsonl(f))
    return rows


def merge_points(run_dir: str | os.PathLike) -> Path:
    """Merge RUN/points/*.jsonl of finished points into RUN/samples.parquet (idempotent)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsError(f"{run_dir}: no such folder")
    write_samples(run_dir, _finished_rows(run_dir))
    path = run_dir / SAMPLES
    if not path.exists():  # a run with no samples yet still gets a (typed, empty) table
        write_samples(run_dir, [])
    return path


# --------------------------------------------------------------------------------------------
# Loading


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for c in CATEGORICAL:
        df[c] = df[c].astype("string").fillna("").astype("category")
    for c in _INT:
        df[c] = df[c].astype("int64")
    df["value"] = df["value"].astype("float64")
    df["timed_out"] = df["timed_out"].astype(bool)
    return df


def load_run_samples(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Samples of one run: samples.parquet plus finished points not merged yet (in memory)."""
    run_dir = Path(run_dir)
    path = run_dir / SAMPLES
    tables = []
    have: set[str] = set()
    if path.exists():
        t = _read_parquet_table(path)
        tables.append(t)
        have = set(t.column("point_id").unique().to_pylist())
    extra = _finished_rows(run_dir, skip=have) if (run_dir / POINTS_DIR).is_dir() else []
    if extra:
        tables.append(_normalize_rows(extra))
    t = pa.concat_tables(tables) if tables else _ARROW_SCHEMA.empty_table()
    df = t.to_pandas()
    unset = df[RELEASE] == ""
    if unset.any():
        df.loc[unset, RELEASE] = run_release(load_metadata(run_dir)) if is_run_dir(run_dir) else ""
    return df


def run_release(meta: Mapping[str, Any]) -> str:
    """The single kube-proxy release of a run's metadata: scenario.kube_proxy_version, else the
    older local.kube_version, else the local target's kube-proxy binary's version, else "" (a
    cluster run: only the version its tools recorded; the scenario's release is not what it ran)."""
    sc = meta.get("scenario") or {}
    v = sc.get("kube_proxy_version") or (sc.get("local") or {}).get("kube_version")
    if meta.get("target") == "cluster" or not v:
        got = str((meta.get("tools") or {}).get("kube-proxy") or "").split()
        v = next((w for w in got if w.startswith("v1.")), "")
    return str(v)


def load(
    spec: str | os.PathLike | Iterable[str | os.PathLike], *, keys: Sequence[str] = MUST_MATCH
) -> pd.DataFrame:
    """Samples of one or many runs (a folder, a glob, or a list) as one tidy DataFrame.

    String columns (mode, kernel, metric, tags ...) are categoricals. Refuses (ResultsError)
    runs whose must-match metadata `keys` differ. ``df.attrs["runs"]`` lists the run folders.
    """
    dirs = resolve_runs(spec)
    metas = [load_metadata(d) for d in dirs]
    check_comparable(metas, keys)
    frames = [load_run_samples(d) for d in dirs]
    frames = [f for f in frames if len(f)] or frames[:1]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df = _typed(df[list(COLUMNS)].copy())
    df.attrs["runs"] = [str(d) for d in dirs]
    return df


def load_points(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Point statuses of one or many runs: one row per point with status, error, saturated,
    flags and validation. Taken from metadata.json, completed by points/*.json files."""
    rows = []
    for d in resolve_runs(spec):
        meta = load_metadata(d)
        by_id: dict[str, dict[str, Any]] = {}
        for p in meta.get("points") or []:
            if isinstance(p, Mapping) and p.get("point_id"):
                by_id[str(p["point_id"])] = dict(p)
        for pid, st in point_statuses(d).items():
            by_id[pid] = {**by_id.get(pid, {}), **st}
        for pid, p in by_id.items():
            flags = p.get("flags") or {}
            sat = flags.get("saturated") if isinstance(flags, Mapping) else None
            rows.append(
                {
                    "run_id": str(meta.get("run_id")),
                    "point_id": pid,
                    "kernel": str(p.get("kernel", "")),
                    "mode": str(p.get("mode", "")),
                    RELEASE: str(p.get(RELEASE) or run_release(meta)),
                    "n_services": int(p.get("n_services") or 0),
                    "rep": int(p.get("rep") or 0),
                    "status": str(p.get("status", "unknown")),
                    "error": str(p.get("error") or ""),
                    "saturated": bool(sat),
                    "saturated_detail": json.dumps(sat, sort_keys=True, default=str) if sat else "",
                    "flags": flags,
                    "validation": p.get("validation"),
                }
            )
    cols = [
        "run_id",
        "point_id",
        "kernel",
        "mode",
        RELEASE,
        "n_services",
        "rep",
        "status",
        "error",
        "saturated",
        "saturated_detail",
        "flags",
        "validation",
    ]
    return pd.DataFrame(rows, columns=cols)


@dataclass
class RunSet:
    """Run folders, their metadata, samples and point statuses, loaded and checked together."""

    dirs: list[Path]
    metas: list[dict[str, Any]]
    samples: pd.DataFrame
    points: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def load_runs(
    spec: str | os.PathLike | Iterable[str | os.PathLike], *, keys: Sequence[str] = MUST_MATCH
) -> RunSet:
    dirs = resolve_runs(spec)
    metas = [load_metadata(d) for d in dirs]
    warns = check_comparable(metas, keys)
    return RunSet(dirs, metas, load(dirs, keys=keys), load_points(dirs), warns)
