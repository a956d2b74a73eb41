"""Traces over OTLP/HTTP from real ``overture run --http`` and ``overture worker``
processes configured only by ``OTEL_*`` variables, to a real receiver on 127.0.0.1 (a
small HTTP server decoding the protobuf export requests with ``opentelemetry-proto``):
events POSTed with a ``traceparent`` header, with one of their own, and with none, each
followed from the API's send span to the engine's consume and run spans in one trace; a
task attempt followed into the worker process and back."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.http.test_processes import APP, REPO_ROOT, free_port, ready

HEADER_TRACE = "0af7651916cd43dd8448eb211c80319c"
HEADER_PARENT = "b7ad6b7169203331"
OWN_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OWN_PARENT = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver: every span of every ``POST /v1/traces``."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.services: set[str] = set()
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.paths.append(self.path)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.take(request)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def take(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = ""
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    service = attribute.value.string_value
                    self.services.add(service)
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "trace": span.trace_id.hex(),
                            "id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "attributes": {
                                a.key: a.value.string_value or a.value.int_value
                                for a in span.attributes
                            },
                        }
                    )


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_run_exports_one_trace_per_flow_over_otlp_http(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "engine.log"
    with receiving() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OVERTURE_"))}
        env.update(
            NO_COLOR="1",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,  # the SDK appends /v1/traces
            OTEL_SERVICE_NAME="shop-under-test",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        args = ["run", APP, "--backend", f"sqlite:///{tmp_path / 'shop.db'}",
                "--http", f"127.0.0.1:{port}"]  # fmt: skip
        with log.open("w") as out:
            engine = subprocess.Popen(
                [sys.executable, "-m", "overture.cli", *args],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            api = f"http://127.0.0.1:{port}"
            ready(api, engine, log)
            base = {"ce-source": "/t", "ce-type": "order.placed", "ce-specversion": "1.0"}
            posts = [
                {"ce-id": "by-header", "traceparent": f"00-{HEADER_TRACE}-{HEADER_PARENT}-01"},
                {"ce-id": "by-attribute", "ce-traceparent": f"00-{OWN_TRACE}-{OWN_PARENT}-01"},
                {"ce-id": "untraced"},
            ]
            for headers in posts:
                reply = httpx.post(
                    f"{api}/events",
                    params={"start": "true"},
                    headers={**base, **headers},
                    json={"order_id": headers["ce-id"], "quantity": 1},
                )
                assert reply.status_code == 202, reply.text
                # (start=true sends it as well, through the API's client)
                (instance,) = reply.json()["instances"]
                result = httpx.get(
                    f"{api}/instances/{instance}/result", params={"wait": 30}, timeout=40
                )
                assert result.status_code == 200, result.text
            # and the plain send (no start=true), by header
            reply = httpx.post(
                f"{api}/events",
                headers={**base, "ce-id": "plain", "traceparent": posts[0]["traceparent"]},
                json={"order_id": "plain", "quantity": 1},
            )
            assert reply.status_code == 202, reply.text
        finally:
            engine.send_signal(signal.SIGTERM)
            code = engine.wait(timeout=60)
        assert code == 0, log.read_text()  # exiting flushed the batched spans
    assert "shop-under-test" in receiver.services
    assert set(receiver.paths) == {"/v1/traces"}
    spans = receiver.spans

    def of(event_id: str) -> dict[str, dict[str, Any]]:
        sends = [s for s in spans if s["attributes"].get("cloudevents.event_id") == event_id]
        named = {s["name"]: s for s in sends}
        assert {"send order.placed", "process order.placed"} <= set(named), sends
        consume = named["process order.placed"]
        runs = [s for s in spans if s["name"] == "run fulfil" and s["parent"] == consume["id"]]
        assert len(runs) == 1, spans
        return {**named, "run fulfil": runs[0]}

    by_id = {s["id"]: s for s in spans}

    def ancestors(span: dict[str, Any]) -> list[str]:
        """Parent ids up to the first not exported here (a remote parent)."""
        chain = [span["parent"]]
        while chain[-1] in by_id:
            chain.append(by_id[chain[-1]]["parent"])
        return chain

    header = of("by-header")
    assert {s["trace"] for s in header.values()} == {HEADER_TRACE}
    # the request's trace context is the send span's ancestor (its parent, or that of
    # the request's server span when FastAPI makes one); the send span is the event's
    assert ancestors(header["send order.placed"])[-1] == HEADER_PARENT
    assert header["process order.placed"]["parent"] == header["send order.placed"]["id"]
    consumed = header["process order.placed"]["attributes"]
    assert consumed["messaging.operation.type"] == "process"
    assert consumed["messaging.consumer.group.name"] == "engine:httpshop"
    assert consumed["messaging.system"] == "overture"

    own = of("by-attribute")
    assert {s["trace"] for s in own.values()} == {OWN_TRACE}
    # an event with a traceparent of its own keeps it: both spans are its children
    assert OWN_PARENT in ancestors(own["send order.placed"])
    assert own["process order.placed"]["parent"] == OWN_PARENT

    plain = of("plain")
    assert {s["trace"] for s in plain.values()} == {HEADER_TRACE}
    assert ancestors(plain["send order.placed"])[-1] == HEADER_PARENT

    untraced = of("untraced")
    assert ancestors(untraced["send order.placed"])[-1] == ""  # the API began the trace
    assert len({s["trace"] for s in untraced.values()}) == 1
    assert untraced["process order.placed"]["parent"] == untraced["send order.placed"]["id"]


def test_a_task_run_by_an_overture_worker_process_continues_the_engines_trace(
    tmp_path: Path,
) -> None:
    """``overture run --no-tasks`` and ``overture worker``, two processes configured by the
    same variables: the worker's span of the attempt is the child of the engine's send
    span of the request, and the engine's consume of the result the worker span's child."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'traced.db'}"
    app = "tests.observe.tracedapp:app"
    with receiving() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OVERTURE_"))}
        env.update(NO_COLOR="1", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                   OTEL_BSP_SCHEDULE_DELAY="100")  # fmt: skip
        commands = [
            ["run", app, "--backend", url, "--no-tasks", "--http", f"127.0.0.1:{port}"],
            ["worker", app, "--backend", url],
        ]
        logs = [tmp_path / "engine.log", tmp_path / "worker.log"]
        procs = []
        for args, log in zip(commands, logs, strict=True):
            with log.open("w") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "overture.cli", *args],
                        cwd=REPO_ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        try:
            api = f"http://127.0.0.1:{port}"
            ready(api, procs[0], logs[0])
            reply = httpx.post(
                f"{api}/events",
                params={"start": "true"},
                headers={"ce-id": "t1", "ce-source": "/t", "ce-type": "order.placed",
                         "ce-specversion": "1.0",
                         "traceparent": f"00-{HEADER_TRACE}-{HEADER_PARENT}-01"},
                json={"order": "t1"},
            )  # fmt: skip
            assert reply.status_code == 202, reply.text
            (instance,) = reply.json()["instances"]
            result = httpx.get(
                f"{api}/instances/{instance}/result", params={"wait": 30}, timeout=40
            )
            assert result.status_code == 200, result.text
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
        assert codes == [0, 0], [log.read_text() for log in logs]
    spans = [s for s in receiver.spans if s["trace"] == HEADER_TRACE]
    named = {(s["service"], s["name"]): s for s in spans}
    request = named[("tracedapp", "send default")]
    worked = named[("tracedapp-worker", "process default")]
    result_span = named[("tracedapp", "process overture.task.completed")]
    assert worked["parent"] == request["id"]
    assert result_span["parent"] == worked["id"]
    assert worked["attributes"]["overture.task.name"] == "charge"
    runs = [s for s in spans if s["name"] == "run order"]
    assert len(runs) == 2  # until the call; from its result to the end
    assert {r["parent"] for r in runs} >= {result_span["id"]}
