"""Boot a User-Mode Linux guest that runs one command, stream its stdout, report its exit status.

    with Guest(run_dir, command=[...], env={...}) as g:
        for line in g.lines():
            ...
        result = g.wait()

or `run_guest(run_dir, ..., on_line=print)`. The guest's root is the host filesystem read-only
(hostfs); `run_dir` (and `mounts`) are mounted read-write at the same path. The init script
(uml_init.sh) loads the kernel modules the dataplane modes need, runs the command with its
stdout on /dev/tty1 (= linux.uml's stdout here) and writes the exit status to the control dir
before `poweroff -f`. linux.uml runs in its own session; the whole process group is killed on
timeout, on any exception (KeyboardInterrupt included) and by `cleanup_leftovers` after a crash.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.lab import registry
from harness.lab.netns import LabError

DEBIAN_UML = "/usr/bin/linux.uml"
UML_MODULES_DIR = Path("/usr/lib/uml/modules")
KERNEL_FRAGMENT = Path(__file__).with_name("uml-kernel.config")


def kpbench_kernel() -> str | None:
    """The UML kernel built by `make uml-kernel` for the current config fragment, if any.

    Debian's UML kernel lacks nftables NAT; this one has IPVS and nftables NAT built in, so all
    three proxy modes run on one kernel. KPBENCH_UML_KERNEL names another binary.
    """
    env = os.environ.get("KPBENCH_UML_KERNEL")
    if env:
        return env if os.access(env, os.X_OK) else None
    cache = Path(
        os.environ.get("KPBENCH_UML_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kpbench" / "uml"
    )
    try:
        h = hashlib.sha256(KERNEL_FRAGMENT.read_bytes()).hexdigest()[:10]
    except OSError:
        return None
    found = sorted(cache.glob(f"*-kpbench{h}/linux"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found and os.access(found[-1], os.X_OK) else None


def default_linux() -> str:
    """KPBENCH_LINUX_UML, else the kpbench-built kernel, else Debian's linux.uml."""
    return os.environ.get("KPBENCH_LINUX_UML") or kpbench_kernel() or DEBIAN_UML


def has_modules(linux: str) -> bool:
    """False for a kernel built without module support (its config beside it says so)."""
    cfg = Path(linux).with_name("config")
    try:
        return "# CONFIG_MODULES is not set" not in cfg.read_text()
    except OSError:
        return True


LINUX_UML = default_linux()
INIT_SCRIPT = Path(__file__).with_name("uml_init.sh")
REPO = Path(__file__).resolve().parents[2]
TMP_PREFIX = "kpbench-uml-"
GUEST_TMPFS = (Path("/tmp"), Path("/run"), Path("/dev/shm"))  # what uml_init.sh mounts tmpfs on

# Loaded at boot, so that the first measured sync does not pay for module loading. Anything else
# (other IPVS schedulers, ipset types, xt/nft extensions, link kinds) is autoloaded on first use:
# the init script points /proc/sys/kernel/modprobe at the UML module tree.
MODULES: tuple[str, ...] = (
    # IPVS and the common schedulers
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_sh",
    # ipset types kube-proxy IPVS mode uses
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
    "xt_set",
    # iptables legacy tables and the xt matches/targets kube-proxy emits
    "nf_conntrack",
    "nf_nat",
    "ip_tables",
    "iptable_nat",
    "iptable_filter",
    "iptable_mangle",
    "ipt_REJECT",
    "xt_ipvs",
    "xt_physdev",
    "xt_comment",
    "xt_mark",
    "xt_conntrack",
    "xt_statistic",
    "xt_recent",
    "xt_tcpudp",
    "xt_multiport",
    "xt_addrtype",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_limit",
    # nftables (tables and filter chains work; this kernel has no nft_chain_nat / nft_nat)
    "nf_tables",
    "nft_compat",
    # links; br_netfilter is never autoloaded
    "veth",
    "dummy",
    "bridge",
    "br_netfilter",
)
# modules this kernel is known not to ship: not an error if missing
OPTIONAL_MODULES = frozenset({"nft_chain_nat", "nft_nat"})

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:,@%+-]*$")
_SAFE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def uml_version(linux: str = LINUX_UML) -> str | None:
    """The guest kernel release (e.g. "6.1.176"), None if linux.uml is not usable."""
    try:
        p = subprocess.run(
            [linux, "--version"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    v = p.stdout.strip().splitlines()
    return v[0].strip() if p.returncode == 0 and v else None


def available(linux: str = LINUX_UML) -> tuple[bool, str]:
    """(True, "") if a guest can be booted here, else (False, why)."""
    if not os.access(linux, os.X_OK):
        return False, f"{linux} not found (install the Debian package user-mode-linux)"
    v = uml_version(linux)
    if not v:
        return False, f"{linux} --version failed"
    if not has_modules(linux):
        return True, ""
    if not (UML_MODULES_DIR / v).is_dir():
        return False, f"no modules for the UML kernel {v} in {UML_MODULES_DIR}"
    if not shutil.which("modprobe"):
        return False, "modprobe not found (install kmod)"
    return True, ""


def default_command(job: str | Path) -> list[str]:
    return [
        str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable,
        "-m",
        "harness.pointloop",
        str(job),
    ]


@dataclass
class GuestResult:
    status: int
    elapsed_s: float  # linux.uml start to exit
    boot_s: float | None  # guest uptime when the command started (kernel + init + modules)
    modules_missing: list[str] = field(default_factory=list)
    ctl_dir: Path | None = None
    stderr_tail: str = ""
    console_tail: str = ""


def host_cpu(choice: str | None = None) -> int | None:
    """The one host CPU a guest is pinned to, or None (left to the scheduler).

    UML runs every guest process under ptrace: each system call and page fault is a round trip
    between two host processes, and on different CPUs each trip wakes an idle one. Pinned to one
    CPU, one iptables change at 5,000 Services took 0.85 s in the guest where it took 2.68 s on a
    quiet 2-core VM (and the guest is uniprocessor: it never uses a second CPU). `choice`
    (default: environment KPBENCH_UML_CPU): a CPU number, `none`, or `auto`: the last CPU this
    process may use, when it may use more than one."""
    choice = (choice if choice is not None else os.environ.get("KPBENCH_UML_CPU", "auto")).strip().lower()
    allowed = sorted(os.sched_getaffinity(0))
    if choice in ("none", "off", "") or shutil.which("taskset") is None:
        return None
    if choice == "auto":
        return allowed[-1] if len(allowed) > 1 else None
    if not choice.isdigit() or int(choice) not in allowed:
        raise LabError(
            f"KPBENCH_UML_CPU={choice!r} is not a CPU this process may use "
            f"({', '.join(map(str, allowed))}): give one of them, auto or none"
        )
    return int(choice)


class Guest:
    """One UML guest running `command` (argv list or a shell string) once, pinned to one host CPU
    (host_cpu(): `cpu` = a number, "auto" or "none")."""

    def __init__(
        self,
        run_dir: str | Path,
        command: Sequence[str] | str | None = None,
        *,
        job: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        mem: str = "4G",
        timeout: float | None = 3600.0,
        mounts: Sequence[str | Path] = (),
        modules: Sequence[str] = MODULES,
        cwd: str | Path | None = None,
        linux: str = LINUX_UML,
        name: str = "guest",
        netns: str | None = None,
        net: Sequence[str] = (),
        cpu: str | None = None,
    ):
        self.run_dir = Path(run_dir).resolve()
        self.cpu = host_cpu(cpu)
        if command is None:
            if job is None:
                raise LabError("Guest needs a command or a job file")
            command = default_command(job)
        self.command = command
        self.env = dict(env or {})
        self.mem = mem
        self.timeout = timeout
        self.mounts = [self.run_dir] + [Path(m).resolve() for m in mounts]
        # the guest mounts tmpfs over /tmp, /run and /dev/shm: a checkout (and its .venv) below
        # one of them must be mounted back, first, or the guest cannot see the harness
        if any(REPO.is_relative_to(p) for p in GUEST_TMPFS):
            self.mounts.insert(0, REPO)
        self.modules = list(modules) if has_modules(linux) else []  # built in
        self.cwd = Path(cwd).resolve() if cwd else REPO
        self.linux = linux
        self.name = name
        # linux.uml runs inside this (harness-made) namespace, so that the TAP devices named in
        # `net` (kernel arguments such as "vec0:transport=tap,ifname=kt0") are looked up there
        self.netns = netns
        self.net = list(net)
        self.proc: subprocess.Popen | None = None
        self.tmpdir: Path | None = None
        self.ctl: Path | None = None
        self._t0 = 0.0
        self._buf = b""
        self._result: GuestResult | None = None

    # --- start -----------------------------------------------------------------------------
    def _write_control(self) -> list[str]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ctl = Path(tempfile.mkdtemp(prefix=f".uml-{self.name}-", dir=self.run_dir))
        if isinstance(self.command, str):  # a shell script
            body = self.command
        else:
            body = "exec " + shlex.join(list(self.command))
        (self.ctl / "cmd.sh").write_text(f"cd {shlex.quote(str(self.cwd))} || exit 125\n{body}\n")
        cmdline_env, file_env = [], []
        env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "KPBENCH_IN_UML": "1", **self.env}
        env["KPBENCH_UML_HOST_CPU"] = "none" if self.cpu is None else str(self.cpu)
        for k, v in env.items():
            if not _SAFE_KEY.match(k):
                raise LabError(f"environment variable name {k!r} cannot be passed to the guest")
            if _SAFE_VALUE.match(v) and len(v) < 200:
                cmdline_env.append(f"{k}={v}")
            else:  # spaces, quotes ...: the kernel command line cannot carry them
                file_env.append(f"export {k}={shlex.quote(v)}")
        (self.ctl / "env.sh").write_text("\n".join(file_env) + "\n")
        for m in self.mounts:
            if not _SAFE_VALUE.match(str(m)) or ":" in str(m):
                raise LabError(f"cannot mount {m} in the guest: use a path of letters, digits, ._-/")
        return cmdline_env

    def start(self) -> Guest:
        ok, why = available(self.linux)
        if not ok:
            raise LabError(f"cannot boot a UML guest: {why}")
        if not INIT_SCRIPT.exists():
            raise LabError(f"{INIT_SCRIPT} is missing")
        cmdline_env = self._write_control()
        assert self.ctl is not None
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=base))
        umid = f"kpb{os.getpid()}{self.tmpdir.name[-6:]}"
        argv = [
            self.linux,
            f"mem={self.mem}",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "ro",
            "init=/bin/sh",
            "quiet",
            "con=null",
            "con0=null,fd:2",
            "con1=null,fd:1",
            f"umid={umid}",
            f"uml_dir={self.tmpdir}",
            f"KPBENCH_CTL={self.ctl}",
            f"KPBENCH_MOUNTS={':'.join(map(str, self.mounts))}",
            f"KPBENCH_MODULES={','.join(self.modules)}",
            *self.net,
            *cmdline_env,
            "--",
            str(INIT_SCRIPT),
        ]  # after "--": init's argv (no exec bit needed)
        if len(" ".join(argv)) > 4000:
            raise LabError("UML kernel command line too long: pass fewer environment variables")
        if self.netns:
            from harness.lab import netns as lab_netns

            argv = lab_netns.exec_prefix(self.netns) + argv  # `ip netns exec` execs: same pid
        if self.cpu is not None:
            argv = ["taskset", "--cpu-list", str(self.cpu), *argv]  # execs too: same pid
        henv = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        henv["TMPDIR"] = str(self.tmpdir)  # the guest's memory file goes here
        console = open(self.ctl / "console.log", "wb")
        self._t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=console,
                env=henv,
                cwd=str(self.tmpdir),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            console.close()
        registry.register(
            "uml",
            self.proc.pid,
            pid=self.proc.pid,
            pgid=self.proc.pid,
            start=registry.proc_starttime(self.proc.pid),
            paths=[str(self.tmpdir)],
            ctl=str(self.ctl),
        )
        return self

    # --- running ---------------------------------------------------------------------------
    def _remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return self.timeout - (time.monotonic() - self._t0)

    def lines(self) -> Iterator[str]:
        """The guest command's stdout, line by line, until the guest ends (kills it on timeout)."""
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            while True:
                rem = self._remaining()
                if rem is not None and rem <= 0:
                    self.kill()
                    raise LabError(
                        f"UML guest {self.name} timed out after {self.timeout:.0f}s{self._tails()}"
                    )
                r, _, _ = select.select([fd], [], [], 1.0 if rem is None else min(1.0, max(rem, 0.01)))
                if not r:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._buf += chunk
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    yield line.rstrip(b"\r").decode(errors="replace")
            if self._buf.strip(b"\r"):
                yield self._buf.rstrip(b"\r").decode(errors="replace")
            self._buf = b""
        except BaseException:
            self.kill()
            raise

    def wait(self, on_line: Callable[[str], None] | None = None) -> GuestResult:
        """Run to the end (streaming to on_line), return the result; raise LabError if the guest
        ended without reporting an exit status (it crashed or was killed)."""
        if self._result is not None:
            return self._result
        try:
            for line in self.lines():
                if on_line:
                    on_line(line)
            assert self.proc is not None
            rem = self._remaining()
            try:
                self.proc.wait(timeout=None if rem is None else max(rem, 1.0))
            except subprocess.TimeoutExpired:
                self.kill()
                raise LabError(f"UML guest {self.name} did not power off{self._tails()}") from None
        except BaseException:
            self.kill()
            raise
        elapsed = time.monotonic() - self._t0
        self._reap_group()
        status = self._read("exit_status")
        res = GuestResult(
            status=int(status) if status and status.strip().lstrip("-").isdigit() else -1,
            elapsed_s=elapsed,
            boot_s=_float(self._read("boot_uptime")),
            modules_missing=[
                m for m in (self._read("modules_missing") or "").split() if m not in OPTIONAL_MODULES
            ],
            ctl_dir=self.ctl,
            stderr_tail=(self._read("stderr.log") or "")[-2000:],
            console_tail=(self._read("console.log") or "")[-2000:],
        )
        self._cleanup_tmp()
        if status is None:
            raise LabError(
                f"UML guest {self.name} ended (linux.uml exit {self.proc.returncode}) "
                f"without an exit status{self._tails()}"
            )
        self._result = res
        return res

    # --- ending ----------------------------------------------------------------------------
    def kill(self) -> None:
        """Kill linux.uml and every helper process it forked (its process group); idempotent."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._reap_group()
        self._cleanup_tmp()

    def _reap_group(self) -> None:
        """Make sure no process of the guest's group survives (helpers can outlive the main one)."""
        if self.proc is None:
            return
        for _ in range(50):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        registry.unregister("uml", self.proc.pid)

    def _cleanup_tmp(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _read(self, name: str) -> str | None:
        if self.ctl is None:
            return None
        try:
            return (self.ctl / name).read_text(errors="replace")
        except OSError:
            return None

    def _tails(self) -> str:
        parts = []
        err = (self._read("stderr.log") or "").strip()
        con = (self._read("console.log") or "").strip()
        if err:
            parts.append("guest stderr: " + err[-600:].replace("\n", " | "))
        if con:
            parts.append("console: " + con[-600:].replace("\n", " | "))
        return (": " + "; ".join(parts)) if parts else ""

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        else:
            self._reap_group() if self.proc is not None else None
            self._cleanup_tmp()


def run_guest(
    run_dir: str | Path,
    command: Sequence[str] | str | None = None,
    *,
    on_line: Callable[[str], None] | None = None,
    **kw,
) -> GuestResult:
    """Boot, run `command` (default: the worker on kw['job']), stream stdout to on_line, power off."""
    with Guest(run_dir, command, **kw) as g:
        return g.wait(on_line)


def _float(s: str | None) -> float | None:
    try:
        return float(s) if s else None
    except ValueError:
        return None
