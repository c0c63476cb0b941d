"""`python -m harness.pointloop JOB.json`: the lab target's worker (see harness.pointloop.worker)."""

from harness.pointloop.lab import LabPoints
from harness.pointloop.worker import main

if __name__ == "__main__":
    raise SystemExit(main(None, LabPoints))
