"""Tracing is optional: without OpenTelemetry installed Overture imports and runs (the
clients, the engine, the worker), and asking the commands for traces fails with one clear
line; the environment decides when tracing is on (``--trace``/``--no-trace`` win)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from overture.cli.common import trace_wanted
from tests.http.test_processes import APP, REPO_ROOT

# A meta path finder that makes every ``opentelemetry`` import fail, as when the extra is
# not installed.
NO_OTEL = textwrap.dedent(
    """
    import sys
    class _NoOtel:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, _NoOtel())
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OVERTURE_"))}
    env.update(NO_COLOR="1", **extra)
    return env


def _python(script: str) -> str:
    """What ``script`` printed, run by this Python without any ``OTEL_*`` variable."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_overture_runs_without_opentelemetry(tmp_path: Path) -> None:
    script = NO_OTEL + textwrap.dedent(
        """
        import asyncio
        import overture as ov
        from overture.testing import Harness
        from overture.worker import Worker

        app = ov.App("plain")

        @app.task("work")
        def work(args):
            return args["n"] + 1

        @app.process(trigger="go", emits=["went"])
        async def go(ctx, event):
            n = await ctx.call("work", {"n": 1})
            ctx.emit("went", {"n": n})
            return n

        async def main():
            async with Harness(app) as h, Worker(app, h.backend, poll=0.05) as worker:
                h.client.send("go", {})
                await h.idle()
                await worker.wait_finished(1)
                while h.client.instances()[0].status != "completed":
                    await h.idle()
                    await asyncio.sleep(0.01)
            assert "opentelemetry" not in sys.modules
            print("ran", h.client.instances()[0].result)

        asyncio.run(main())
        """
    )
    assert _python(script) == "ran 2"


@pytest.mark.parametrize("how", ["--trace", "OTEL_TRACES_EXPORTER"])
def test_asking_for_traces_without_the_extra_is_one_clear_error(tmp_path: Path, how: str) -> None:
    args = ["run", APP, "--backend", f"sqlite:///{tmp_path / 'x.db'}"]
    env = _env()
    if how == "--trace":
        args.append("--trace")
    else:
        env["OTEL_TRACES_EXPORTER"] = "otlp"
    script = (
        NO_OTEL + "from overture.cli import main\nsys.argv = ['overture', *sys.argv[1:]]\nmain()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "pip install 'overture[otel]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unsupported_exporter_is_refused_before_the_engine_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "overture.cli", "run", APP,
         "--backend", f"sqlite:///{tmp_path / 'x.db'}"],
        cwd=REPO_ROOT, env=_env(OTEL_TRACES_EXPORTER="zipkin"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "OTEL_TRACES_EXPORTER='zipkin' is not supported" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.db").exists()  # nothing started


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, {}, False),
        (None, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}, False),
        (None, {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        (True, {}, True),
        (False, {"OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_when_the_commands_trace(
    monkeypatch: pytest.MonkeyPatch, flag: bool | None, env: dict[str, str], expected: bool
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert trace_wanted(flag) is expected


def test_the_api_imported_by_fastapi_does_not_load_the_sdk_on_a_send() -> None:
    """FastAPI imports the OpenTelemetry API; with no SDK provider set, a client's send in
    that process imports neither the SDK nor Overture's tracing module."""
    script = textwrap.dedent(
        """
        import sys
        import fastapi
        import overture as ov

        assert "opentelemetry.trace" in sys.modules  # (FastAPI's own import)
        with ov.Client("memory://sdkless") as client:
            client.send("go", {})
        loaded = [m for m in ("opentelemetry.sdk.trace", "overture.observe.tracing")
                  if m in sys.modules]
        assert not loaded, loaded
        print("sent")
        """
    )
    assert _python(script) == "sent"
