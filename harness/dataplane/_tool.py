"""Run a kernel tool inside a namespace, streaming generated text into its stdin.

Generation overlaps the tool's parsing: chunks are written as they are produced. stdout/stderr
go to temporary files so a chatty tool can never block the writer.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable, Sequence

from harness.lab.netns import LabError, exec_prefix


def stream(ns: str | None, argv: Sequence[str], chunks: Iterable[str]) -> str:
    """Feed `chunks` to argv's stdin inside `ns`; return stdout; raise LabError on failure."""
    full = (exec_prefix(ns) if ns else []) + list(argv)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=out, stderr=err, bufsize=0)
        stdin = p.stdin
        assert stdin is not None  # stdin=PIPE
        broken = False
        try:
            w = stdin.write
            for c in chunks:
                if c:
                    w(c.encode())
        except BrokenPipeError:
            broken = True
        finally:
            try:
                stdin.close()
            except BrokenPipeError:
                broken = True
        rc = p.wait()
        out.seek(0)
        err.seek(0)
        o = out.read().decode(errors="replace")
        e = err.read().decode(errors="replace")
    if rc != 0 or broken:
        raise LabError(
            f"{' '.join(argv[:3])} in {ns or 'this namespace'} failed (exit {rc}): {e.strip()[:2000]}"
        )
    return o
