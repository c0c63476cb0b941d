"""compare two runs point by point (ratio and difference of medians with bootstrap CIs)

    kpbench compare RUN_A RUN_B [--metric M ...] [--all] [--format text|md|csv]
    kpbench compare RUN                  (a version sweep: each release against the oldest)

"1.8x slower" means RUN_B's median is 1.8 times RUN_A's. Two runs of one kube-proxy release each
(e.g. v1.34.12 and v1.37.2) are compared across releases: the version effect. One run that swept
releases (`--set kube_proxy_version=v1.34.12,v1.37.2`) compares each release with its oldest,
within each kernel, mode, endpoint count and Service count. The verdict follows the report's one
decision rule (harness.analysis.decision_rule): different when the bootstrap CI of the ratio of
medians excludes 1 (and the ratio is at least 2% from 1). Runs must match on schema_version,
target and kernels; otherwise exit status 2 with a one-line error naming the key.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

NAME = "compare"
HELP = "compare two runs point by point (ratio and difference of medians, bootstrap CIs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="baseline run folder")
    parser.add_argument(
        "run_b",
        metavar="RUN_B",
        nargs="?",
        help="run folder compared with the baseline (omitted: RUN_A's releases compared)",
    )
    parser.add_argument(
        "--metric", action="append", metavar="METRIC", help="only this metric (repeatable; default: all)"
    )
    parser.add_argument("--all", action="store_true", help="also list points with no significant difference")
    parser.add_argument("--format", choices=["text", "md", "csv"], default="text")
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="1 - the confidence level of the CIs that decide (default 0.05: 95%% CIs)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples")


def _tags(r) -> str:
    from harness.analysis import TAG_KEYS

    return " ".join(f"{t}={r[t]}" for t in TAG_KEYS if r.get(t))


def run(args: argparse.Namespace) -> int:
    from harness import analysis, results

    try:
        a = results.resolve_runs([args.run_a])[0]
        b = results.resolve_runs([args.run_b])[0] if args.run_b else None
        if not (0 < args.alpha < 1) or args.bootstrap < 100:
            print("kpbench compare: error: --alpha must be in (0, 1) and --bootstrap >= 100", file=sys.stderr)
            return 2
        if b is None:
            return _releases(a, args)
        c = analysis.compare(a, b, metrics=args.metric, alpha=args.alpha, n_boot=args.bootstrap)
    except results.ResultsError as e:
        print(f"kpbench compare: error: {e}", file=sys.stderr)
        return 2
    if c.empty:
        print(
            f"kpbench compare: error: {a} and {b} have no point in common"
            + (f" for metric(s) {', '.join(args.metric)}" if args.metric else ""),
            file=sys.stderr,
        )
        return 2
    rel_a = ", ".join(analysis.releases(results.load(a))) or "?"
    rel_b = ", ".join(analysis.releases(results.load(b))) or "?"
    title = f"{b.name} relative to {a.name}" + (f" (kube-proxy {rel_b} vs {rel_a})" if rel_a != rel_b else "")
    return _print(c, title, args)


def _releases(run_dir, args: argparse.Namespace) -> int:
    """One run's releases, each against its oldest (the version effect of a sweep)."""
    from harness import analysis, results

    df = results.load(run_dir)
    rels = analysis.releases(df)
    if len(rels) < 2:
        print(
            f"kpbench compare: error: {run_dir} holds one kube-proxy release ({', '.join(rels) or 'none'}): "
            "give a second run, or measure a sweep with --set kube_proxy_version=v1.34.12,v1.37.2",
            file=sys.stderr,
        )
        return 2
    c = analysis.compare_releases(df, rels[0], metrics=args.metric, alpha=args.alpha, n_boot=args.bootstrap)
    if c.empty:
        print(
            f"kpbench compare: error: {run_dir}: no point measured with both {rels[0]} and another release"
            + (f" for metric(s) {', '.join(args.metric)}" if args.metric else ""),
            file=sys.stderr,
        )
        return 2
    c = c.assign(
        mode=c["mode"].astype(str)
        + " "
        + c["kube_proxy_version"].astype(str)
        + " vs "
        + rels[0]
        + " e"
        + c["endpoints"].astype(str)
    ).drop(columns=["kube_proxy_version", "endpoints"])
    return _print(c, f"{run_dir.name}: kube-proxy {', '.join(rels[1:])} relative to {rels[0]}", args)


def _print(c, title: str, args: argparse.Namespace) -> int:
    from harness import analysis, metrics, units
    from harness.report import fmt

    level = 1 - args.alpha
    enough = c[c["enough"]]
    thin = c[~c["enough"]]
    shown = enough if args.all else enough[enough["significant"]]
    if args.format == "csv":
        shown.to_csv(sys.stdout, index=False)
        return 0
    lines = []
    for _, r in shown.iterrows():
        what = " ".join(
            [str(r["metric"]), _tags(r)]
            + [f"{k}={r[k]}" for k in ("kube_proxy_version", "endpoints") if k in r]
        ).strip()
        u = metrics.unit(r["metric"], str(r["unit"]))
        q = partial(units.quantity, unit=u)
        d = partial(units.quantity, unit=u, sign=True)
        detail = (
            f"median {q(r['median_a'])} -> {q(r['median_b'])}, ratio {fmt(r['ratio'])} "
            f"[{level:.0%} CI {fmt(r['ci_lo'])}-{fmt(r['ci_hi'])}], difference {d(r['diff'])} "
            f"[{d(r['diff_lo'])} to {d(r['diff_hi'])}]"
        )
        if args.format == "md":
            lines.append(
                f"| {r['kernel']} | {r['mode']} | {r['n_services']:,} | {what} | {r['verdict']} | {detail} |"
            )
        else:
            lines.append(f"{r['kernel']} {r['mode']} N={r['n_services']:,} {what}: {r['verdict']} ({detail})")
    if args.format == "md":
        lines = [
            "| kernel | mode | Services | metric | verdict | detail |",
            "|---|---|---|---|---|---|",
        ] + lines
    print(f"# {title}: {int(c['significant'].sum())} of {len(c)} points differ significantly")
    print(f"# rule: {analysis.decision_rule(level)}")
    print("\n".join(lines) if lines else "no significant difference at any point")
    if len(thin):
        print(
            f"not enough repetitions to compare {len(thin)} point(s): "
            + ", ".join(sorted({str(m) for m in thin["metric"]}))
        )
    return 0
