"""Liveness and readiness probes beside `/metrics`, on one small HTTP server.

On `settings.metrics_port` (0 = off), from the moment a worker process starts:

- `/metrics`: the Prometheus exposition of the process's registry (prometheus_client's own
  WSGI app: content negotiation, gzip, `name[]=` filtering).
- `/livez`: 200 while the process's event loop is responsive. A task on the loop stamps a
  heartbeat every `HEARTBEAT_S`; once the stamp is older than `LIVENESS_STALE_S`, 503.
- `/readyz`: 200 only when every worker has finished `start()` (models loaded and warmed
  up), the broker's NATS connection is up (`NatsBroker.ping`) and the loop is live; 503
  with the reason otherwise (starting, NATS connection down, stopping, loop stalled).

Both probes answer with a small JSON object. The server runs in daemon threads, so it
answers while models load (live, not ready) and even if the loop is stuck (not live).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from faststream.nats import NatsBroker
from prometheus_client import CollectorRegistry, make_wsgi_app

from rankstream.config import Settings
from rankstream.metrics import Metrics

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
LIVENESS_STALE_S = 10.0
# How long one heartbeat waits for a (re)connecting NATS connection before calling it down.
PING_TIMEOUT_S = 0.5

LIVEZ = "/livez"
READYZ = "/readyz"
METRICS = "/metrics"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str
    checks: dict[str, bool] = field(default_factory=dict)

    def body(self) -> bytes:
        status = "ok" if self.ok else "unavailable"
        return json.dumps({"status": status, "reason": self.reason, "checks": self.checks}).encode()


class Health:
    """What the probes report: written by the event loop, read by the HTTP threads.

    Each field is replaced whole (one attribute store), so readers need no lock.
    """

    def __init__(
        self,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = LIVENESS_STALE_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
        on_beat: Callable[[], object] | None = None,
    ) -> None:
        self._on_beat = on_beat
        self._heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._ping_timeout_s = ping_timeout_s
        self._last_beat = time.monotonic()
        self._broker: NatsBroker | None = None
        self._workers_started = False
        self._nats_connected = False
        self._stopping = False

    def watch_broker(self, broker: NatsBroker) -> None:
        """The broker whose NATS connection readiness depends on (checked every beat)."""
        self._broker = broker

    async def workers_started(self) -> None:
        """Every worker's `start()` returned and the broker started: ready once connected.
        The connection is checked now, so a probe right after this already sees it."""
        self._nats_connected = await self._ping()
        self._workers_started = True

    def stopping(self) -> None:
        """Shutting down: not ready any more (live until the process exits)."""
        self._stopping = True

    def loop_lag_s(self) -> float:
        return time.monotonic() - self._last_beat

    def liveness(self) -> ProbeResult:
        lag = self.loop_lag_s()
        if lag > self._stale_after_s:
            return ProbeResult(
                False, f"event loop unresponsive for {lag:.1f} s", {"event_loop": False}
            )
        return ProbeResult(True, "event loop responsive", {"event_loop": True})

    def readiness(self) -> ProbeResult:
        live = self.liveness()
        checks = {
            "event_loop": live.ok,
            "workers_started": self._workers_started,
            "nats_connected": self._nats_connected,
        }
        if self._stopping:
            return ProbeResult(False, "stopping", checks)
        if not live.ok:
            return ProbeResult(False, live.reason, checks)
        if not self._workers_started:
            return ProbeResult(False, "starting: models loading or warming up", checks)
        if not self._nats_connected:
            return ProbeResult(False, "NATS connection down", checks)
        return ProbeResult(True, "ready", checks)

    async def run_heartbeat(self) -> None:
        """Stamp the heartbeat, call `on_beat` (memory sampling), re-check the NATS connection,
        forever (cancel to stop)."""
        while True:
            self._last_beat = time.monotonic()
            if self._on_beat is not None:
                self._on_beat()
            self._nats_connected = await self._ping()
            await asyncio.sleep(self._heartbeat_s)

    async def _ping(self) -> bool:
        if self._broker is None:
            return False
        try:
            return await self._broker.ping(timeout=self._ping_timeout_s)
        except Exception:  # a failing check means "not connected", never a dead heartbeat
            log.debug("NATS ping failed", exc_info=True)
            return False


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _SilentHandler(WSGIRequestHandler):
    """Probes arrive every few seconds; do not log each one."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def health_app(health: Health, registry: CollectorRegistry) -> WSGIApplication:
    """`/metrics` (of `registry`), `/livez` and `/readyz`; 404 elsewhere."""
    metrics: WSGIApplication = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == METRICS:
            return metrics(environ, start_response)
        if path not in (LIVEZ, READYZ):
            return _plain(start_response, "404 Not Found", b"try /metrics, /livez or /readyz\n")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", b"use GET or HEAD\n")
        result = health.liveness() if path == LIVEZ else health.readiness()
        body = result.body()
        start_response(
            "200 OK" if result.ok else "503 Service Unavailable",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b"" if method == "HEAD" else body]

    return app


def _plain(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


class HealthServer:
    """The HTTP server in a daemon thread: `start()` binds (raises if the port is taken)."""

    def __init__(
        self, health: Health, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"
    ) -> None:
        self._health = health
        self._registry = registry
        self._port = port
        self._addr = addr
        self._server: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started on port 0)."""
        return int(self._server.server_port) if self._server else self._port

    def start(self) -> HealthServer:
        server = make_server(
            self._addr,
            self._port,
            health_app(self._health, self._registry),
            server_class=_ThreadingWSGIServer,
            handler_class=_SilentHandler,
        )
        assert isinstance(server, _ThreadingWSGIServer)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="rankstream-health", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()  # returns once serve_forever has (within its 0.5 s poll)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


@asynccontextmanager
async def health_endpoints(settings: Settings, metrics: Metrics) -> AsyncIterator[Health]:
    """Heartbeat on this loop and, unless `metrics_port` is 0, the HTTP server serving
    `metrics`; both stop when the block ends."""
    health = Health(on_beat=metrics.sample_memory)
    heartbeat = asyncio.create_task(health.run_heartbeat(), name="rankstream-heartbeat")
    server: HealthServer | None = None
    try:
        if settings.metrics_port:
            server = HealthServer(health, metrics.registry, settings.metrics_port).start()
            # Not the word "ready" here: tests and scripts wait for the ready line by it.
            log.info(
                "metrics on http://127.0.0.1:%d%s; liveness and readiness probes beside it",
                server.port, METRICS,
            )  # fmt: skip
        yield health
    finally:
        health.stopping()
        if server is not None:
            await asyncio.to_thread(server.stop)
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
