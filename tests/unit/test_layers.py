"""The harness's layers: no module imports from a layer above its own.

Every module under harness/ is declared here with its layer; a module missing from the table
fails the test (declare it when you add it). Imports are read with ast, function-level imports
included, so a lazy `from harness.x import y` inside a function counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "harness"

# lowest first; a module may import from its own layer and the ones below it
LAYERS: dict[str, list[str]] = {
    "base": [
        "harness",
        "harness.scenario",
        "harness.model",
        "harness.samples",
        "harness.modes",
        "harness.metrics",
        "harness.errors",
        "harness.jsonfile",
        "harness.polling",
        "harness.releases",
        "harness.units",
    ],
    "dataplane/lab": [
        "harness.dataplane",
        "harness.dataplane._tool",
        "harness.dataplane.base",
        "harness.dataplane.iptables",
        "harness.dataplane.ipvs",
        "harness.dataplane.ipvs_netlink",
        "harness.dataplane.names",
        "harness.dataplane.nftables",
        "harness.lab",
        "harness.lab.backends",
        "harness.lab.caps",
        "harness.lab.cleanup",
        "harness.lab.netns",
        "harness.lab.registry",
        "harness.lab.topology",
        "harness.lab.uml",
    ],
    "measure": [
        "harness.measure",
        "harness.measure.adaptive",
        "harness.measure.agent",
        "harness.measure.connect",
        "harness.measure.cpu",
        "harness.measure.load",
        "harness.measure.load_worker",
        "harness.measure.sync",
        "harness.measure.disrupt",
        "harness.measure.disrupt_prober",
        "harness.validate",
    ],
    "point loop": [
        "harness.pointloop",
        "harness.pointloop.__main__",
        "harness.pointloop.lab",
        "harness.pointloop.loop",
        "harness.pointloop.worker",
        "harness.pointloop.disruption",
    ],
    "targets": [
        "harness.targets",
        "harness.targets.cluster",
        "harness.targets.cluster_disruption",
        "harness.targets.lab",
        "harness.targets.local",
        "harness.targets.local_binaries",
        "harness.targets.local_dataplane",
        "harness.targets.local_disruption",
        "harness.targets.local_kubeproxy",
        "harness.targets.local_pki",
        "harness.targets.local_procs",
        "harness.targets.local_worker",
        "harness.targets.localcluster",
        "harness.targets.fidelity",
        "harness.k8s",
        "harness.k8s.endpoint",
        "harness.k8s.kubeproxy_config",
        "harness.k8s.metrics",
        "harness.k8s.objects",
        "harness.k8s.ratelimit",
        "harness.k8s.rest",
        "harness.cluster",
        "harness.cluster.backend",
        "harness.cluster.disrupt_probe",
        "harness.cluster.kube",
        "harness.cluster.kubeproxy_config",
        "harness.cluster.load",
        "harness.cluster.locust_main",
        "harness.cluster.locustfile",
        "harness.cluster.manifests",
        "harness.cluster.nodecheck",
        "harness.cluster.objects",
        "harness.cluster.options",
        "harness.cluster.preflight",
        "harness.cluster.probe",
        "harness.cluster.restore",
        "harness.cluster.switch",
        # the offline test cluster (`kpbench cluster up`): it uses harness.k8s, harness.cluster and
        # local_binaries, and the targets may use it, so it shares their layer
        "harness.testcluster",
        "harness.testcluster.artifacts",
        "harness.testcluster.addons",
        "harness.testcluster.controlplane",
        "harness.testcluster.lifecycle",
        "harness.testcluster.network",
        "harness.testcluster.node",
        "harness.testcluster.plan",
        "harness.testcluster.state",
        "harness.testcluster.sysctls",
        "harness.testcluster.debian",
        "harness.testcluster.images",
        "harness.testcluster.oci",
    ],
    "runner": ["harness.runner", "harness.plan", "harness.costmodel", "harness.progress", "harness.metadata"],
    "results": ["harness.results", "harness.analysis", "harness.plots", "harness.report", "harness.findings"],
    "commands": [
        "harness.commands",
        "harness.commands.clean_cmd",
        "harness.commands.cluster_cmd",
        "harness.commands.compare_cmd",
        "harness.commands.doctor_cmd",
        "harness.commands.privileges",
        "harness.commands.render_cmd",
        "harness.commands.report_cmd",
        "harness.commands.restore_cmd",
        "harness.commands.run_cmd",
        "harness.commands.scenario_args",
        "harness.commands.validate_cmd",
        "harness.cli",
        "harness.__main__",
    ],
}
LEVEL = {mod: i for i, (_, mods) in enumerate(LAYERS.items()) for mod in mods}
NAMES = list(LAYERS)

# Known exceptions, each with its reason. Keep this empty: fix the import instead.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(HARNESS.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def imported(mod: str, path: Path) -> set[str]:
    """Harness modules `mod` imports anywhere in its file (resolved to modules that exist)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from harness.x import y`: y may be a module itself
                names.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    out = set()
    for n in names:
        while n and n not in MODULES:  # `import harness.a.b.c` where c is an attribute
            n = n.rpartition(".")[0]
        if n.startswith("harness"):
            out.add(n)
    return out


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if m not in LEVEL)
    assert not missing, f"declare the layer of {missing} in tests/unit/test_layers.py"


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_upward_import(mod):
    if mod not in LEVEL:
        pytest.fail(f"{mod} has no declared layer")
    up = [
        f"{mod} ({NAMES[LEVEL[mod]]}) imports {dep} ({NAMES[LEVEL[dep]]})"
        for dep in sorted(imported(mod, MODULES[mod]))
        if dep in LEVEL and LEVEL[dep] > LEVEL[mod] and (mod, dep) not in ALLOWED
    ]
    unknown = [dep for dep in imported(mod, MODULES[mod]) if dep not in LEVEL]
    assert not up and not unknown, up + [f"{mod} imports {d}, which has no declared layer" for d in unknown]


def test_the_check_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from harness.runner import plan_points\n    import harness.report\n")
    assert imported("harness.lab.x", f) == {"harness.runner", "harness.report"}
