"""Workers as separate processes (`rankstream worker KIND`), for benchmarks and tests that
need what a deployment has: one process per replica, its own memory, its own /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.config import Settings
from shared.subprocesses import ChildProcess, terminate

READY_LINE = "ready; Ctrl-C to stop"
RANKSTREAM = str(Path(sys.executable).parent / "rankstream")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see these settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump(exclude_none=True).items():
        secret = getattr(value, "get_secret_value", None)
        env[f"RANKSTREAM_{name.upper()}"] = str(secret() if secret else value)
    return env


class WorkerProcess(ChildProcess):
    """`with WorkerProcess("rerank", settings) as worker:` runs until the block ends."""

    def __init__(self, kind: str, settings: Settings, startup_timeout_s: float = 180) -> None:
        self.kind = kind
        self._settings = settings
        self._startup_timeout_s = startup_timeout_s
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
        give_up = time.monotonic() + self._startup_timeout_s
        while READY_LINE not in self.log_path.read_text(errors="replace"):
            if self._process.poll() is not None or time.monotonic() > give_up:
                self.stop()
                raise RuntimeError(f"{self.kind} worker did not start:\n{self.log_text()}")
            time.sleep(0.2)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        """Resident memory now, from /proc (Linux)."""
        return _status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """The high-water mark of resident memory since start."""
        return _status_kb(self.pid, "VmHWM") / 1024

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM, then wait; returns the exit code."""
        code = terminate(self._process, timeout_s) if self._process is not None else None
        self._log.close()
        return code


def _status_kb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")
