"""The one rate limiter for API writes: a token bucket shared by the threads that create objects."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """At most `qps` acquisitions per second on average and `burst` at once, like client-go's
    rate limiter. `qps` None or 0: unlimited. `burst` None: a tenth of a second's worth (>= 1)."""

    def __init__(
        self,
        qps: float | None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        qps = qps or 0
        if qps < 0 or (burst is not None and burst < 1):
            raise ValueError("qps must be >= 0 and burst >= 1")
        self.qps, self.clock, self.sleep = qps, clock, sleep
        self.burst = burst or max(1, int(qps // 10))
        self.tokens = float(self.burst)
        self.t = clock()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if self.qps <= 0:
            return
        while True:
            with self.lock:
                now = self.clock()
                self.tokens = min(self.burst, self.tokens + (now - self.t) * self.qps)
                self.t = now
                if (
                    self.tokens >= 1 - 1e-9
                ):  # float slack: a refill of exactly one token may land just below 1
                    self.tokens = max(0.0, self.tokens - 1)
                    return
                wait = max((1 - self.tokens) / self.qps, 1e-6)
            self.sleep(wait)
