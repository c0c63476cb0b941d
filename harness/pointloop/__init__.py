"""The point loop: the measurement sequence of a point, written once for every target.

loop.py holds the sequence (PointLoop) and what a target supplies (PointTarget); worker.py the
worker process around it (job file, events, validate-only); lab.py the lab's target. The local
target's worker is harness.targets.local_worker; the cluster target runs the loop in-process.
"""
