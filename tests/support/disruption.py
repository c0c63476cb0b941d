"""Assertions shared by the disruption phase's integration tests (local and cluster targets)."""

from __future__ import annotations

from collections.abc import Iterable


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
