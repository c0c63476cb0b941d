"""The root check of the commands that create network namespaces (run, validate, clean)."""

from __future__ import annotations

import os

from harness.errors import UserError


def require_root(what: str) -> None:
    """Refuse with a UserError unless running as root; `what` names the command in the message."""
    if os.geteuid() != 0:
        raise UserError(f"{what} needs root (it creates network namespaces): run it with sudo")
