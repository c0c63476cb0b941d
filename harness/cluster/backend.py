"""The cluster backend: a tiny HTTP server answering GET / with "<pod name> <pod ip>:<port>".

That first line is what the probe agent's backend matching reads (the lab's nginx answers the
same way). Standard library only; run as `python -m harness.cluster.backend --port 8080`.
"""

from __future__ import annotations

import argparse
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--bind", default="0.0.0.0")
    args = ap.parse_args(argv)
    name = os.environ.get("POD_NAME") or socket.gethostname()
    ip = os.environ.get("POD_IP", "")
    body = f"{name} {ip}:{args.port}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server naming)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # socketserver's listen backlog is 5: the connect probe's back-to-back handshakes overflowed
        # it and their SYNs were dropped (connect_direct_us timeouts); nginx, the lab's backend, uses 511
        request_queue_size = 4096

    Server((args.bind, args.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
