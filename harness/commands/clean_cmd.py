"""`kpbench clean`: remove the namespaces, guests and processes a crashed run left behind."""

from __future__ import annotations

import argparse

from harness.commands.privileges import require_root

NAME = "clean"
HELP = "remove namespaces, guests and processes left by a crashed run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    from harness.lab.cleanup import cleanup_leftovers

    require_root("kpbench clean")
    removed = cleanup_leftovers(print)
    print(f"clean: removed {len(removed)} leftover item(s)" if removed else "clean: nothing left over")
    return 0
