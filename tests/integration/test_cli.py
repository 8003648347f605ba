"""The `rankstream` command as a user runs it: `up` in one process, `query` in another."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.planning.profile import Profile
from rankstream.retrieval.corpus import sample_queries
from rankstream.workers.local import free_port

pytestmark = pytest.mark.integration

RANKSTREAM = str(Path(sys.executable).parent / "rankstream")
STARTUP_TIMEOUT_S = 120


# A line of the log `up` writes to a file: date, time, level, message (never wrapped).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<level>[A-Z]+) +(?P<message>.*)$")


@dataclass
class Stack:
    env: dict[str, str]
    metrics_url: str
    settings: Settings
    log_path: Path
    process: subprocess.Popen[bytes]
    metrics_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Iterator[Stack]:
    """`rankstream up` on free ports with an empty LanceDB: it indexes the sample itself.
    One for the module: the tests below read from it, and the last one stops it with
    Ctrl-C. It runs in a process group of its own, as a command in a terminal does: Ctrl-C
    signals the whole group."""
    tmp_path = tmp_path_factory.mktemp("up")
    nats_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "RANKSTREAM_EMBEDDED_NATS_PORT": str(nats_port),
        "RANKSTREAM_METRICS_PORT": str(metrics_port),
        "RANKSTREAM_GATEWAY_PORT": str(free_port()),
        "RANKSTREAM_LANCEDB_URI": str(tmp_path / "lancedb"),
        "RANKSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "RANKSTREAM_MAX_BATCH_TOKENS": "16384",
        "COLUMNS": "200",
    }
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [RANKSTREAM, "up"], env=env, stdout=log, stderr=log, start_new_session=True
        )
    try:
        _wait_for_line(log_path, "ready", process)
        yield Stack(
            env,
            f"http://127.0.0.1:{metrics_port}/metrics",
            Settings(nats_url=f"nats://127.0.0.1:{nats_port}"),
            log_path,
            process,
            metrics_port,
        )
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 0, log_path.read_text()


def _wait_for_line(path: Path, needle: str, process: subprocess.Popen[bytes]) -> None:
    give_up = time.monotonic() + STARTUP_TIMEOUT_S
    while needle not in path.read_text():
        if process.poll() is not None or time.monotonic() > give_up:
            raise AssertionError(f"`rankstream up` did not get ready:\n{path.read_text()}")
        time.sleep(0.2)


def test_query_json_returns_a_ranked_result_with_stage_timings(stack: Stack) -> None:
    completed = subprocess.run(
        [RANKSTREAM, "query", "How do vaccines train the immune system?", "--json",
         "--top-k", "3", "--depth", "10"],
        env=stack.env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(completed.stdout)
    assert len(result["results"]) == 3
    assert result["results"][0]["doc_id"].startswith("vaccine-answer")
    timings = result["timings_ms"]
    total = timings.pop("total")
    assert set(timings) >= {"queue_wait", "embed", "search", "batch_wait", "inference"}
    assert sum(timings.values()) <= total


def test_metrics_show_batches_larger_than_one_request_under_concurrent_load(stack: Stack) -> None:
    depth = 16  # a bucket boundary of rankstream_rerank_batch_pairs
    texts = [q.text for q in sample_queries()]

    async def sixteen_at_once() -> None:
        async with RankstreamClient(stack.settings) as client:
            await asyncio.gather(
                *(
                    client.query(texts[i % len(texts)], depth=depth, timeout_s=120)
                    for i in range(16)
                )
            )

    asyncio.run(sixteen_at_once())
    answered = 'rankstream_requests_total{outcome="ok",worker="rerank"}'
    give_up = time.monotonic() + 15  # a worker counts an answer once JetStream confirmed it
    while (samples := _scrape(stack.metrics_url)).get(answered, 0) < 16:
        assert time.monotonic() < give_up, samples.get(answered)
        time.sleep(0.2)
    batches = samples["rankstream_rerank_batch_pairs_count"]
    up_to_one_request = samples[f'rankstream_rerank_batch_pairs_bucket{{le="{depth}.0"}}']
    assert batches - up_to_one_request > 0, "no batch held more pairs than one request has"
    assert samples["rankstream_rerank_batch_requests_sum"] > batches
    assert samples['rankstream_stage_seconds_count{stage="total"}'] >= 16


def test_up_loads_the_embedder_once_and_an_idle_stack_logs_no_traceback(stack: Stack) -> None:
    time.sleep(3)  # idle JetStream pulls time out every second (fetch_wait_ms)
    log = stack.log_path.read_text()
    assert "indexed" in log, "the sample corpus was not indexed: nothing to check"
    assert log.count("loading embedder") == 1, log
    assert "Traceback" not in log
    assert "raised an exception" not in log


def test_query_prints_readable_lines_and_says_when_the_cache_answered(stack: Stack) -> None:
    command = [
        RANKSTREAM,
        "query",
        "What stops a DDoS attack on a web application?",
        "--top-k",
        "2",
        "--depth",
        "5",
        "--retrieval",
        "hybrid",
        "--priority",
        "400",
    ]

    def screen(*extra: str) -> str:
        done = subprocess.run(
            [*command, *extra], env=stack.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first, again, fresh = screen(), screen(), screen("--no-cache")
    lines = first.splitlines()
    assert lines[0].startswith(" 1. "), first
    assert "ddos-answer" in lines[0], first
    assert "retrieval: hybrid; 5 candidates reranked" in first
    timings = next(line for line in lines if line.startswith("time (ms): total "))
    assert "inference" in timings, timings
    assert "{" not in timings, timings
    assert any(line.startswith("stage ce@5: 5 candidates, 5 pairs, ") for line in lines), first
    assert "cache hit" not in first
    assert "cache hit: stage timings are from the original answer" in again
    assert "cache hit" not in fresh


def test_ctrl_c_stops_each_component_in_one_line_and_no_traceback(stack: Stack) -> None:
    """Ctrl-C in a terminal: SIGINT to the whole process group. The last screen is a line
    per component, in the order they stop, and nothing else. (Last of the tests on `stack`.)"""
    seen = len(stack.log_path.read_text())
    os.killpg(stack.process.pid, signal.SIGINT)
    code = stack.process.wait(timeout=60)
    screen = stack.log_path.read_text()
    last = screen[seen:].strip().splitlines()
    assert code == 0, screen
    assert "Traceback" not in screen, screen
    parsed = [LOG_LINE.match(line) for line in last]
    assert all(parsed), f"a line not from the log: {last}"
    assert [(m["level"], m["message"]) for m in parsed if m] == [
        ("INFO", "gateway stopped"),
        ("INFO", "workers retrieval, rerank stopped (0 fetched messages handed back)"),
        ("INFO", "nats-server stopped"),
        ("INFO", f"metrics on port {stack.metrics_port} stopped"),
    ], "\n".join(last)


@pytest.mark.parametrize(
    ("command", "busy", "setting"),
    [
        (["up"], "RANKSTREAM_GATEWAY_PORT", "--gateway-port"),
        (["up"], "RANKSTREAM_EMBEDDED_NATS_PORT", "--nats-port"),
        (["up"], "RANKSTREAM_METRICS_PORT", "--metrics-port"),
        (["worker", "rerank"], "RANKSTREAM_METRICS_PORT", "--metrics-port"),
        (["gateway"], "RANKSTREAM_GATEWAY_PORT", "--port"),
    ],
)
def test_a_busy_port_stops_the_command_at_once_in_one_line_naming_the_port_and_setting(
    tmp_path: Path, command: list[str], busy: str, setting: str
) -> None:
    """Checked before any model loads: the line comes in well under 2 s (the models take
    tens of seconds), and it names the port and what sets it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "RANKSTREAM_EMBEDDED_NATS_PORT": str(free_port()),
            "RANKSTREAM_METRICS_PORT": str(free_port()),
            "RANKSTREAM_GATEWAY_PORT": str(free_port()),
            "RANKSTREAM_LANCEDB_URI": str(tmp_path / "lancedb"),
            busy: str(port),
            "COLUMNS": "80",
        }
        started = time.monotonic()
        completed = subprocess.run(
            [RANKSTREAM, *command], env=env, capture_output=True, text=True, timeout=60
        )
        elapsed = time.monotonic() - started
    screen = (completed.stdout + completed.stderr).strip()
    assert completed.returncode == 1, screen
    assert elapsed < 2.0, f"{elapsed:.1f} s: {screen}"
    (line,) = screen.splitlines()
    assert line.startswith(f"error: port {port} "), line
    assert "is in use" in line
    assert busy in line
    assert setting in line


def test_demo_shows_both_orders_and_no_traceback(tmp_path: Path, model_cache_dir: Path) -> None:
    env = {
        **os.environ,
        "RANKSTREAM_LANCEDB_URI": str(tmp_path / "lancedb"),
        "RANKSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "RANKSTREAM_METRICS_PORT": "0",
        "COLUMNS": "200",
    }
    completed = subprocess.run(
        [RANKSTREAM, "demo"], env=env, capture_output=True, text=True, timeout=600
    )
    screen = completed.stdout + completed.stderr
    assert completed.returncode == 0, screen
    assert "after reranking" in screen
    assert "Traceback" not in screen
    assert "raised an exception" not in screen


def test_query_without_a_running_pipeline_fails_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "RANKSTREAM_EMBEDDED_NATS_PORT": str(free_port())}
    completed = subprocess.run(
        [RANKSTREAM, "query", "hello"], env=env, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1
    assert "cannot reach NATS" in completed.stdout


def test_up_worker_and_gateway_refuse_a_bad_profile_in_one_line_before_starting(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "a-profile-whose-path-is-longer-than-the-terminal-is-wide.json"
    bad.write_text('{"pipeline": "sparse+ce@3"}')
    env = {
        **os.environ,
        "RANKSTREAM_EMBEDDED_NATS_PORT": str(free_port()),
        "RANKSTREAM_LANCEDB_URI": str(tmp_path / "lancedb"),
        "RANKSTREAM_METRICS_PORT": "0",
        "RANKSTREAM_GATEWAY_PORT": "0",
        "COLUMNS": "80",
    }
    in_env = {"RANKSTREAM_PROFILE": str(bad)}
    for command, extra in [
        (["up", "--profile", str(bad)], {}),
        (["up"], in_env),
        (["worker", "retrieval"], in_env),
        (["worker", "rerank"], in_env),
        (["gateway"], in_env),
    ]:
        completed = subprocess.run(
            [RANKSTREAM, *command], env=env | extra, capture_output=True, text=True, timeout=60
        )
        screen = (completed.stdout + completed.stderr).strip()
        assert completed.returncode == 1, (command, screen)
        # One line (nothing started, so nothing else logged), naming the file and the fault.
        (line,) = screen.splitlines()
        assert line.startswith(f"error: profile {bad}: pipeline: "), (command, line)
        assert "'sparse' is not a retrieval mode" in line


def test_up_serves_its_profile_to_a_query_naming_no_pipeline(
    tmp_path: Path, nats_url: str, sample_db: str, model_cache_dir: Path
) -> None:
    """`up --profile` against the tests' NATS and indexed sample: `rankstream query` with no
    pipeline is answered with the profile's plan."""
    profile = tmp_path / "profile.json"
    profile.write_text(Profile(pipeline="bm25+ce@2/best32~0.5").to_json())
    env = {
        **os.environ,
        "RANKSTREAM_NATS_URL": nats_url,
        "RANKSTREAM_SUBJECT_PREFIX": f"t{uuid.uuid4().hex[:10]}",
        "RANKSTREAM_LANCEDB_URI": sample_db,
        "RANKSTREAM_MODEL_CACHE_DIR": str(model_cache_dir),
        "RANKSTREAM_METRICS_PORT": "0",
        "RANKSTREAM_GATEWAY_PORT": "0",
        # The tests' streams share one server: keep each one's reservation small.
        **{f"RANKSTREAM_{name}_MAX_BYTES": str(16 << 20) for name in
           ("CACHE", "RESULTS", "DEAD_LETTERS")},
        "COLUMNS": "200",
    }  # fmt: skip
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [RANKSTREAM, "up", "--profile", str(profile)], env=env, stdout=log, stderr=log
        )
    try:
        _wait_for_line(log_path, "ready", process)
        completed = subprocess.run(
            [RANKSTREAM, "query", "How do vaccines train the immune system?", "--json",
             "--top-k", "3"],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
    result = json.loads(completed.stdout)
    assert [stage["name"] for stage in result["stages"]] == ["ce@2/best32~0.5"]
    assert result["retrieval"]["mode"] == "bm25"
    assert "serving profile" in log_path.read_text()


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return _samples(response.read().decode())


def _samples(exposition: str) -> dict[str, float]:
    """`name{labels}` -> value, labels sorted, for every sample of every family."""
    flat = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            flat[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return flat
