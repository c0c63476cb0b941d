"""The plan of a run, before anything is measured: every point, where it runs and why, what it is
projected to cost (harness.costmodel), and which points a time budget leaves out.

Points run in the target's order: grouped by kernel (one worker per kernel), in sweep order within
a group. A point that does not fit the budget is left out (status `over_budget`), said in the plan
with its projected cost and the command that measures it; later, cheaper points may still fit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from harness import costmodel as cm
from harness.scenario import Scenario, ScenarioError

if TYPE_CHECKING:
    from harness.runner import Point

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")
NO_BUDGET = ("none", "unlimited", "inf")


class BudgetError(ScenarioError):
    """--budget does not parse, is negative or is below what one point of each mode needs."""


def parse_duration(text: str | float | None) -> float | None:
    """'30m', '1h30m', '900s', '900', 'none' -> seconds (None = no budget); ValueError otherwise."""
    if text is None:
        return None
    t = str(text).strip().lower().replace(" ", "")
    if t in NO_BUDGET:
        return None
    if t.startswith("-"):
        raise ValueError("negative")
    m = _DURATION.match(t)
    if not t or not m or not any(m.groups()):
        raise ValueError("not a duration")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def fmt_duration(seconds: float | None) -> str:
    """Seconds -> '1h05m', '12m30s', '45s' (rounded up to whole seconds)."""
    if seconds is None:
        return "none"
    s = int(-(-seconds // 1))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def fmt_short(seconds: float) -> str:
    """Like fmt_duration, with a tenth of a second below 10 s."""
    return f"{seconds:.1f}s" if seconds < 10 else fmt_duration(seconds)


@dataclass
class PlannedPoint:
    point: Point
    shape: cm.PointShape
    projected: dict[str, float]  # phase -> seconds (setup included for the first point of a group)
    fits: bool = True

    @property
    def total(self) -> float:
        return sum(self.projected.values())


@dataclass
class Plan:
    scenario: Scenario
    target: str
    kernel_plan: dict[str, list[str]]
    kernel_reasons: dict[str, str]
    budget_s: float | None
    points: list[PlannedPoint]
    minimum_s: float
    refiner: cm.Refiner = field(default_factory=cm.Refiner)

    @property
    def included(self) -> list[PlannedPoint]:
        return [p for p in self.points if p.fits]

    @property
    def over_budget(self) -> list[PlannedPoint]:
        return [p for p in self.points if not p.fits]

    @property
    def projected_total(self) -> float:
        return sum(p.total for p in self.included)

    def measure_command(self, pp: PlannedPoint, run_dir) -> str:
        kernel = cm.kernel_kind(pp.point.kernel)
        extra = ""
        if len(self.scenario.releases()) > 1:
            extra += f" --set kube_proxy_version={pp.point.kube_proxy_version}"
        if len(self.scenario.endpoint_counts()) > 1:
            extra += f" --set model.endpoints={pp.point.endpoints}"
        src = (
            f"{run_dir}/scenario.yaml" if run_dir is not None else getattr(self.scenario, "name", "SCENARIO")
        )
        return (
            f"kpbench run {src} --services {pp.point.n_services} --modes {pp.point.mode} "
            f"--kernel {kernel}{extra} --budget none"
        )

    def remaining(self, done: Iterable[str]) -> float:
        """Refined projection of the included points not in `done`."""
        done = set(done)
        return sum(
            sum(self.refiner.refine(p.shape, p.projected).values())
            for p in self.included
            if p.point.point_id not in done
        )

    def refit(self, points: list, seconds_left: float) -> list:
        """Of `points` (left out so far), those that fit `seconds_left` by the refined projection,
        measured by a new worker (its setup and validation charged again); they join the plan."""
        fit = []

        def keep(p, cost, so_far):
            return so_far + cost <= seconds_left

        by_id = {pp.point.point_id: i for i, pp in enumerate(self.points)}
        for pp in project(self.scenario, self.target, points, keep, refine=self.refiner.refine):
            if pp.fits and pp.point.point_id in by_id:
                self.points[by_id[pp.point.point_id]] = pp
                fit.append(pp.point)
        return fit

    def observe(self, point_id: str, status: Mapping) -> None:
        pp = next((p for p in self.points if p.point.point_id == point_id), None)
        if pp is not None and status.get("status") in ("ok", "invalid"):
            self.refiner.observe(pp.shape, pp.projected, cm.actual_phases(status))

    def render(self, run_dir=None) -> str:
        """The plan as printed before the first point."""
        sc = self.scenario
        lines = [
            f"plan: {len(self.points)} points, target {self.target}, budget {fmt_duration(self.budget_s)}",
            f"  programmed by: {programmed_by(self.target)} in every point",
        ]
        real = self.real_kube_proxy_note()
        if real:
            lines.append(f"  {real}")
        rels, eps = sc.releases(), sc.endpoint_counts()
        variants = [(r, e) for r in rels for e in eps]
        for mode, kernels in self.kernel_plan.items():
            lines.append(f"  {mode} on {', '.join(kernels)}: {self.kernel_reasons.get(mode, '')}")
            for k in dict.fromkeys(cm.kernel_kind(k) for k in kernels):
                for r, e in variants:
                    which = f"{k}, {r}" + (f", {e} endpoint(s)" if len(eps) > 1 else "")
                    lines.append(
                        f"    ruleset ({which}): {cm.ruleset(self.target, k, mode, sc.iptables_backend, r, e)}"
                    )
        lines += self.sync_cap_notes()
        lines.append(
            f"  {'kernel':<10} {'mode':<9} {'release':<9} {'eps':>3} {'services':>8} {'rep':>3} "
            f"{'full sync':>9} {'changes':>7} {'point':>8}  fits"
        )
        for pp in self.points:
            p = pp.point
            lines.append(
                f"  {p.kernel:<10} {p.mode:<9} {pp.shape.release:<9} {pp.shape.endpoints:>3} "
                f"{p.n_services:>8} {p.rep:>3} "
                f"{fmt_short(pp.projected['sync_full']):>9} {self.per_kind(pp):>5}/k "
                f"{fmt_short(pp.total):>8}  {'yes' if pp.fits else 'OVER BUDGET'}"
            )
        lines.append(
            f"  projected: {fmt_duration(self.projected_total)} for {len(self.included)} points"
            + (f" (budget {fmt_duration(self.budget_s)})" if self.budget_s is not None else "")
        )
        over = self.over_budget
        if over:
            cost = sum(p.total for p in over)
            lines.append(
                f"  NOT measured in this budget: {len(over)} point(s), projected {fmt_duration(cost)} more:"
            )
            for pp in over:
                lines.append(
                    f"    {pp.point.point_id} ({fmt_short(pp.total)}, {why_costly(pp)}): "
                    f"{self.measure_command(pp, run_dir)}"
                )
            if run_dir is not None:
                lines.append(f"    or all of them afterwards: kpbench run --resume {run_dir} --budget none")
        return "\n".join(lines)

    def per_kind(self, pp: PlannedPoint) -> int:
        """The point's cap of one-change syncs per kind."""
        return self.scenario.measure.sync.per_kind(pp.shape.sync_per_kind)

    def sync_cap_notes(self) -> list[str]:
        """Plan lines on one-change syncs: bridge points' smaller cap, and points whose projected
        one change reaches measure.sync.timeout_s (their samples would be censored there)."""
        s = self.scenario.measure.sync
        out = []
        capped = sorted({pp.shape.sync_per_kind for pp in self.points if pp.shape.sync_per_kind})
        if capped:
            k = ", ".join(map(str, capped))
            out.append(
                f"  bridge points take {k} one-change sync(s) per kind (measure.sync.bridge_samples "
                f"{s.bridge_samples}), not {s.per_kind()}: they compare modes within "
                f"their kernel; below 6 per kind their medians have no 95% CI"
            )
        for pp in self.included:
            one = cm.mode_costs(
                self.target, pp.point.kernel, pp.point.mode, pp.shape.release, pp.shape.endpoints
            ).sync_one(pp.point.n_services)
            if one >= s.timeout_s:
                out.append(
                    f"  {pp.point.point_id}: one change is projected at {fmt_short(one)}, at or above "
                    f"measure.sync.timeout_s {s.timeout_s:g} s: its samples would be censored there; "
                    f"raise it (--set measure.sync.timeout_s=...)"
                )
        return out

    def real_kube_proxy_note(self) -> str | None:
        """For a lab plan: what real kube-proxy (the local target) is projected to cost for the cells
        the host kernel runs (iptables, nftables), so the choice of the lab is stated, not implied."""
        if self.target != "lab":
            return None
        host = [
            replace(cast(Any, pp.point), kernel="local")
            for pp in self.points
            if cm.kernel_kind(pp.point.kernel) == "host"
        ]
        if not host:
            return None
        cost = sum(pp.total for pp in project(self.scenario, "local", host))
        return (
            f"real kube-proxy (--target local) for the {len(host)} host-kernel points is projected at "
            f"{fmt_duration(cost)} (Services + EndpointSlices through the API server, kube-proxy's own "
            f"syncs); IPVS has no real-kube-proxy option within a budget (one `ipset add` fork per "
            f"entry: ~0.15 s per Service in the UML guest)"
        )

    def to_meta(self, run_dir=None) -> dict:
        return {
            "budget_s": self.budget_s,
            "minimum_s": round(self.minimum_s, 1),
            "projected_total_s": round(self.projected_total, 1),
            "points": {
                pp.point.point_id: {
                    "projected": {k: round(v, 2) for k, v in pp.projected.items()},
                    "projected_s": round(pp.total, 1),
                    "fits": pp.fits,
                    "sync_per_kind": self.per_kind(pp),
                    "kube_proxy_version": pp.shape.release,
                    "endpoints": pp.shape.endpoints,
                    "ruleset": cm.ruleset(
                        self.target,
                        pp.point.kernel,
                        pp.point.mode,
                        self.scenario.iptables_backend,
                        pp.shape.release,
                        pp.shape.endpoints,
                    ),
                    "full_sync_growth": cm.full_sync_growth(
                        self.target, pp.point.kernel, pp.point.mode, pp.shape.release, pp.shape.endpoints
                    ),
                    "full_sync_projected_s": round(pp.projected["sync_full"], 2),
                }
                for pp in self.points
            },
            "programmed_by": programmed_by(self.target),
            "over_budget": [
                {
                    "point_id": pp.point.point_id,
                    "projected_s": round(pp.total, 1),
                    "why": why_costly(pp),
                    "command": self.measure_command(pp, run_dir),
                }
                for pp in self.over_budget
            ],
        }


def programmed_by(target: str) -> str:
    """Who programs a point's dataplane on `target`, in words."""
    return {
        "lab": "the lab's dataplane (kube-proxy's rules for the release, applied by kpbench; sync "
        "times are the kernel's share only, a lower bound of kube-proxy's)",
        "local": "real kube-proxy (with etcd + kube-apiserver on this machine)",
        "cluster": "the cluster's real kube-proxy",
    }.get(target, target)


def why_costly(pp: PlannedPoint) -> str:
    """The phase that dominates a point's projected cost, e.g. 'sync_one 10m30s of it'."""
    phase, secs = max(pp.projected.items(), key=lambda kv: kv[1])
    return f"{phase} {fmt_short(secs)} of it"


def run_order(points: list) -> list:
    """The order the lab / local targets measure points in: grouped by kernel, first seen first."""
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(p.kernel, []).append(p)
    return [p for g in groups.values() for p in g]


def project(
    scenario, target: str, points: list, keep=lambda p, cost, so_far: True, refine=None
) -> list[PlannedPoint]:
    """Projected phases of `points` in run order; a point for which keep(point, cost, so_far) is
    False is marked not fitting, and the state it would have set up (setup, validation, API
    objects) is charged to the next kept point. refine(shape, phases), if given, turns the
    model's phases into the cost that keep() and so_far see (the phases kept are the model's)."""
    out: list[PlannedPoint] = []
    started: set[str] = set()
    validated: set[tuple[str, str, str]] = set()
    loaded: set[str] = set()  # kernels whose worker has started its load generator
    api_n: dict[str, int] = {}
    so_far = 0.0
    for p in run_order(points):
        release = getattr(p, "kube_proxy_version", "") or scenario.kube_proxy_version
        eps = getattr(p, "endpoints", None)
        eps = max(scenario.endpoint_counts()) if eps is None else eps
        shape = cm.PointShape(
            target, p.kernel, p.mode, p.n_services, release, eps, getattr(p, "sync_per_kind", None)
        )
        validate = scenario.validate_first and (p.kernel, p.mode, release) not in validated
        phases = cm.base_phases(
            scenario,
            shape,
            validate=validate,
            api_delta=p.n_services - api_n.get(p.kernel, 0),
            api_from=api_n.get(p.kernel, 0),
            load_start=p.kernel not in loaded,
        )
        phases = {"setup": 0.0 if p.kernel in started else cm.setup_cost(target, p.kernel), **phases}
        pp = PlannedPoint(p, shape, phases)  # the model's figures: the refiner's reference
        cost = sum(refine(shape, phases).values()) if refine else pp.total
        pp.fits = bool(keep(p, cost, so_far))
        if pp.fits:
            so_far += cost
            started.add(p.kernel)
            validated.add((p.kernel, p.mode, release))
            loaded.add(p.kernel)
            api_n[p.kernel] = p.n_services
        out.append(pp)
    return out


def minimum_points(points: list[Point]) -> list[Point]:
    """The smallest point of each (kernel, mode, release, endpoints): what 'one point of each
    mode' means (in a sweep over releases or endpoint counts: of each mode of each)."""
    best: dict[tuple, Point] = {}
    for p in points:
        k = (p.kernel, p.mode, getattr(p, "kube_proxy_version", ""), getattr(p, "endpoints", None))
        if k not in best or (p.n_services, p.rep) < (best[k].n_services, best[k].rep):
            best[k] = p
    return list(best.values())


def build_plan(
    scenario,
    target: str,
    kernel_plan: dict[str, list[str]],
    points: list,
    budget_text: str | float | None,
    kernel_reasons: Mapping[str, str] | None = None,
    budget_flag: str = "--budget",
) -> Plan:
    """Project `points` (those still to measure) and fit them into the budget; BudgetError for a
    budget that does not parse, is negative or cannot hold one point of each mode."""
    minimum = sum(pp.total for pp in project(scenario, target, minimum_points(points)))
    need = f"this plan needs at least {fmt_duration(minimum)} (one point of each mode)"
    try:
        budget = parse_duration(budget_text)
    except ValueError as e:
        hint = (
            "must not be negative"
            if str(e) == "negative"
            else "is not a duration (e.g. 30m, 1h30m, 900s, none)"
        )
        raise BudgetError(f"{budget_flag} {budget_text!r} {hint}; {need}") from None
    if budget is not None and points and budget < minimum:
        raise BudgetError(
            f"{budget_flag} {budget_text} is too small: {need}; "
            f"give --budget {fmt_duration(minimum * 1.2)} or more, or --budget none"
        )
    if budget is None:
        planned = project(scenario, target, points)
    else:
        # one point of each mode is always kept (the minimum); then the primary cells as far as the
        # budget goes, in run order, and the bridge between kernels with what remains
        chosen = {pp.point.point_id for pp in project(scenario, target, minimum_points(points))}
        cost = {pp.point.point_id: pp.total for pp in project(scenario, target, points)}
        left = budget - sum(cost[i] for i in chosen)
        bridge = bridge_cells(scenario, kernel_plan)
        ordered = run_order(points)
        is_bridge = [(p.mode, cm.kernel_kind(p.kernel)) in bridge for p in ordered]
        for p in [p for p, b in zip(ordered, is_bridge, strict=True) if not b] + [
            p for p, b in zip(ordered, is_bridge, strict=True) if b
        ]:
            if p.point_id not in chosen and cost[p.point_id] <= left:
                chosen.add(p.point_id)
                left -= cost[p.point_id]
        planned = project(scenario, target, points, lambda p, _cost, _so_far: p.point_id in chosen)
    reasons = dict(kernel_reasons or {})
    for mode, kernels in kernel_plan.items():
        reasons.setdefault(mode, kernel_reason(scenario, mode, kernels))
    return Plan(scenario, target, kernel_plan, reasons, budget, planned, minimum)


def bridge_cells(scenario, kernel_plan: Mapping[str, list[str]]) -> set[tuple[str, str]]:
    """(mode, kernel kind) cells measured only as the bridge between kernels (iptables in the UML
    guest beside the host, or a mode the scenario did not ask for): a budget serves them last."""
    cells: set[tuple[str, str]] = set()
    for mode, kernels in kernel_plan.items():
        kinds = {cm.kernel_kind(k) for k in kernels}
        if mode not in scenario.modes:
            cells |= {(mode, k) for k in kinds}
        elif kinds == {"host", "uml"}:
            cells.add((mode, "uml"))
    return cells


def kernel_reason(scenario, mode: str, kernels: list[str]) -> str:
    """Why `mode` runs where it runs (from the runner's kernel planning, harness.lab.caps)."""
    kinds = [cm.kernel_kind(k) for k in kernels]
    if scenario.kernel != "auto":
        return f"--kernel {scenario.kernel} asked for"
    if mode not in scenario.modes:
        return "added: iptables is measured on every kernel used, as the bridge between kernels"
    if kinds == ["uml"]:
        why = _host_lacks(mode, scenario.iptables_backend)
        if why is None:
            return "the host kernel could, but another mode needs the UML guest: every mode on one kernel"
        return f"{why}: measured in the UML guest"
    if "uml" in kinds and "host" in kinds:
        return "on both kernels: the bridge between the host and the UML guest"
    return "the host kernel runs it"


def _host_lacks(mode: str, iptables_backend: str) -> str | None:
    """What the host kernel lacks for `mode` (harness.lab.caps' probe, cached), or None."""
    from harness.lab import caps

    try:
        return caps.unsupported(caps.host_caps(), mode, iptables_backend)
    except Exception:  # noqa: BLE001 - converted to a reason: a failed probe is not worth failing the plan
        return "see `kpbench doctor`"
