"""`locust -f <harness/cluster/locustfile.py> ARGS...` wherever the harness is installed in the image:
``python3 -m harness.cluster.locust_main --master ...`` (the Dockerfile's /opt/kpbench copy and a
site-packages install alike)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from locust.main import main as locust_main  # first: gevent monkey-patches the process

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "locustfile.py")
    sys.argv = ["locust", "-f", here, *sys.argv[1:]]
    locust_main()


if __name__ == "__main__":
    main()
