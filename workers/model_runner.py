"""The model runner: a worker's inference loop, the only caller of its model.

It pulls the next batch from a micro-batcher (which decides when a batch is due and what is
in it), runs the model on the batch's items in a thread, so the event loop never blocks on a
forward pass, and hands the outputs back, or the error, which fails that batch's requests
only. The batcher never calls a model and the model never sees a queue: the shape of
text-embeddings-inference's batching task over `core/src/queue.rs`, and of vLLM's
`EngineCore.step()` (schedule, execute, update). The rerank worker runs one per scorer; the
retrieval worker one for its query embedder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from rankstream.scheduling.batcher import MicroBatcher

T = TypeVar("T")
R = TypeVar("R")


class ModelRunner(Generic[T, R]):
    """Run as `async with ModelRunner(batcher, model.score):` for as long as requests may
    be queued on `batcher`.

    Args:
        batcher: the queue it pulls from; the runner opens it on entry and closes it on exit,
            failing the requests still queued or being scored (their callers get an error
            instead of waiting forever).
        run: the model call: a batch's items in, one output per item out, in order. It runs
            in a worker thread, one batch at a time. What it raises fails the requests with an
            item in that batch, and the runner goes on with the next batch; so does the wrong
            number of outputs.
        name: names the loop's task, for logs and task dumps.
    """

    def __init__(
        self,
        batcher: MicroBatcher[T, R],
        run: Callable[[list[T]], Sequence[R]],
        name: str = "model-runner",
    ) -> None:
        self.batcher = batcher
        self.run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ModelRunner[T, R]:
        await self.batcher.__aenter__()
        self._task = asyncio.create_task(self._loop(), name=self._name)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.batcher.__aexit__(*exc_info)

    async def _loop(self) -> None:
        while True:
            batch = await self.batcher.next_batch()
            try:
                outputs = await asyncio.to_thread(self.run, batch.items)
            except Exception as error:
                self.batcher.fail(batch, error)
            else:
                self.batcher.complete(batch, outputs)
