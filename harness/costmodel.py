"""How long each phase of a point takes, as a function of the Service count N.

Every phase of a point is projected per target (lab / local), kernel (host / uml) and mode from
measured figures of this project's 2-core machines (the source is written beside each
coefficient), then refined with what the run has measured so far (`Refiner`): a phase's
projection for the remaining points is scaled by actual / projected of the largest point already
measured for the same phase, target, kernel and mode; an unmeasured key takes the median factor of
the other keys of its kernel (the machine being slower or faster than when the figures were taken).

Phases (seconds):
  setup      once per kernel group: guest boot, Python imports, lab up, etcd + apiserver (local)
  validate   once per mode and kernel group: the functional traffic matrix
  api        local target: creating / deleting Services + EndpointSlices up to N (~273 objects/s)
  sync_full  program N Services from empty on both nodes (and check them)
  connect    connect probes: random, first / last, direct to pod IPs
  load       the load phases (one per keepalive variant)
  sync_one   one-change syncs (add / update / delete) x count
  other      per-point rest (kube-proxy stop and cleanup, status writing)
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

PHASES = ("setup", "validate", "api", "sync_full", "connect", "load", "sync_one", "other")
API_OBJECTS_PER_S = 273.0  # stop 10: bench_api_create.py, 50,000 Services + slices, 273 objects/s overall
# the upstream IPAddress allocator (v1.37, which cannot turn it off) walks every IPAddress per
# allocation (ipallocator Used(), 79-87% of kube-apiserver's CPU past 15,000: docs/api-create-v1.37.2):
# seconds per object at S Services grow linearly. Slope from the CPU per object (apiserver + etcd +
# client) of bench_api_create.py --services 50000 --chunk 2500 --pprof (load-independent; that run's
# wall time, 76 min, was taken at load average ~10), scaled so 0-20k gives the 485 s measured on a
# quiet machine (--services 20000 --chunk 5000, load average ~3): 45 min projected for 0-50k.
API_UPSTREAM_S_PER_OBJECT = (0.0, 9.768e-07, 2.357e-03)  # c*S^2 + b*S + a


def api_seconds(scenario, n_from: int, n_to: int) -> float:
    """Creating (or deleting) Services + slices from n_from to n_to in the local apiserver: a flat
    rate with the bitmap allocator (local.apiserver_args), else the upstream allocator's growing
    cost per object, integrated over the Service count."""
    if any("MultiCIDRServiceAllocator=false" in a for a in scenario.local.apiserver_args):
        return 2 * abs(n_to - n_from) / API_OBJECTS_PER_S
    c, b, a = API_UPSTREAM_S_PER_OBJECT

    def cumulative(n: float) -> float:
        return c * n**3 / 3 + b * n**2 / 2 + a * n

    return 2 * abs(cumulative(n_to) - cumulative(n_from))


@dataclass(frozen=True)
class Poly:
    """a + b*N + c*N^2 seconds."""

    a: float = 0.0
    b: float = 0.0
    c: float = 0.0

    def __call__(self, n: int) -> float:
        return self.a + self.b * n + self.c * n * n

    @property
    def growth(self) -> str:
        return "quadratic" if self.c else "linear" if self.b else "constant"


@dataclass(frozen=True)
class KernelCosts:
    """Costs that depend on the kernel (and target) but not on the mode."""

    setup: float  # s per kernel group
    connect_probe: float  # s per connect attempt
    load_overhead: float  # s per load variant beyond its duration (users start, records out and in)
    validate: float  # s per mode
    other: float  # s per point
    load_start: float = 0.0  # s per worker: the load generator's start (`import locust`), kept after


# kernel costs. host lab: canned run tests/canned/run-real-host (wall 36.2 s, 4 points 34.9 s;
# connect 0.08 s for 500 probes; validate 0.22-0.33 s); make bench SERVICES=50000 (run
# 20261204T235306Z-45f075, one locust process per variant): load 21.1-21.6 s per
# point for two 10 s variants, so ~1.2 s per point beyond the phases, ~0.4 s of it the process
# start; validate 0.3 s per mode (host) and ~2.2 s (UML), "other" (outside the timed phases) ~0.
# uml lab: stop 9 run 20261201T073300Z-e5cab4 (boot 1.5-2.3 s, `import locust` 3.4 s, lab up 2-4 s);
# the 50k run: load 28.2-30.6 s per point for two 10 s variants (~9 s beyond them, two
# `import locust`), setup 16 s for both kernel groups. The load generator is now one process per
# worker (harness.measure.load.LoadGenerator): load_start is paid by a worker's first load phase.
# local: stop 10 runs (apiserver ready ~10 s; kube-proxy stop + cleanup + fidelity per point).
KERNEL = {
    ("lab", "host"): KernelCosts(
        setup=1.5, connect_probe=0.0002, load_overhead=0.4, validate=0.3, other=0.05, load_start=0.4
    ),
    # the pinned 50k run above: setup (boot, lab) ~7.3 s, validate 0.6 / 1.9 s (iptables / ipvs),
    # connect 30 s over 12 points of <= 3,100 probes, load 6.2 s per point of two adaptive 3 s
    # phases (7.5 s for the first: `import locust`)
    ("lab", "uml"): KernelCosts(
        setup=7.5, connect_probe=0.0008, load_overhead=0.0, validate=1.3, other=0.05, load_start=1.3
    ),
    ("local", "host"): KernelCosts(
        setup=15.0, connect_probe=0.0002, load_overhead=0.6, validate=5.0, other=5.0, load_start=0.4
    ),
    # local uml: the pinned local-ipvs-quick run above (setup 8.1 s, load 7.2 / 6.0 s per point of
    # two 3 s phases, other ~0.1 s); validate is stop 10's (unpinned, not re-measured)
    ("local", "uml"): KernelCosts(
        setup=8.0, connect_probe=0.0008, load_overhead=0.0, validate=60.0, other=1.0, load_start=1.2
    ),
}


@dataclass(frozen=True)
class ModeCosts:
    """sync_full: the whole phase (both nodes); sync_one: one change (capped at the sync timeout)."""

    sync_full: Poly
    sync_one: Poly
    ruleset: str


_IPT = "iptables-{backend}, one KUBE-SVC chain per Service: full sync linear in N"
_IPVS = "IPVS virtual servers + ipset hash sets: full sync linear in N"
_IPVS_UML = (
    "IPVS virtual servers + ipset hash sets, one address per ClusterIP on kube-ipvs0: full sync "
    "faster than linear in N in this guest (measured)"
)
_IPVS_FORK = (
    "IPVS + ipsets, kube-proxy forks one `ipset add` per entry (tens of ms per fork in UML): "
    "full sync linear in N, ~0.15 s per Service"
)
_NFT = (
    "nftables, one anonymous `numgen ... vmap` set per Service: full sync QUADRATIC in N (the kernel "
    "names each anonymous set by scanning every set of the table; kubernetes/kubernetes#139513)"
)

MODE = {
    # lab, host 6.18, refitted to the phases of make bench SERVICES=50000 (run 20261204T235306Z-45f075;
    # quiet 2-core machine): the sync_full phase (cleanup, node a timed, node b,
    # read-back) 0.15 / 0.26 / 0.66 / 1.45 / 2.87 / 11.2 s at 1k / 2k / 5k / 10k / 20k / 50k; one
    # change (phase / 21) 0.19 / 0.20 / 0.27 / 0.41 / 0.94 / 2.21 s (the model before: 6 s and 1.37 s
    # at 50k, the source of most of the run's -57% / -33% full / one-change under-projection)
    ("lab", "host", "iptables"): ModeCosts(Poly(0.1, 0.00022), Poly(0.1, 0.000042), _IPT),
    # no IPVS on this host: a kernel that has it is assumed ~3x faster than the UML guest
    ("lab", "host", "ipvs"): ModeCosts(Poly(0.5, 0.0003), Poly(0.12, 0.000001), _IPVS),
    # nft -f per node: 0.24 s at 1k, 3.2 s at 5k (lab vs real table), 31 s at 10k (stop 9); one
    # change (v1.37, the 50k run) 0.14 / 0.16 / 0.16 / 0.17 / 0.21 / 0.36 s at 1k .. 50k
    ("lab", "host", "nftables"): ModeCosts(Poly(0.1, 0.0001, 4e-7), Poly(0.14, 0.000004), _NFT),
    # lab, kpbench UML 6.1, the guest pinned to one host CPU (harness.lab.uml.host_cpu; before
    # that, UML's ptrace round trips woke the idle second CPU and every figure here was 2-3x
    # higher on a quiet machine). Fitted to `kpbench run default --services 50000 --budget none
    # --set measure.sync.bridge_samples=null` on a quiet machine (run 20261205T082702Z-013c2a,
    # every point ok, 14m59s): iptables one change (phase / 18; iptables-legacy-restore --noflush
    # reads and rewrites the whole table) 0.37 / 0.53 / 1.03 / 2.23 / 4.26 / 9.40 s and the
    # sync_full phase 0.5 / 1.3 / 1.9 / 3.2 / 6.1 / 17.6 s at 1k / 2k / 5k / 10k / 20k / 50k.
    # Checked on the next run, `make bench SERVICES=50000` (20261205T085713Z-695f5c,
    # docs/example-50k): projected 909 s against 876 s measured
    ("lab", "uml", "iptables"): ModeCosts(Poly(0.3, 0.00034), Poly(0.3, 0.00019), _IPT),
    # ipvs in the same run: the sync_full phase 1.6 / 3.2 / 5.3 / 10.1 / 25.2 / 107.5 s (faster
    # than linear in this guest); one change (one `ipset restore` and one iptables-legacy-restore
    # of the small ipvs ruleset after the netlink calls) 0.14 / 0.13 / 0.14 / 0.16 s at 1k / 2k /
    # 5k / 10k once the apply no longer forked a `cat` of kube-ipvs0's index (run
    # 20261205T085047Z-481664, `--modes ipvs`; with the fork 0.27-0.34 s up to 50k)
    ("lab", "uml", "ipvs"): ModeCosts(Poly(0.5, 0.0009, 2.5e-8), Poly(0.13, 0.000003), _IPVS_UML),
    # nftables full 13.9 / 23 / 79 / ~340 s, 20k node a alone 617 s; sync_one phase 23 / 27 / 28 / 30 s
    # (stop 9, before the guest was pinned to one CPU: likely 2-3x high now, not re-measured)
    ("lab", "uml", "nftables"): ModeCosts(Poly(10.0, 0.0, 3.3e-6), Poly(1.05, 0.000038), _NFT),
    # local (real kube-proxy v1.34.12), host (stop 10, runs 20261201T101010Z-0cf45c and
    # 20261201T103756Z-553d07): sync_full_s 0.69 / 1.83 / 3.4 / 7.2 s at 1k / 5k / 10k / 20k; the
    # phase also stops and cleans the previous mode and runs the fidelity dump (point 122 / 160 s
    # at 10k / 20k); one change 0.088 / 0.42 / 0.99 / 2.3 s
    ("local", "host", "iptables"): ModeCosts(Poly(3.0, 0.002), Poly(0.05, 0.00011), _IPT),
    # nftables: sync_full_s 1.48 / 10.8 / 30.7 / 228 s; phase (point 359 / 1,159 s at 10k / 20k
    # minus changes and load) ~156 / 507 s; one change 0.43 / 2.8 / 8.6 / >=30 s
    ("local", "host", "nftables"): ModeCosts(Poly(1.0, 0.003, 1.0e-6), Poly(0.1, 0.0004, 5e-8), _NFT),
    ("local", "host", "ipvs"): ModeCosts(Poly(3.0, 0.003), Poly(0.1, 0.0001), _IPVS),
    # local UML, the guest pinned to one host CPU (`kpbench run local-ipvs-quick --services 100,300
    # --set validate=false`, run 20261205T091304Z-96b265, quiet): the sync_full phase 19.0 / 49.1 s
    # at 100 / 300 Services (one `ipset add` fork per entry), one change 3.1 / 3.7 s (unpinned,
    # stop 10: full sync 67 / 175 s, one change 16 / 30 s)
    ("local", "uml", "ipvs"): ModeCosts(Poly(4.0, 0.15), Poly(2.8, 0.003), _IPVS_FORK),
    # not measured: the lab's UML costs plus kube-proxy's forks (~1 s per sync in UML)
    ("local", "uml", "iptables"): ModeCosts(Poly(8.0, 0.001), Poly(1.5, 0.0017), _IPT),
    ("local", "uml", "nftables"): ModeCosts(Poly(15.0, 0.0, 5e-6), Poly(2.0, 0.0001), _NFT),
}


# nftables' full sync per ruleset family (harness.releases), relative to the figures above (taken
# with v1.34.12): the quadratic term's factor, from `nft -f` of kube-proxy's ruleset on the host
# kernel, 1 endpoint per Service: 5,000 Services v1.34.12 5.24 s, v1.36.3 3.51 s, v1.37.2 0.43 s;
# 10,000: v1.34.12 19.3 s, v1.37.2 0.46 s; 2 endpoints, v1.37.2, 5,000: 3.62 s.
NFT_FAMILY_QUADRATIC = {"v1.33": 1.0, "v1.34": 1.0, "v1.36": 0.67, "v1.37": 0.69}
_NFT_FAMILY = {
    "v1.36": (
        "nftables, one anonymous `numgen ... map` per Service (v1.36): full sync QUADRATIC in N, "
        "~0.67x v1.34's (kubernetes/kubernetes#139513)"
    ),
    "v1.37": (
        "nftables, a plain `dnat` for single-endpoint Services and one anonymous map per "
        "multi-endpoint Service (v1.37): full sync QUADRATIC in N with 2+ endpoints (~0.69x v1.34's)"
    ),
}
# v1.37, one endpoint: no anonymous set, `nft -f` 0.43 / 0.46 s per node at 5,000 / 10,000 on the
# host (~0.00009 s per Service for both nodes). What is projected is the sync_full phase (both
# nodes, cleanup, read-back): in the 50k run (v1.37.2, 1 endpoint, host) 0.32 / 0.52 / 1.13 / 2.26 /
# 5.47 / 15.7 s at 1k / 2k / 5k / 10k / 20k / 50k, 0.00031 s per Service with the base's linear
# term. The UML guest assumed ~3x slower, as its iptables' linear coefficient is (0.0007 vs
# 0.00022): not measured for this family.
NFT_V137_LINEAR = {"host": 0.00021, "uml": 0.0006}
# v1.37, one endpoint, one change in the UML guest (the base figure above is v1.34's, whose add
# names a new anonymous set by scanning every set of the table): with the paced poller the phase
# per change was 0.26 / 0.39 s at 2k / 10k (s13, run 20261205T054706Z-4efd72, `--kernel uml
# --modes nftables`, load average ~1.5), against 1.13 / 1.43 s projected before. The host's
# figure (Poly(0.14, 0.000004)) already comes from v1.37 (the 50k run).
NFT_V137_SYNC_ONE = {("lab", "uml"): Poly(0.2, 0.000019)}
_NFT_V137_ONE = (
    "nftables, a plain `dnat` per single-endpoint Service, no anonymous set (v1.37, "
    "kubernetes/kubernetes#140723): full sync linear in N"
)


def release_costs(
    base: ModeCosts, mode: str, release: str, endpoints: int, kernel: str = "host", target: str = "lab"
) -> ModeCosts:
    """`base` (figures taken with v1.34.12) adjusted to the ruleset family `mode` programs in
    `release` with `endpoints` per Service (only nftables' families differ in cost)."""
    if mode != "nftables" or not release:
        return base
    from harness import releases

    fam = releases.family(mode, release)
    if fam == "v1.37" and endpoints <= 1:
        sf = base.sync_full
        kind = kernel_kind(kernel)
        one = NFT_V137_SYNC_ONE.get((cost_target(target), kind), base.sync_one)
        return ModeCosts(Poly(sf.a, sf.b + NFT_V137_LINEAR[kind]), one, _NFT_V137_ONE)
    f = NFT_FAMILY_QUADRATIC.get(fam, 1.0)
    sf = base.sync_full
    return ModeCosts(Poly(sf.a, sf.b, sf.c * f), base.sync_one, _NFT_FAMILY.get(fam, base.ruleset))


def mode_costs(target: str, kernel: str, mode: str, release: str = "", endpoints: int = 1) -> ModeCosts:
    """The coefficients of a mode (of `release`'s ruleset family, if given); a mode registered
    without figures of its own (harness.modes) is projected as iptables on the same kernel, and
    its ruleset line says so."""
    key = (cost_target(target), kernel_kind(kernel))
    hit = MODE.get((*key, mode))
    if hit is not None:
        return release_costs(hit, mode, release, endpoints, kernel, target)
    base = MODE[(*key, "iptables")]
    return ModeCosts(
        base.sync_full, base.sync_one, f"{mode}: no measured cost figures yet, projected as iptables"
    )


def kernel_kind(kernel: str) -> str:
    """The runner's kernel names (host, uml, local, local-uml, cluster) -> host | uml."""
    return "uml" if "uml" in kernel else "host"


def cost_target(target: str) -> str:
    # the cluster target has no figures of its own: a real kube-proxy, like the local target
    return "lab" if target == "lab" else "local"


def ruleset(
    target: str,
    kernel: str,
    mode: str,
    iptables_backend: str = "legacy",
    release: str = "",
    endpoints: int = 1,
) -> str:
    return mode_costs(target, kernel, mode, release, endpoints).ruleset.format(backend=iptables_backend)


def full_sync_growth(target: str, kernel: str, mode: str, release: str = "", endpoints: int = 1) -> str:
    return mode_costs(target, kernel, mode, release, endpoints).sync_full.growth


@dataclass
class PointShape:
    """What a point costs depends on: its place (target, kernel, mode, N) and the scenario's counts."""

    target: str
    kernel: str
    mode: str
    n: int
    release: str = ""  # the kube-proxy release (its ruleset family's cost)
    endpoints: int = 1
    sync_per_kind: int | None = None  # the point's own one-change cap per kind (None: the scenario's)


def sync_changes(scenario, per_kind: int | None = None) -> int:
    """Expected one-change syncs of a point: the cap per kind (the scenario's, or the point's own
    `per_kind`), or with adaptive sampling the floor plus half the way to the cap (the refiner
    corrects it with what the run spends)."""
    from harness.measure.adaptive import sync_stop_rule

    s = scenario.measure.sync
    cap = s.per_kind(per_kind)
    if getattr(s, "adaptive", False):
        rule = sync_stop_rule(cap)
        cap = min(cap, -(-(rule.floor + cap) // 2))
    return cap * len(s.kinds)


# one change with the sync poller unpaced (measure.sync.poll_max_cpu_share null: an attempt every
# 1 ms whatever it costs), where that differs: a 50k run's UML iptables figures before the guest
# was pinned to one CPU (not re-measured since)
UNPACED_SYNC_ONE = {("lab", "uml", "iptables"): Poly(0.2, 0.0007)}


def base_phases(
    scenario,
    shape: PointShape,
    *,
    validate: bool,
    api_delta: int,
    api_from: int | None = None,
    load_start: bool = True,
) -> dict[str, float]:
    """Projected seconds per phase of one point, from the measured coefficients alone. load_start:
    the point starts the worker's load generator (its first load phase: `import locust`)."""
    key = (cost_target(shape.target), kernel_kind(shape.kernel))
    kc, mc = KERNEL[key], mode_costs(shape.target, shape.kernel, shape.mode, shape.release, shape.endpoints)
    m, n = scenario.measure, shape.n
    one = mc.sync_one
    if getattr(m.sync, "poll_max_cpu_share", None) is None:
        one = UNPACED_SYNC_ONE.get((*key, shape.mode), one)
    probes = m.connect.samples + 2 * m.connect.edge_samples + m.connect.direct_samples
    out = {
        "validate": kc.validate if validate else 0.0,
        "api": (
            api_seconds(scenario, shape.n - api_delta if api_from is None else api_from, shape.n)
            if key[0] == "local"
            else 0.0
        ),
        "sync_full": mc.sync_full(n),
        "connect": probes * kc.connect_probe,
        "load": (
            kc.load_start * load_start + len(m.load.keepalive) * (load_duration(scenario) + kc.load_overhead)
            if m.load.enabled and m.load.keepalive
            else 0.0
        ),
        "sync_one": sync_changes(scenario, shape.sync_per_kind) * min(one(n), m.sync.timeout_s),
        "other": kc.other + disruption_cost(scenario, mc, n),
    }
    return out


# an adaptive load phase stops at the first check the CI of its median is met: the 46 phases of the
# 50k run (200 requests/s) replayed through the rule (checks every 0.5 s from 3 s) stop at 3.0 s in
# 39, at 3.5-7.5 s in the others: 3.3 s on average
LOAD_ADAPTIVE_EXTRA_S = 0.3


def load_duration(scenario) -> float:
    """Expected seconds of one load phase: its duration, or for an adaptive phase its minimum
    plus the mean wait beyond it (the refiner corrects it with what the run spends)."""
    L = scenario.measure.load
    if getattr(L, "adaptive", False) and L.min_duration_s < L.duration_s:
        return min(L.duration_s, L.min_duration_s + LOAD_ADAPTIVE_EXTRA_S)
    return L.duration_s


def disruption_cost(scenario, mc: ModeCosts, n: int) -> float:
    """The disruption phase (measure.disruption; counted in `other`): per sync kind two probing
    windows and one attempt timeout, plus its syncs (full: three warm rewrites, cold: one from
    empty, each one-change kind: the change and its undo). mc.sync_full covers both nodes: an
    overestimate of node a's rewrite alone."""
    d = scenario.measure.disruption
    if not d.enabled:
        return 0.0
    changes = sum(k in d.kinds for k in ("add", "update", "delete"))
    return (
        len(d.kinds) * (2 * d.window_s + d.timeout_ms / 1000)
        + (3 * ("full" in d.kinds) + ("cold" in d.kinds)) * mc.sync_full(n)
        + 2 * changes * min(mc.sync_one(n), scenario.measure.sync.timeout_s)
    )


def setup_cost(target: str, kernel: str) -> float:
    return KERNEL[(cost_target(target), kernel_kind(kernel))].setup


def actual_phases(status: Mapping) -> dict[str, float]:
    """A finished point's status (worker's `phases` and `seconds`) -> seconds per phase of PHASES
    (a failed point's time before its error, in phases not reported, counts as `other`)."""
    ph = status.get("phases") or {}
    api = float(ph.get("api_reconcile_s", 0.0))
    out = {
        "validate": float(ph.get("validate_s", 0.0)),
        "api": api,
        "sync_full": max(
            0.0, float(ph.get("sync_full_s", 0.0)) - api
        ),  # the local worker times api inside it
        "connect": float(ph.get("connect_s", 0.0)),
        "load": sum(float(v) for k, v in ph.items() if k.startswith("load_")),
        "sync_one": float(ph.get("sync_one_s", 0.0)),
    }
    seconds = status.get("seconds")
    out["other"] = max(0.0, float(seconds) - sum(out.values())) if seconds is not None else 0.0
    return out


def _variant(shape: PointShape) -> str:
    """What the refiner keeps factors per: the mode, and its release and endpoint count (families
    cost differently, and the model of one is no guide to another's error)."""
    return f"{shape.mode}@{shape.release}/e{shape.endpoints}" if shape.release else shape.mode


MIN_REFINE_S = 0.5  # below this a phase's time is mostly noise: not used to rescale


@dataclass
class Refiner:
    """actual / projected per (target, kernel, mode, phase), from the largest N measured so far."""

    factors: dict[tuple, tuple[int, float]] = field(default_factory=dict)

    def observe(self, shape: PointShape, projected: Mapping[str, float], actual: Mapping[str, float]) -> None:
        for phase, p in projected.items():
            a = actual.get(phase)
            if a is None or phase in ("setup", "validate", "other") or max(p, a) < MIN_REFINE_S or p <= 0:
                continue
            key = (shape.target, kernel_kind(shape.kernel), _variant(shape), phase)
            prev = self.factors.get(key)
            if prev is None or shape.n >= prev[0]:
                self.factors[key] = (shape.n, min(max(a / p, 0.05), 20.0))

    def factor(self, shape: PointShape, phase: str) -> float:
        hit = self.factors.get((shape.target, kernel_kind(shape.kernel), _variant(shape), phase))
        if hit:
            return hit[1]
        same_kernel = [
            f
            for (t, k, _, _), (_, f) in self.factors.items()
            if t == shape.target and k == kernel_kind(shape.kernel)
        ]
        return statistics.median(same_kernel) if same_kernel else 1.0

    def refine(self, shape: PointShape, phases: Mapping[str, float]) -> dict[str, float]:
        return {ph: s * self.factor(shape, ph) for ph, s in phases.items()}
