"""The local target's disruption syncs: kube-proxy's metrics read into sync states and spans."""

from __future__ import annotations

import time

import pytest

from harness.k8s.metrics import parse_metrics
from harness.targets import local_disruption as ld
from harness.targets.local_disruption import SyncState, span_of, sync_state

METRICS = """\
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 3
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 0.5
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 3
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv6"} 0.1
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 7
kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e9
kubeproxy_sync_proxy_rules_service_changes_total 4
kubeproxy_sync_proxy_rules_endpoint_changes_total 6
kubeproxy_sync_proxy_rules_service_changes_pending 0
kubeproxy_sync_proxy_rules_endpoint_changes_pending 2
"""


def test_sync_state_reads_the_ipv4_proxier():
    st = sync_state(parse_metrics(METRICS))
    assert st == SyncState(last_ts=1.7e9, count=3, seconds=0.5, full=1, changes=10, pending=2)


def test_a_mode_without_the_full_partial_split_counts_every_sync_as_full():
    text = "\n".join(line for line in METRICS.splitlines() if "sync_full" not in line)
    assert sync_state(parse_metrics(text)).full == 3


def test_span_is_the_syncs_seen_ending_at_the_last_timestamp():
    now = time.time()
    before = SyncState(now - 10, count=2, seconds=1.0, full=1, changes=0, pending=0)
    after = SyncState(now - 1.0, count=4, seconds=1.25, full=1, changes=2, pending=0)
    t0 = time.perf_counter_ns() - 5_000_000_000
    start, end = span_of(before, after, t0)
    assert (end - start) / 1e9 == pytest.approx(0.25, abs=1e-3)
    assert abs((time.perf_counter_ns() - end) / 1e9 - 1.0) < 0.05
    # never before the call that caused the syncs
    start2, end2 = span_of(before, after, end - 100_000_000)
    assert start2 == end - 100_000_000 and abs(end2 - end) < 1_000_000  # the clocks' offset, read again


def test_settled_waits_out_later_syncs_of_the_same_change():
    def state(count):
        return SyncState(last_ts=float(count), count=count, seconds=0.1, full=1, changes=5, pending=0)

    first = state(3)
    seen = iter([state(3), state(4), state(4)] + [state(5)] + [state(5)] * 1000)
    t0 = time.monotonic()
    st = ld.settled(first, lambda: next(seen))
    assert st.count == 5  # the syncs that followed the first are waited for
    # quiet for SETTLE_S after the last new sync (the 5th state), at one poll per POLL_S
    assert time.monotonic() - t0 >= ld.SETTLE_S + 3 * ld.POLL_S
    assert ld.settled(state(7), lambda: state(7)).count == 7  # none follows: SETTLE_S, unchanged


def test_a_change_is_consumed_by_a_later_sync_that_took_it_and_left_none_pending():
    before = SyncState(last_ts=1.0, count=3, seconds=0.3, full=1, changes=5, pending=0)
    took = SyncState(last_ts=2.0, count=4, seconds=0.4, full=1, changes=6, pending=0)
    assert took.consumed_since(before)
    assert not before.consumed_since(before)  # no sync since
    assert not SyncState(2.0, 4, 0.4, 1, 6, pending=1).consumed_since(before)  # one still pending
    assert not SyncState(2.0, 4, 0.4, 1, 5, pending=0).consumed_since(before)  # a sync, no change received
