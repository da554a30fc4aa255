"""The worker's liveness: a heartbeat its event loop writes, and the HTTP server on
``WORKER_METRICS_PORT`` that answers ``/livez`` from it beside ``/metrics``.

The server runs on a thread of its own, not on the event loop: ``/metrics`` then still answers
while the loop is stuck (Prometheus sees the heartbeat grow old: ``WorkerLoopStuck``) and while
the worker starts, and ``/livez`` fails when the loop has not beaten for
:data:`STALE_AFTER_S`, which is what a loop-served endpoint's timeout would tell, on the same port.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from wacrm.core import metrics

BEAT_EVERY_S = 5.0  # how often the event loop beats
STALE_AFTER_S = 30.0  # /livez fails once the last beat is older than this: the loop is stuck

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Heartbeat:
    """The last beat of one event loop. :meth:`beat` runs on the loop; :meth:`verdict` on any thread."""

    def __init__(self, stale_after_s: float = STALE_AFTER_S) -> None:
        self.stale_after_s = stale_after_s
        self._at: float | None = None  # time.monotonic() of the last beat

    def beat(self) -> None:
        self._at = time.monotonic()
        metrics.WORKER_HEARTBEAT.set(time.time())

    def age(self) -> float | None:
        """Seconds since the last beat; ``None`` before the first."""
        return None if self._at is None else time.monotonic() - self._at

    def verdict(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body of ``/livez``: 200 while the loop beats, else 503."""
        age = self.age()
        if age is None:
            return 503, {"ok": False, "code": "STARTING", "error": "the worker's event loop has not beaten yet"}
        if age > self.stale_after_s:
            why = f"the worker's event loop last beat {age:.0f} s ago (limit {self.stale_after_s:.0f} s)"
            return 503, {"ok": False, "code": "LOOP_STUCK", "error": why}
        return 200, {"ok": True, "heartbeat_age_seconds": round(age, 3)}


def app(heartbeat: Heartbeat) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI app: ``/livez`` from the heartbeat, anything else prometheus-client's ``/metrics``."""
    metrics_app = make_wsgi_app()

    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/livez":
            status, body = heartbeat.verdict()
            start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                           [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [orjson.dumps(body)]
        return metrics_app(environ, start_response)  # type: ignore[no-any-return]

    return serve


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes are not logged."""


def serve(port: int, host: str, heartbeat: Heartbeat) -> WSGIServer:
    """Serve ``/metrics`` and ``/livez`` on a daemon thread (as prometheus-client's ``start_http_server``)."""

    class Server(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    httpd = make_server(host, port, app(heartbeat), Server, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="wacrm-metrics", daemon=True).start()
    return httpd
