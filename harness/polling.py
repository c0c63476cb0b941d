"""Polling a condition until a deadline: the one wait loop the clusters' start-up steps share."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    interval: float,
    *,
    alive: Callable[[], None] | None = None,
    errors: tuple[type[BaseException], ...] = (OSError,),
) -> bool:
    """Call `ready()` every `interval` s until it returns true (True) or `timeout` s have passed
    (False). `alive()` runs first each round and raises to give up early (a process that died);
    an exception of `errors` from `ready()` counts as not ready yet."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        try:
            if ready():
                return True
        except errors:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
