"""The scenario schema: strict keys, impossible values named, sweeps expanded."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.modes import MODES
from harness.scenario import Scenario, ScenarioError, load_scenario, log_sweep, parse_override

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", [p.stem for p in (REPO / "scenarios").glob("*.yaml")])
def test_shipped_scenarios_validate(name):
    s = load_scenario(name)
    assert s.counts() == sorted(s.counts())
    assert set(s.modes) <= set(MODES)


def test_default_modes_are_every_registered_mode_in_order():
    assert Scenario().modes == list(MODES)


@pytest.mark.parametrize("mode", MODES)
def test_each_registered_mode_is_a_valid_scenario_mode(mode):
    assert load_scenario("quick", [parse_override(f"modes=[{mode}]")]).modes == [mode]


def test_default_sweep_is_log_spaced_to_50k():
    assert load_scenario("default").counts() == [1000, 2000, 5000, 10000, 20000, 50000]


def test_log_sweep_always_ends_at_max():
    assert log_sweep(1000, 30000) == [1000, 2000, 5000, 10000, 20000, 30000]
    assert log_sweep(1000, 200) == [200]
    assert log_sweep(100, 100) == [100]


def test_unknown_key_names_file_and_field(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("modes: [iptables]\nservices: {max: 10}\nmeasure: {load: {rat: 5}}\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(str(f))
    assert str(f) in str(e.value) and "measure.load.rat" in str(e.value) and "unknown key" in str(e.value)


@pytest.mark.parametrize(
    "override, field",
    [
        ("repetitions=0", "repetitions"),
        ("modes=[iptables,bogus]", "modes"),
        ("services.counts=[0]", "services"),
        ("measure.sync.poll_interval_ms=5", "measure.sync.poll_interval_ms"),
        ("measure.sync.poll_max_cpu_share=0", "measure.sync.poll_max_cpu_share"),
        ("measure.sync.poll_max_cpu_share=1.5", "measure.sync.poll_max_cpu_share"),
        ("kernel=qemu", "kernel"),
    ],
)
def test_impossible_values_are_named(override, field):
    with pytest.raises(ScenarioError) as e:
        load_scenario("quick", [parse_override(override)])
    assert field in str(e.value)


def test_override_parses_yaml_values():
    s = load_scenario("quick", [parse_override("measure.load.rate=500"), parse_override("modes=[ipvs]")])
    assert s.measure.load.rate == 500 and s.modes == ["ipvs"]


def test_resolved_scenario_lists_counts():
    d = load_scenario("default").resolved()
    assert d["services"] == {"counts": [1000, 2000, 5000, 10000, 20000, 50000]}
    assert d["validate"] is True


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("services: {max: 10}\nrepetitons: 2\n")
    p = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(f)], capture_output=True, text=True, cwd=REPO
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "repetitons" in p.stderr


def test_sync_poller_is_paced_by_default_and_can_be_unpaced():
    assert load_scenario("default").measure.sync.poll_max_cpu_share == 0.15
    s = load_scenario("quick", [parse_override("measure.sync.poll_max_cpu_share=null")])
    assert s.measure.sync.poll_max_cpu_share is None
