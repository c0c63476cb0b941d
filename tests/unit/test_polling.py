"""harness.polling.wait_until: ready, timed out, given up early, errors counted as not ready."""

from __future__ import annotations

import pytest

from harness.polling import wait_until


def test_returns_true_once_ready():
    answers = iter([False, False, True])
    assert wait_until(lambda: next(answers), timeout=5, interval=0.001)


def test_returns_false_after_the_timeout():
    calls = []
    assert not wait_until(lambda: calls.append(1) or False, timeout=0.05, interval=0.01)
    assert len(calls) >= 2


def test_oserror_counts_as_not_ready_other_errors_propagate():
    answers = iter([OSError("refused"), True])

    def ready():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    assert wait_until(ready, timeout=5, interval=0.001)
    with pytest.raises(ValueError):
        wait_until(lambda: int("x") > 0, timeout=5, interval=0.001)


def test_alive_raising_stops_the_wait():
    def dead():
        raise RuntimeError("exited with 1")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(lambda: False, timeout=5, interval=0.001, alive=dead)
