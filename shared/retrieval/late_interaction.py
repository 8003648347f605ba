"""The `maxsim` rerank stage: the query's token vectors, MaxSim against the candidates'
stored ones, in the store. No pairs go through a model: only the query is encoded."""

from __future__ import annotations

import asyncio
import time

from rankstream.errors import DeadlineExceededError
from rankstream.models.budgets import PairPlan
from rankstream.models.late_interaction import TokenEmbedder
from rankstream.retrieval.token_store import TokenStore
from rankstream.scheduling.batcher import Ticket
from rankstream.stages import StageInput, StageOutcome


class MaxSimStage:
    """Scores candidates of one content table by MaxSim.

    Args:
        embedder: the token model (the one that encoded the table's documents).
        uri: the LanceDB directory of the content tables.
    """

    def __init__(self, embedder: TokenEmbedder, uri: str) -> None:
        self.model_id = embedder.model_id
        self._embedder = embedder
        self._uri = uri
        self._stores: dict[str, TokenStore] = {}

    def store(self, table: str) -> TokenStore:
        if table not in self._stores:
            self._stores[table] = TokenStore.of(self._embedder, self._uri, table)
        return self._stores[table]

    async def score(self, stage: StageInput, table: str) -> StageOutcome:
        """MaxSim of each of `stage.doc_ids`, in order.

        Raises InvalidRequestError for candidates without stored vectors,
        DeadlineExceededError when the deadline passes first."""
        started = time.perf_counter()
        query = await asyncio.to_thread(self._embedder.embed_query, stage.query)
        try:
            scores = await asyncio.wait_for(
                self.store(table).maxsim(query, stage.doc_ids),
                max(0.0, stage.deadline.remaining_s()),
            )
        except TimeoutError as error:
            raise DeadlineExceededError("deadline passed during MaxSim") from error
        count = len(scores)
        plan = PairPlan(encodings=[], owners=list(range(count)), candidates=count,
                        over_budget=0, truncated_tokens=0)  # fmt: skip
        ticket = Ticket(scores, 0.0, time.perf_counter() - started, count, 1)
        return StageOutcome(scores, plan, ticket, tokenized_documents=0)
