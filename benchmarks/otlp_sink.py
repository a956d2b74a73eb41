"""A local OTLP/HTTP trace receiver for the tracing benchmarks, in a process of its own.

``python -m benchmarks.otlp_sink`` listens on 127.0.0.1 (a free port, printed on its
first line of output), answers ``POST /v1/traces`` as an OpenTelemetry collector does
(decoding each ``ExportTraceServiceRequest``, protobuf, gzip or not, and counting its
spans) and ``GET /count`` with the number of spans received so far. The engine's
exporter then does what it does in production (encode the batch, send it over HTTP, wait
for the answer), while decoding costs this process's CPU, not the engine's.

:class:`Sink` starts it from the measuring process and stops it.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_lock = threading.Lock()
_spans = 0


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        global _spans
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with _lock:
            _spans += count
        self._answer(ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self) -> None:
        with _lock:
            count = _spans
        self._answer(str(count).encode(), "text/plain")

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Sink:
    """The receiver running in a subprocess (:attr:`endpoint`), until :meth:`close`."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.otlp_sink"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        port = int(self._proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}"
        self.endpoint = f"{self.url}/v1/traces"
        """Where the OTLP/HTTP exporter sends (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)."""

    def spans(self) -> int:
        """Spans received so far."""
        with urllib.request.urlopen(f"{self.url}/count", timeout=10) as answer:
            return int(answer.read())

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
