"""Scenario files: YAML validated by a strict schema, resolved into the points of a sweep."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import releases as versions
from harness.errors import UserError
from harness.modes import MODES

# pydantic checks `modes` against the registry (and its error lists the registered names)
ModeName = Literal[MODES]  # type: ignore[valid-type]
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"


class ScenarioError(UserError, ValueError):
    """A scenario is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ServicesSpec(_Strict):
    """Either an explicit list of counts, or a maximum that expands to a 1-2-5 log-spaced sweep."""

    counts: list[int] | None = None
    max: int | None = Field(default=None, ge=1)
    min: int = Field(default=1000, ge=1)

    @field_validator("counts")
    @classmethod
    def _positive(cls, v):
        if v is not None:
            if not v:
                raise ValueError("counts must not be empty")
            if any(c < 1 for c in v):
                raise ValueError("every Service count must be >= 1")
        return v

    @model_validator(mode="after")
    def _one_of(self):
        if (self.counts is None) == (self.max is None):
            raise ValueError("give either services.counts or services.max")
        return self

    def expand(self) -> list[int]:
        if self.counts is not None:
            return sorted(set(self.counts))
        assert self.max is not None  # _one_of: max is given when counts is not
        return log_sweep(self.min, self.max)


def log_sweep(lo: int, hi: int) -> list[int]:
    """1-2-5 series from min(lo, hi) up to hi, always ending at hi: 1k, 2k, 5k, 10k, 20k, 50k."""
    lo = min(lo, hi)
    out, decade = [], 1
    while decade <= hi:
        for m in (1, 2, 5):
            v = m * decade
            if lo <= v < hi:
                out.append(v)
        decade *= 10
    return out + [hi]


class LabSpec(_Strict):
    pods_per_node: int = Field(default=2, ge=1, le=32)
    service_cidr: str = "10.96.0.0/12"
    pod_cidr: str = "10.244.0.0/16"
    uml_mem: str = Field(default="4G", pattern=r"^\d+[MG]$")


class ModelOptions(_Strict):
    # endpoints per Service; a list ([1, 2]) is one more axis of the sweep, interleaved like modes
    endpoints: int | list[int] = Field(default=1)
    ports_per_service: int = Field(default=1, ge=1, le=16)
    node_ports: int = Field(default=0, ge=0)
    affinity: int = Field(default=0, ge=0)


class ConnectSpec(_Strict):
    samples: int = Field(default=2000, ge=1)
    edge_samples: int = Field(default=300, ge=0)
    direct_samples: int = Field(default=500, ge=0)
    timeout_ms: float = Field(default=1000, gt=0)
    adaptive: bool = Field(
        default=True,
        description="the sample counts are caps: stop once each kind's median "
        "95% CI is within +-5% (never below the report's floor)",
    )


class SyncSpec(_Strict):
    samples: int = Field(default=21, ge=1)
    bridge_samples: int | None = Field(
        default=None,
        ge=1,
        description="the cap of a bridge point (iptables measured on a second kernel only to "
        "compare modes within each kernel; null: `samples`): it is spread over the kinds like "
        "`samples`, and below the report's floor of 6 per kind its medians have no 95% CI",
    )
    kinds: list[Literal["add", "update", "delete"]] = ["add", "update", "delete"]
    poll_interval_ms: float = Field(default=1.0, gt=0, le=1.0)
    poll_max_cpu_share: float | None = Field(
        default=0.15,
        gt=0,
        le=1,
        description="the sync poller never takes more than this share of a CPU: where one attempt "
        "is expensive (UML, thousands of rules) attempts are spaced wider than poll_interval_ms, "
        "and each sample's sync_resolution_s records the spacing reached (null: no pacing)",
    )
    timeout_s: float = Field(default=30, gt=0)
    adaptive: bool = Field(
        default=True,
        description="samples is a cap per kind: stop once the 95% CI of "
        "each kind's median is within +-5% (never below the report's floor)",
    )

    def per_kind(self, point_cap: int | None = None, kinds: int | None = None) -> int:
        """One-change syncs per kind: `samples` (per point) spread over the kinds measured (`kinds`:
        how many, default all), or a point's own cap where it has one (a bridge point's)."""
        return point_cap or -(-self.samples // (kinds or len(self.kinds)))

    def bridge_per_kind(self) -> int | None:
        """A bridge point's cap per kind (`bridge_samples` spread over the kinds), or None where
        that is not below per_kind()."""
        if self.bridge_samples is None:
            return None
        cap = -(-self.bridge_samples // len(self.kinds))
        return cap if cap < self.per_kind() else None


class LoadSpec(_Strict):
    enabled: bool = True
    users: int = Field(default=8, ge=1)
    rate: float = Field(default=200, gt=0, description="target requests per second, all users")
    duration_s: float = Field(default=10, gt=0)
    keepalive: list[bool] = [False, True]
    timeout_s: float = Field(default=2, gt=0)
    adaptive: bool = Field(
        default=True,
        description="duration_s is a cap: a phase stops once the 95% CI of its median request "
        "latency is within +-5% (never before min_duration_s nor below the report's floor)",
    )
    min_duration_s: float = Field(
        default=3.0, gt=0, description="adaptive: the shortest phase (seconds at the rate)"
    )


class DisruptionSpec(_Strict):
    """Background prober during syncs (harness.measure.disrupt)."""

    enabled: bool = False
    rate: float = Field(default=500, gt=0, description="new connections per second, open loop")
    keepalive_conns: int = Field(default=2, ge=0)
    window_s: float = Field(default=2.0, gt=0, description="probing before and after each sync")
    timeout_ms: float = Field(default=1000, gt=0)
    targets: int = Field(default=16, ge=1, description="Services probed (programmed before and after)")
    # cold last: its refused attempts leave conntrack entries that a reused source port can hit
    kinds: list[Literal["full", "cold", "add", "update", "delete"]] = [
        "full",
        "add",
        "update",
        "delete",
        "cold",
    ]
    baseline: bool = Field(default=True, description="warm full sync also timed without the prober")


class MeasureSpec(_Strict):
    connect: ConnectSpec = ConnectSpec()
    sync: SyncSpec = SyncSpec()
    load: LoadSpec = LoadSpec()
    disruption: DisruptionSpec = DisruptionSpec()


class IPVSSpec(_Strict):
    scheduler: str = Field(default="rr", pattern=r"^[a-z]{1,8}$")


class ClusterSpec(_Strict):
    """Options of the cluster target (an existing cluster through a kubeconfig)."""

    endpoints_via: Literal["slices", "selector"] = "slices"
    qps: float = Field(default=20.0, gt=0)
    burst: int = Field(default=40, ge=1)
    create_workers: int = Field(default=8, ge=1)
    image: str | None = None
    probe_nodes: list[str] = []
    probe_count: int = Field(default=1, ge=1)
    backend_replicas: int = Field(default=0, ge=0)
    locust_workers: int = Field(default=2, ge=1)
    # "always": kube-proxy --cleanup Jobs on every node at every mode switch and restore, not only
    # between iptables and ipvs (whose leftovers the other mode does not remove)
    cleanup: Literal["auto", "always"] = "auto"
    min_sync_period: str | None = "1ms"  # 0s would be defaulted to 1s by kube-proxy
    sync_period: str | None = None
    metrics_bind_address: str | None = "0.0.0.0:10249"
    rollout_timeout_s: float = Field(default=600, gt=0)
    cleanup_timeout_s: float = Field(default=300, gt=0)
    ready_timeout_s: float = Field(default=300, gt=0)
    namespace_wait_s: float = Field(default=120, gt=0)


FLAT_ALLOCATOR_ARGS = ["--emulated-version=1.33", "--feature-gates=MultiCIDRServiceAllocator=false"]


def default_apiserver_args(kube_version: str) -> list[str]:
    """The local apiserver's flags for a release: the flat ClusterIP allocator where the release
    can still emulate 1.33 (kube-apiserver emulates down to its minor - 3: v1.36 at most). v1.37
    refuses both ("emulation version 1.33 is not between [1.34, 1.37.0]"; at 1.34 the gate is
    locked to true), so it runs with the upstream IPAddress allocator."""
    return list(FLAT_ALLOCATOR_ARGS) if versions.parse(kube_version)[1] - 3 <= 33 else []


class LocalSpec(_Strict):
    """Options of the local target (etcd + kube-apiserver + kube-proxy built by `make kube`)."""

    # the old name of the top-level kube_proxy_version (kept working; the two must agree)
    kube_version: str | None = None
    create_qps: float = Field(default=2000, gt=0)
    create_concurrency: int = Field(default=16, ge=1)
    # kube-proxy's config defaulting turns minSyncPeriod 0 into 1s: "1ms" is "sync at once"
    min_sync_period: str = "1ms"
    sync_period: str = "30s"
    # upstream 1.34's IPAddress allocator lists every IPAddress per allocation (~260 objects/s at
    # 5k Services); these flags restore the flat bitmap allocator. [] for the upstream default.
    # Unset: default_apiserver_args(kube_proxy_version) (v1.37 cannot take these flags).
    apiserver_args: list[str] = FLAT_ALLOCATOR_ARGS
    ready_timeout_s: float = Field(default=120, gt=0, description="apiserver /readyz and kube-proxy start")
    sync_timeout_s: float = Field(
        default=600, gt=0, description="kube-proxy start -> all Services programmed"
    )
    # kube-proxy's nodePortAddresses; "primary" = the node's own address, as the lab programs
    # NodePorts ([] leaves it unset: every local IP, localhost included, and KUBE-FIREWALL)
    node_port_addresses: list[str] = ["primary"]
    fidelity: bool = True  # compare kube-proxy's kernel state with the lab dataplane's after each full sync


class Scenario(_Strict):
    name: str = "unnamed"
    description: str = ""
    target: Literal["lab", "local", "cluster"] = "lab"
    # the kube-proxy release: the ruleset family the lab renders per mode, and the binaries the
    # local target runs (`make kube KUBE_VERSION=...`)
    # (a comma list "v1.34.12,v1.37.2", or `versions`, sweeps releases; kube_proxy_version is then
    # the newest of them: the local target's apiserver release)
    kube_proxy_version: str = versions.DEFAULT_KUBE_VERSION
    # kube-proxy releases measured as one more axis beside modes and counts, interleaved like modes
    versions: list[str] | None = None
    modes: list[ModeName] = list(MODES)
    services: ServicesSpec = ServicesSpec(max=1000)
    model: ModelOptions = ModelOptions()
    repetitions: int = Field(default=1, ge=1, le=100)
    kernel: Literal["auto", "host", "uml"] = "auto"
    iptables_backend: Literal["legacy", "nft"] = "legacy"
    seed: int = 1
    budget: str | float = Field(
        default="none", description="time budget of `kpbench run`: 30m, 1h30m, 900s or none"
    )
    validate_first: bool = Field(default=True, alias="validate")
    lab: LabSpec = LabSpec()
    ipvs: IPVSSpec = IPVSSpec()
    measure: MeasureSpec = MeasureSpec()
    local: LocalSpec = LocalSpec()
    cluster: ClusterSpec = ClusterSpec()
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("versions", mode="before")
    @classmethod
    def _versions_list(cls, v):
        return split_list(v) if isinstance(v, str) else v

    @field_validator("modes")
    @classmethod
    def _modes(cls, v):
        if not v:
            raise ValueError("at least one mode is needed")
        if len(set(v)) != len(v):
            raise ValueError("a mode is listed twice")
        return v

    @model_validator(mode="after")
    def _kube_proxy_version(self):
        old = self.local.kube_version
        listed = split_list(self.kube_proxy_version)
        if len(listed) > 1:  # --set kube_proxy_version=v1.34.12,v1.37.2
            if self.versions and sorted_releases(self.versions) != sorted_releases(listed):
                raise ValueError(
                    f"kube_proxy_version {self.kube_proxy_version} and versions {self.versions} "
                    "differ: set one of them"
                )
            self.versions = listed
        if self.versions:
            sweep = sorted_releases(self.versions)
            if not sweep:
                raise ValueError("versions must not be empty")
            if (
                "kube_proxy_version" in self.model_fields_set
                and len(listed) == 1
                and versions.normalize(listed[0]) != sweep[-1]
            ):
                raise ValueError(
                    f"kube_proxy_version {listed[0]} is not the newest of versions {', '.join(sweep)}: "
                    "set versions only"
                )
            if old is not None and versions.normalize(old) != sweep[-1]:
                raise ValueError(
                    f"local.kube_version {old} is not the newest of versions {', '.join(sweep)}: "
                    "set versions only"
                )
            self.versions = sweep
            self.kube_proxy_version = sweep[-1]
            old = None
        if old is not None:
            old = versions.normalize(old)
            if (
                "kube_proxy_version" in self.model_fields_set
                and versions.normalize(self.kube_proxy_version) != old
            ):
                raise ValueError(
                    f"kube_proxy_version {self.kube_proxy_version} and local.kube_version {old} "
                    "differ: set kube_proxy_version only"
                )
            self.kube_proxy_version = old
        self.kube_proxy_version = versions.normalize(self.kube_proxy_version)
        for release in self.releases():  # one line naming the release and the known ones, never a fallback
            for mode in self.modes:
                versions.family(mode, release)
        if self.target == "cluster" and len(self.releases()) > 1:
            raise ValueError(
                "the cluster target measures the kube-proxy the cluster runs: a version sweep "
                "needs --target lab or local"
            )
        self.local.kube_version = self.kube_proxy_version
        if "apiserver_args" not in self.local.model_fields_set:
            self.local.apiserver_args = default_apiserver_args(self.kube_proxy_version)
        return self

    @model_validator(mode="after")
    def _endpoints(self):
        eps = self.model.endpoints
        eps = sorted(set(eps)) if isinstance(eps, list) else [eps]
        if not eps:
            raise ValueError("model.endpoints must not be empty")
        if any(e < 0 or e > 1000 for e in eps):
            raise ValueError("model.endpoints: every count must be between 0 and 1000")
        if len(eps) > 1 and self.target == "cluster":
            raise ValueError("model.endpoints: a list of endpoint counts needs --target lab or local")
        self.model.endpoints = eps if len(eps) > 1 else eps[0]
        return self

    def releases(self) -> list[str]:
        """The kube-proxy releases of the sweep, oldest first (one unless `versions` lists several)."""
        return list(self.versions) if self.versions else [self.kube_proxy_version]

    def endpoint_counts(self) -> list[int]:
        """Endpoints per Service of the sweep, ascending (one unless model.endpoints is a list)."""
        eps = self.model.endpoints
        return list(eps) if isinstance(eps, list) else [eps]

    def counts(self) -> list[int]:
        return self.services.expand()

    def sweep(self, extra_modes: Sequence[str] = ()) -> list[tuple[int, int, str]]:
        """(Service count, repetition, mode) in run order: counts ascending, modes interleaved and
        rotated per repetition (slow drift of the machine must not look like a mode effect)."""
        modes = list(self.modes) + [m for m in extra_modes if m not in self.modes]
        order = []
        for n in self.counts():
            for rep in range(1, self.repetitions + 1):
                shift = (rep - 1) % len(modes)
                order += [(n, rep, mode) for mode in modes[shift:] + modes[:shift]]
        return order

    def resolved(self) -> dict[str, Any]:
        """The fully expanded scenario, as saved beside the results."""
        d = self.model_dump(by_alias=True)
        d["services"] = {"counts": self.counts()}
        if not self.versions:
            d.pop("versions")
        return d


def split_list(text: str) -> list[str]:
    """'v1.34.12, v1.37.2' -> ['v1.34.12', 'v1.37.2']."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


def sorted_releases(items: list[str]) -> list[str]:
    """Releases normalized, without repeats, oldest first (UnknownRelease for one that is not a release)."""
    return sorted({versions.normalize(v) for v in items}, key=versions.parse)


def _format_error(source: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    extra = f" (and {len(err.errors()) - 1} more problems)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{extra}"


def find_scenario(name_or_path: str | None) -> Path:
    """A path, or a name of a file under scenarios/ ("quick" -> scenarios/quick.yaml)."""
    if not name_or_path:
        name_or_path = "default"
    p = Path(name_or_path)
    if p.exists():
        return p
    for cand in (SCENARIO_DIR / name_or_path, SCENARIO_DIR / f"{name_or_path}.yaml"):
        if cand.exists():
            return cand
    known = ", ".join(sorted(q.stem for q in SCENARIO_DIR.glob("*.yaml")))
    raise ScenarioError(f"scenario {name_or_path!r} not found: give a path or one of {known}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """'measure.load.rate=500' -> (['measure','load','rate'], 500), the value parsed as YAML."""
    if "=" not in item:
        raise ScenarioError(f"--set {item!r}: expected key=value, e.g. --set measure.load.rate=500")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ScenarioError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    data = copy.deepcopy(data)
    for path, value in overrides:
        node = data
        for p in path[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ScenarioError(f"--set {'.'.join(path)}: {p} is not a section")
            node = node.setdefault(p, {})
        node[path[-1]] = value
        if path == ["kube_proxy_version"]:  # the release(s) given on the command line replace a versions list
            data.pop("versions", None)
    return data


def load_scenario(
    name_or_path: str | None = None,
    overrides: Sequence[tuple[list[str], Any]] = (),
    source: str | None = None,
    data: dict | None = None,
) -> Scenario:
    """Read, override and validate a scenario; errors name the file and the field."""
    if data is None:
        path = find_scenario(name_or_path)
        source = source or str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ScenarioError(f"{source}:{where} not valid YAML: {getattr(e, 'problem', e)}") from None
    source = source or "scenario"
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping of keys at the top level")
    data = apply_overrides(data, list(overrides))
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise ScenarioError(_format_error(source, e)) from None
