"""`/livez` and `/readyz` of a real `rankstream worker rerank` process: live from the start,
ready only after model warm-up with a live NATS connection, not ready while NATS is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rankstream.workers.local import RANKSTREAM, EmbeddedNatsServer, free_port
from rankstream.workers.logs import READY_LINE

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 180
FLIP_TIMEOUT_S = 30
POLL_S = 0.05


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: str

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


def _get(url: str) -> Response | None:
    """The response (any status), or None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return Response(
                response.status, response.headers.get("Content-Type", ""), response.read().decode()
            )
    except urllib.error.HTTPError as error:
        return Response(error.code, error.headers.get("Content-Type", ""), error.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path
    base_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def probe(self, path: str) -> Response | None:
        return _get(self.base_url + path)

    def status(self, path: str) -> int | None:
        response = self.probe(path)
        return response.status if response else None

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        give_up = time.monotonic() + FLIP_TIMEOUT_S
        while not condition():
            assert self.process.poll() is None, f"worker exited:\n{self.log()}"
            assert time.monotonic() < give_up, f"timed out waiting for {what}:\n{self.log()}"
            time.sleep(0.2)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    """Its JetStream store outlives a restart, so the worker's streams and consumer do too."""
    with EmbeddedNatsServer(store_dir=tmp_path / "jetstream") as server:
        yield server


@pytest.fixture
def worker(
    tmp_path: Path, model_cache_dir: Path, nats_server: EmbeddedNatsServer
) -> Iterator[Worker]:
    """`rankstream worker rerank`, not yet ready: the test watches it start."""
    metrics_port = free_port()
    env = {
        **os.environ,
        "RANKSTREAM_NATS_URL": nats_server.url,
        "RANKSTREAM_METRICS_PORT": str(metrics_port),
        "RANKSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "RANKSTREAM_SUBJECT_PREFIX": f"h{uuid.uuid4().hex[:10]}",
        "COLUMNS": "200",
    }
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [RANKSTREAM, "worker", "rerank"], env=env, stdout=log, stderr=log
        )
    try:
        yield Worker(process, log_path, f"http://127.0.0.1:{metrics_port}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_probes_follow_warm_up_and_the_nats_connection(
    worker: Worker, nats_server: EmbeddedNatsServer
) -> None:
    # Start-up: live early, not ready until the models are loaded and warmed up.
    live_before_ready_line = False
    not_ready_before_ready_line: Response | None = None
    give_up = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        ready_line_logged = READY_LINE in worker.log()  # read before probing: no race
        if ready_line_logged:
            break
        assert worker.process.poll() is None, f"worker exited:\n{worker.log()}"
        assert time.monotonic() < give_up, f"worker did not get ready:\n{worker.log()}"
        live_before_ready_line |= worker.status("/livez") == 200
        readyz = worker.probe("/readyz")
        if readyz is not None and readyz.status == 503:
            not_ready_before_ready_line = readyz
        time.sleep(POLL_S)
    assert live_before_ready_line, "/livez was not 200 while the worker was starting"
    assert not_ready_before_ready_line is not None, "/readyz never said 503 during start-up"
    starting = not_ready_before_ready_line.json()
    assert starting["status"] == "unavailable"
    assert starting["checks"]["workers_started"] is False
    assert not_ready_before_ready_line.content_type == "application/json"

    # Readiness is set before the ready line is logged: no polling needed here.
    ready = worker.probe("/readyz")
    assert ready is not None
    assert ready.status == 200, ready.body
    assert ready.json()["checks"] == {
        "event_loop": True,
        "workers_started": True,
        "nats_connected": True,
    }
    assert worker.status("/livez") == 200
    _assert_serves_rankstream_metrics(worker)

    # NATS goes away: not ready, still live.
    nats_server.stop()
    worker.wait_for("/readyz 503 after NATS stopped", lambda: worker.status("/readyz") == 503)
    down = worker.probe("/readyz")
    assert down is not None
    assert "nats" in down.json()["reason"].lower(), down.body
    assert down.json()["checks"]["workers_started"] is True
    for _ in range(10):  # live across a few heartbeats without NATS
        assert worker.status("/livez") == 200
        time.sleep(0.2)
    _assert_serves_rankstream_metrics(worker)

    # NATS is back on the same port: ready again once the client has reconnected.
    nats_server.start()
    worker.wait_for("/readyz 200 after NATS restarted", lambda: worker.status("/readyz") == 200)
    assert worker.status("/livez") == 200

    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=30) == 0, worker.log()
    assert "stopped" in worker.log()
    assert worker.probe("/livez") is None, "the health server outlived the process"


def _assert_serves_rankstream_metrics(worker: Worker) -> None:
    metrics = worker.probe("/metrics")
    assert metrics is not None
    assert metrics.status == 200
    assert metrics.content_type.startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(metrics.body)}
    assert {"rankstream_rerank_inflight_pairs", "rankstream_rerank_batch_pairs"} <= families
