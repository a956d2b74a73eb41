"""The broker's state directory: its layout, ``broker.json``, the start lock, liveness."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path(".overture/kafka")
"""Where ``overture dev kafka`` keeps the broker unless told otherwise."""
STATE_DIR_ENV = "OVERTURE_KAFKA_DIR"
"""The environment variable that overrides :data:`DEFAULT_STATE_DIR`."""


def resolve_state_dir(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """The absolute state directory: ``state_dir``, else ``$OVERTURE_KAFKA_DIR``, else
    ``./.overture/kafka``."""
    chosen = state_dir if state_dir is not None else os.environ.get(STATE_DIR_ENV)
    return Path(chosen if chosen else DEFAULT_STATE_DIR).expanduser().resolve()


@dataclass(frozen=True)
class Layout:
    """The files of one state directory.

    Attributes:
        root: the state directory itself (absolute).
    """

    root: Path

    @property
    def libs(self) -> Path:
        """The broker's jars."""
        return self.root / "libs"

    @property
    def data(self) -> Path:
        """The broker's ``log.dirs`` (topics and KRaft metadata)."""
        return self.root / "data"

    @property
    def properties(self) -> Path:
        """``server.properties``."""
        return self.root / "server.properties"

    @property
    def log4j(self) -> Path:
        """The Log4j 2 configuration."""
        return self.root / "log4j2.xml"

    @property
    def log(self) -> Path:
        """What the broker logs."""
        return self.root / "broker.log"

    @property
    def console(self) -> Path:
        """The JVM's own stdout and stderr (crashes before logging starts)."""
        return self.root / "broker.out"

    @property
    def record(self) -> Path:
        """``broker.json``: the running broker's pid and ports."""
        return self.root / "broker.json"

    @property
    def lock(self) -> Path:
        """Serialises starts and stops of this state directory."""
        return self.root / "broker.flock"


@dataclass(frozen=True)
class BrokerRecord:
    """What ``broker.json`` records about a started broker.

    Attributes:
        pid: the JVM's process id.
        port: the PLAINTEXT (client) port.
        controller_port: the KRaft controller port.
        started_at: when it was started (seconds since the epoch).
        startup_seconds: how long it took to become ready.
        kafka_version: the Kafka version it runs.
    """

    pid: int
    port: int
    controller_port: int
    started_at: float
    startup_seconds: float
    kafka_version: str

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients connect to."""
        return f"127.0.0.1:{self.port}"


def read_record(layout: Layout) -> BrokerRecord | None:
    """The recorded broker, or ``None`` if there is no (readable) ``broker.json``."""
    try:
        raw = json.loads(layout.record.read_text(encoding="utf-8"))
        return BrokerRecord(
            pid=int(raw["pid"]),
            port=int(raw["port"]),
            controller_port=int(raw["controller_port"]),
            started_at=float(raw["started_at"]),
            startup_seconds=float(raw["startup_seconds"]),
            kafka_version=str(raw["kafka_version"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(layout: Layout, record: BrokerRecord) -> None:
    """Write ``broker.json`` atomically."""
    scratch = layout.record.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    scratch.replace(layout.record)


def remove_record(layout: Layout) -> None:
    """Remove ``broker.json`` (if any)."""
    layout.record.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """Hold the state directory's lock: concurrent starts wait for each other."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_children: dict[int, subprocess.Popen[bytes]] = {}
"""Brokers this process started: kept so they can be reaped (no zombie, no warning)."""


def adopt(process: subprocess.Popen[bytes]) -> None:
    """Remember a broker this process started, so that :func:`is_alive` can reap it."""
    _children[process.pid] = process


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is an exited child of this process; ``True`` if it was."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return False
        del _children[pid]
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def is_alive(pid: int, layout: Layout | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, given ``layout``, is that directory's broker.

    The command-line check guards against a recycled pid: a process is only taken for the
    broker if it runs ``kafka.Kafka`` with this state directory's ``server.properties``.
    """
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text(encoding="utf-8")
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if layout is not None:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            return b"kafka.Kafka" in cmdline and str(layout.properties).encode() in cmdline
    except (OSError, IndexError):
        pass  # no /proc (macOS): trust kill(pid, 0)
    return True


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; ``True`` if it did."""
    deadline = time.monotonic() + timeout
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
