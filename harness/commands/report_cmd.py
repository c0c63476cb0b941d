"""build the static HTML (and Markdown) report of one or more runs

    kpbench report RUN [RUN ...] [--out DIR] [--merge]
    kpbench report RUN [RUN ...] --publish DIR

Several runs are laid side by side (same figures, one series per run). Exit status 2 with a
one-line error when a folder is missing, is not a run folder, the runs' must-match metadata
(schema_version, target) differ, or their scenarios measure different things. --publish writes
a self-contained folder: index.html, report.md + figures/, samples.parquet, samples.csv,
metadata.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "report"
HELP = "build the static HTML (and Markdown) report of one or more runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) or glob(s), e.g. results/2025*")
    parser.add_argument(
        "-o",
        "--out",
        metavar="DIR",
        help="output folder (default: RUN/report for one run, reports/<last run id> for several)",
    )
    parser.add_argument(
        "--publish",
        metavar="DIR",
        help="write a self-contained folder to publish (index.html with inlined figures, "
        "report.md, figures/, samples.parquet and .csv, metadata.json)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="first merge finished points/*.jsonl into samples.parquet (idempotent)",
    )


def run(args: argparse.Namespace) -> int:
    from harness import report, results

    try:
        dirs = results.resolve_runs(args.runs)
        if args.merge:
            for d in dirs:
                results.merge_points(d)
        if args.publish and args.out:
            print(
                "kpbench report: error: --publish DIR and --out DIR both name the output: give one",
                file=sys.stderr,
            )
            return 2
        if args.publish:
            path = report.publish(dirs, Path(args.publish))
            print(
                f"published: {path.parent} (index.html, report.md, figures/, samples.parquet, samples.csv, "
                "metadata.json)"
            )
            return 0
        out = (
            Path(args.out)
            if args.out
            else (dirs[0] / "report" if len(dirs) == 1 else Path("reports") / dirs[-1].name)
        )
        path = report.build_report(dirs, out)
    except results.ResultsError as e:
        print(f"kpbench report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    print(f"markdown: {path.with_suffix('.md')}")
    return 0
