"""`kpbench`: doctor, run, validate, render, report, compare, clean."""

from __future__ import annotations

import argparse
import sys

from harness import __version__
from harness.commands import COMMANDS
from harness.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The `kpbench` parser: one subparser per module in harness.commands.COMMANDS."""
    ap = argparse.ArgumentParser(prog="kpbench", description=__doc__)
    ap.add_argument("--version", action="version", version=f"kpbench {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the subcommand; a UserError is one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--budget" in argv[:-1]:  # `--budget -5m` is a value (refused later in one line), not an option
        i = argv.index("--budget")
        if argv[i + 1].startswith("-"):
            argv[i : i + 2] = [f"--budget={argv[i + 1]}"]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"kpbench: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
