"""Starting, stopping and inspecting the development broker of one state directory."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import assemble, config
from .errors import DevKafkaError
from .readiness import wait_ready
from .state import (
    BrokerRecord,
    Layout,
    adopt,
    is_alive,
    locked,
    read_record,
    remove_record,
    resolve_state_dir,
    wait_exit,
    write_record,
)
from .tools import find_tools

logger = logging.getLogger(__name__)

StateDir = str | os.PathLike[str] | None
Progress = Callable[[str], None]

DEFAULT_TIMEOUT = 120.0
"""Seconds a start waits for the broker to become ready (after the download)."""
STOP_GRACE = 20.0
"""Seconds between SIGTERM (controlled shutdown) and SIGKILL."""
JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true")


@dataclass(frozen=True)
class StartResult:
    """The outcome of :func:`start_broker`.

    Attributes:
        record: the running broker.
        started: ``False`` if it was already running.
    """

    record: BrokerRecord
    started: bool

    @property
    def bootstrap(self) -> str:
        """The bootstrap address, ``127.0.0.1:PORT``."""
        return self.record.bootstrap


@dataclass(frozen=True)
class BrokerStatus:
    """What :func:`broker_status` found.

    Attributes:
        state_dir: the state directory (absolute).
        record: the running broker, or ``None``.
        stale_pid: the pid ``broker.json`` recorded for a broker that is gone, if any.
    """

    state_dir: Path
    record: BrokerRecord | None
    stale_pid: int | None = None

    @property
    def running(self) -> bool:
        """Whether the broker runs."""
        return self.record is not None


@dataclass(frozen=True)
class StopResult:
    """The outcome of :func:`stop_broker`.

    Attributes:
        pid: the stopped broker's pid, or ``None`` if none was running.
        killed: whether it ignored SIGTERM and had to be killed.
        purged: whether its data was deleted.
    """

    pid: int | None
    killed: bool = False
    purged: bool = False


def _running(layout: Layout) -> BrokerRecord | None:
    record = read_record(layout)
    if record is not None and is_alive(record.pid, layout):
        return record
    return None


def broker_status(state_dir: StateDir = None) -> BrokerStatus:
    """Whether the broker of ``state_dir`` runs.

    Args:
        state_dir: the state directory (default ``$OVERTURE_KAFKA_DIR`` or
            ``./.overture/kafka``).

    Returns:
        The running broker's record, or the pid of a recorded broker that is gone.
    """
    layout = Layout(resolve_state_dir(state_dir))
    record = read_record(layout)
    if record is None:
        return BrokerStatus(layout.root, None)
    if is_alive(record.pid, layout):
        return BrokerStatus(layout.root, record)
    return BrokerStatus(layout.root, None, stale_pid=record.pid)


def start_broker(
    state_dir: StateDir = None,
    *,
    port: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> StartResult:
    """Start the broker of ``state_dir`` unless it already runs, and wait until it is ready.

    The first start downloads the jars with Maven and formats the storage; later starts
    reuse both (and the previous ports while they are free).

    Args:
        state_dir: the state directory (default ``$OVERTURE_KAFKA_DIR`` or
            ``./.overture/kafka``).
        port: the client port; default a free one (the previous one if still free).
        timeout: seconds to wait for readiness once the JVM is launched.
        progress: called with each progress message (default: logged at INFO).

    Returns:
        The running broker and whether this call started it.

    Raises:
        MissingToolError: ``java`` (or, for the first start, ``mvn``) is not on PATH.
        DevKafkaError: the download, the formatting or the start failed.
    """
    say = progress or logger.info
    layout = Layout(resolve_state_dir(state_dir))
    with locked(layout):
        current = _running(layout)
        if current is not None:
            if port is not None and port != current.port:
                raise DevKafkaError(
                    f"the broker already runs on {current.bootstrap} (pid {current.pid}); "
                    "stop it first to change its port"
                )
            return StartResult(current, started=False)
        remove_record(layout)
        need_download = not assemble.libs_ready(layout.libs)
        tools = find_tools(need_mvn=need_download)
        if need_download:
            say(
                f"downloading Kafka {assemble.KAFKA_VERSION} and its dependencies with Maven "
                f"into {layout.libs} (first start only)..."
            )
            began = time.monotonic()
            assemble.ensure_libs(layout.root, tools.mvn)
            say(f"downloaded in {time.monotonic() - began:.1f} s")
        return StartResult(_launch(layout, tools.java, port, timeout, say), started=True)


def _launch(
    layout: Layout, java: str, port: int | None, timeout: float, say: Progress
) -> BrokerRecord:
    began = time.monotonic()
    ports = config.choose_ports(port, config.previous_ports(layout.properties))
    layout.properties.write_text(config.server_properties(ports, layout.data), "utf-8")
    layout.log4j.write_text(config.log4j2_config(layout.log), "utf-8")
    if not (layout.data / "meta.properties").exists():
        _format(layout, java, say)
    classpath = str(layout.libs / "*")
    command = [
        java,
        *JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={layout.log4j}",
        f"-Dkafka.logs.dir={layout.root}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(layout.properties),
    ]
    say(f"starting Kafka {assemble.KAFKA_VERSION} on {config.HOST}:{ports.broker}...")
    log_offset = _log_size(layout.log)
    with open(layout.console, "wb") as console:
        process = subprocess.Popen(
            command,
            cwd=layout.root,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the starting terminal does not reach it
        )
    adopt(process)
    try:
        wait_ready(
            config.HOST,
            ports.broker,
            timeout=timeout,
            alive=lambda: is_alive(process.pid),
            describe_exit=lambda: _exit_story(layout, process, log_offset),
        )
    except BaseException:
        _terminate(process.pid, grace=5.0)
        raise
    startup = time.monotonic() - began
    record = BrokerRecord(
        pid=process.pid,
        port=ports.broker,
        controller_port=ports.controller,
        started_at=time.time(),
        startup_seconds=round(startup, 3),
        kafka_version=assemble.KAFKA_VERSION,
    )
    write_record(layout, record)
    say(f"broker ready on {record.bootstrap} (pid {record.pid}) in {startup:.1f} s")
    logger.info("Kafka broker %s started in %.1f s", record.bootstrap, startup)
    return record


def _format(layout: Layout, java: str, say: Progress) -> None:
    """Format the KRaft storage of a new state directory with a fresh cluster id."""
    shutil.rmtree(layout.data, ignore_errors=True)  # a half-formatted earlier attempt
    cluster_id = config.new_cluster_id()
    say(f"formatting storage in {layout.data} (cluster id {cluster_id})...")
    command = [
        java,
        "-cp",
        str(layout.libs / "*"),
        f"-Dlog4j2.configurationFile={layout.log4j}",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(layout.properties),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).strip().splitlines()
        tail = " | ".join(line.strip() for line in lines[-3:]) or "no output"
        raise DevKafkaError(f"formatting the storage failed (exit {done.returncode}): {tail}")


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _exit_story(layout: Layout, process: subprocess.Popen[bytes], log_offset: int) -> str:
    """Why a broker exited during start-up: the first error it logged in this attempt (in
    ``broker.log`` past ``log_offset``), else the first lines of the JVM's own output."""
    detail = ""
    try:
        with open(layout.log, "rb") as handle:
            handle.seek(log_offset)
            new = handle.read().decode("utf-8", errors="replace").splitlines()
        errors = [line for line in new if " ERROR " in line or " FATAL " in line]
        detail = errors[0].strip() if errors else ""
    except OSError:
        pass
    if not detail:
        try:
            console = layout.console.read_text(encoding="utf-8", errors="replace")
            detail = " | ".join(line.strip() for line in console.splitlines()[:2])
        except OSError:
            pass
    return (
        f"the broker exited during start-up with code {process.returncode}"
        + (f": {detail}" if detail else "")
        + f" (see {layout.log} and {layout.console})"
    )


def _terminate(pid: int, grace: float) -> bool:
    """SIGTERM ``pid``, SIGKILL it after ``grace`` seconds; ``True`` if it had to be killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if wait_exit(pid, grace):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    wait_exit(pid, 10.0)
    return True


def stop_broker(
    state_dir: StateDir = None, *, purge: bool = False, grace: float = STOP_GRACE
) -> StopResult:
    """Stop the broker of ``state_dir`` (controlled shutdown; killed after ``grace`` s).

    Args:
        state_dir: the state directory (default ``$OVERTURE_KAFKA_DIR`` or
            ``./.overture/kafka``).
        purge: also delete its data (topics, KRaft metadata), logs and configuration; the
            downloaded jars are kept.
        grace: seconds between SIGTERM and SIGKILL.

    Returns:
        Which broker was stopped (``pid`` is ``None`` if none was running).
    """
    layout = Layout(resolve_state_dir(state_dir))
    if not layout.root.exists():
        return StopResult(None)
    with locked(layout):
        record = _running(layout)
        killed = False
        if record is not None:
            killed = _terminate(record.pid, grace)
        remove_record(layout)
        if purge:
            shutil.rmtree(layout.data, ignore_errors=True)
            for path in (layout.log, layout.console, layout.properties, layout.log4j):
                path.unlink(missing_ok=True)
    return StopResult(None if record is None else record.pid, killed=killed, purged=purge)


def ensure_broker(state_dir: StateDir = None, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Start the broker of ``state_dir`` if it is not running; return its bootstrap address.

    Args:
        state_dir: the state directory (default ``$OVERTURE_KAFKA_DIR`` or
            ``./.overture/kafka``).
        timeout: seconds to wait for readiness.

    Returns:
        ``127.0.0.1:PORT``.
    """
    return start_broker(state_dir, timeout=timeout).bootstrap
