"""The `kpbench` command line: every registered subcommand imports, builds its parser and is listed
by `kpbench --help`; a user error is one line on stderr with exit status 2; other errors are crashes."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.commands import COMMANDS
from harness.errors import UserError

REPO = Path(__file__).resolve().parents[2]
EXPECTED = ["run", "validate", "render", "doctor", "clean", "report", "compare", "restore", "cluster"]


def test_every_subcommand_is_registered_once():
    assert [c.NAME for c in COMMANDS] == EXPECTED


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.NAME)
def test_subcommand_builds_its_parser(command):
    assert command.HELP and "\n" not in command.HELP
    assert callable(command.run)
    p = argparse.ArgumentParser(prog=f"kpbench {command.NAME}")
    command.add_arguments(p)
    assert p.format_help().startswith(f"usage: kpbench {command.NAME}")


def test_help_lists_every_subcommand():
    p = subprocess.run(
        [sys.executable, "-m", "harness", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    listed = {line.split()[0] for line in p.stdout.splitlines() if line.startswith("    ") and line.split()}
    for command in COMMANDS:
        assert command.NAME in listed, p.stdout
        assert command.HELP.split()[0] in p.stdout


def _fake_command(exc: BaseException):
    def run(args):
        raise exc

    return argparse.Namespace(NAME="fail", HELP="raise an exception", add_arguments=lambda p: None, run=run)


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", (_fake_command(UserError("the thing is wrong: do this instead")),))
    assert cli.main(["fail"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "kpbench: error: the thing is wrong: do this instead\n"


def test_other_exceptions_are_crashes(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", (_fake_command(RuntimeError("a bug")),))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["fail"])


def test_bad_services_through_the_real_parser(capsys):
    assert cli.main(["run", "--services", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kpbench: error: --services 'abc'"), err


def test_user_error_classes_share_the_root():
    from harness.cluster import ClusterError
    from harness.lab.netns import LabError
    from harness.model import ModelError
    from harness.results import ResultsError
    from harness.scenario import ScenarioError

    for cls in (ClusterError, LabError, ModelError, ResultsError, ScenarioError):
        assert issubclass(cls, UserError), cls


def test_root_check_is_a_user_error(monkeypatch, capsys):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setattr("harness.lab.cleanup.cleanup_leftovers", lambda *a: pytest.fail("ran without root"))
    assert cli.main(["clean"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "kpbench: error: kpbench clean needs root (it creates network namespaces): run it with sudo\n"
    )
