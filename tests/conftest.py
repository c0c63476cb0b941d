"""Shared test settings: kernel tests need root; every test leaves the machine as it found it."""

import os
import signal
import subprocess

import pytest

# Started as a background job of a non-interactive shell, the suite inherits SIGINT ignored, and so
# would every process it starts: the Ctrl-C tests would then test nothing. A Python handler here
# makes each child start with the default disposition again (exec resets handlers, not SIG_IGN).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: creates network namespaces")
    for item in items:
        if "kernel" in item.keywords or "uml" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    """The whole suite must not change the host's root network namespace."""

    def snapshot():
        out = {}
        for name, argv in (
            ("iptables-legacy", ["iptables-legacy-save"]),
            ("iptables-nft", ["iptables-nft-save"]),
            ("nft", ["nft", "list", "ruleset"]),
            ("addr", ["ip", "-o", "addr"]),
            ("route", ["ip", "route"]),
        ):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                out[name] = "\n".join(ln for ln in p.stdout.splitlines() if not ln.startswith("#"))
            except (OSError, subprocess.SubprocessError):
                out[name] = None
        return out

    if os.geteuid() != 0:
        yield
        return
    before = snapshot()
    yield
    after = snapshot()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"the test suite changed the root network namespace: {changed}"
