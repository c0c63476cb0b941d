"""What the disruption phase's integration tests share (lab, local and cluster targets)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def point_files(run_dir: Path, point_id: str) -> tuple[dict, list[dict]]:
    """A measured point as its worker wrote it: the status (points/ID.json) and its rows (ID.jsonl)."""
    points = Path(run_dir) / "points"
    status = json.loads((points / f"{point_id}.json").read_text())
    rows = [json.loads(line) for line in (points / f"{point_id}.jsonl").open()]
    return status, rows


def assert_phases_follow_sync(rows: Iterable[dict], sync_row: dict) -> None:
    """Each connect attempt of `sync_row`'s sync kind is tagged with its start against the sync's
    span, the `disrupt_sync_us` row `sync_row` (seq = its start in us since probing began, in the
    prober's clock; value = its length): before it, during it, or after it (+-1 us: rounding)."""
    kind = sync_row["sync"]
    start, end = sync_row["seq"], sync_row["seq"] + sync_row["value"]
    for x in rows:
        if x["metric"] != "disrupt_connect_us" or x["sync"] != kind:
            continue
        if x["seq"] < start - 1:
            assert x["phase"] == "before", (kind, x["seq"], start)
        elif start + 1 < x["seq"] < end - 1:
            assert x["phase"] == "during", (kind, x["seq"], start, end)
        elif x["seq"] > end + 1:
            assert x["phase"] == "after", (kind, x["seq"], end)
