"""Helpers shared by the peer modules: servers started and stopped by pid, ports, timing.

Standard library only, so that both the project's ``.venv`` (the orchestrating
``__main__``) and ``.venv-peers`` (the peer modules) can import it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(__file__).resolve().parent
PEER_VENV = ROOT / ".venv-peers"
PEER_PYTHON = PEER_VENV / "bin" / "python"
HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Server:
    """A server process started by us in its own session; stopped by its pid (and the
    process group it leads, which holds only the children it started itself)."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        logfile: Path,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.logfile = logfile
        self.stop_signal = stop_signal
        self._log = open(logfile, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            user=user,
            start_new_session=True,  # Ctrl-C in the terminal does not reach it; we stop it
        )
        self.pid = self.proc.pid
        _RUNNING.append(self)
        log(f"started {name} pid={self.pid}: {' '.join(self.cmd)}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}; see {self.logfile}"
            )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        # children it may have left behind in its own process group (pgid == our pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()
        log(f"stopped {self.name} pid={self.pid} (exit {self.proc.returncode})")


_RUNNING: list[Server] = []


def stop_all() -> None:
    for server in reversed(list(_RUNNING)):
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others
            log(f"stopping {server.name} failed: {exc}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C: unwind, so every ``finally`` stops its servers."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    # also when started from a non-interactive shell's background job (SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) != 0


def wait_port(port: int, timeout: float = 60.0, server: Server | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None:
            server.check()
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout:.0f}s")


def wait_until(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile, as benchmarks/stats.py computes it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def latency_summary(samples: Sequence[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": ms(percentile(samples, 50)),
        f"{prefix}_p99_ms": ms(percentile(samples, 99)),
        f"{prefix}_max_ms": ms(max(samples)) if samples else float("nan"),
    }


@contextlib.contextmanager
def cpu_time() -> Iterator[dict[str, float]]:
    """CPU seconds (user+sys) of this process and its reaped children during the block."""
    out: dict[str, float] = {}
    t0 = os.times()
    yield out
    t1 = os.times()
    out["cpu_s"] = (t1.user - t0.user) + (t1.system - t0.system)


def proc_cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of a running process (from /proc; 0 if unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return 0.0
