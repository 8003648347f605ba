"""The async client: publish a query, await its ranked result.

async with RankstreamClient(Settings()) as client:
    result = await client.query("how do vaccines work?", top_k=5, depth=20)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypedDict, Unpack

import nats
from nats.aio.client import Client as NatsConnection
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NoStreamResponseError, NotFoundError
from pydantic import ValidationError

from rankstream.config import Settings
from rankstream.errors import (
    QueryFailedError,
    QueryTimeoutError,
    RequestTooLargeError,
    UnavailableError,
)
from rankstream.wire.connection import connect_kwargs, loggable_url
from rankstream.wire.contract import (
    REPLY_ADAPTER,
    Depth,
    ErrorResult,
    QueryRequest,
    RankedResult,
    RerankDocument,
    RerankRequest,
    RerankStage,
    RetrievalMode,
    now_ms,
)
from rankstream.wire.handoff import dedup_id
from rankstream.wire.pipeline import PipelineSpec
from rankstream.wire.subjects import Subjects

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 2.0
# What a published request carries besides its JSON: the `Nats-Msg-Id` header and its
# framing, which count against the server's max_payload too.
HEADER_ROOM_BYTES = 256
# A NATS user name that can lead a subject token (and so a per-user results subject).
SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class QueryOptions(TypedDict, total=False):
    """What a query may ask for besides its text (`RankstreamClient.query` says each)."""

    top_k: int | None
    depth: Depth | None
    timeout_s: float | None
    pipeline: PipelineSpec | str | None
    retrieval: RetrievalMode | None
    cache: bool
    return_documents: bool
    priority: int
    table: str | None
    filter: str | None


class RerankOptions(TypedDict, total=False):
    """What a rerank may ask for besides the query and documents (see `rerank`)."""

    top_n: int | None
    stages: Sequence[RerankStage]
    max_doc_tokens: int | None
    priority: int
    timeout_s: float | None


class RankstreamClient:
    """Publishes queries to the pipeline and awaits their answers.

    Use it as an async context manager, which connects and closes::

        async with RankstreamClient(Settings()) as client:
            result = await client.query("how do vaccines work?")

    Args:
        settings: NATS address, credentials and TLS, the subject prefix, and the request
            defaults (`default_top_k`, `default_depth`, `default_timeout_ms`).
        client_id: names this client's reply subject (`{prefix}.results.<client_id>`);
            default: `<nats_user>.<random>` when `settings.nats_user` is set (so a server
            can let each user read only `{prefix}.results.<user>.>`: infra/nats/
            accounts.conf), else random. Two clients must not share one.
    """

    def __init__(self, settings: Settings, client_id: str | None = None) -> None:
        self._settings = settings
        self._subjects = Subjects.from_settings(settings)
        self.client_id = client_id or default_client_id(settings)
        self._connection: NatsConnection | None = None
        self._waiting: dict[str, asyncio.Future[RankedResult | ErrorResult]] = {}

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up now (it reconnects by itself when it is not)."""
        return self._connection is not None and self._connection.is_connected

    async def consumer_info(self, stream: str, consumer: str, timeout_s: float) -> ConsumerInfo:
        """JetStream's view of a consumer (e.g. a worker's durable: `num_waiting` is the pull
        requests its replicas have waiting). Raises UnavailableError when not connected,
        nats-py's errors otherwise (NotFoundError: no such stream or consumer; TimeoutError:
        no answer, e.g. a NATS user not allowed `$JS.API.CONSUMER.INFO`)."""
        if self._connection is None:
            raise UnavailableError("client is not connected")
        js = self._connection.jetstream(timeout=timeout_s)
        info: ConsumerInfo = await js.consumer_info(stream, consumer)
        return info

    @property
    def reply_subject(self) -> str:
        return self._subjects.results_for(self.client_id)

    async def __aenter__(self) -> RankstreamClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to NATS and listen for answers.

        Raises:
            UnavailableError: NATS was not reachable within `settings.connect_timeout_s`
                (start it with `rankstream up`, or set RANKSTREAM_NATS_URL).
        """
        try:
            # Reconnect forever once connected, but give up on the first connection in time:
            # nats-py would otherwise retry an unreachable server forever.
            self._connection = await asyncio.wait_for(
                nats.connect(
                    **connect_kwargs(self._settings),
                    inbox_prefix=inbox_prefix(self._settings),
                    max_reconnect_attempts=-1,
                    error_cb=_log_connection_error,
                ),
                self._settings.connect_timeout_s,
            )
        except Exception as error:  # nats-py raises several unrelated types here
            raise UnavailableError(
                f"cannot reach NATS at {loggable_url(self._settings.effective_nats_url)} within "
                f"{self._settings.connect_timeout_s:g} s ({type(error).__name__}); "
                "start it with `rankstream up` or set RANKSTREAM_NATS_URL"
            ) from error
        await self._listen_for_replies()

    async def _listen_for_replies(self) -> None:
        """Through JetStream where the results stream exists (it drops a duplicate answer,
        same Nats-Msg-Id after a redelivery, and replays what was published while this
        client was reconnecting), and over core NATS in every case; a second answer to a
        request is ignored here."""
        assert self._connection is not None
        try:
            # Named, so nats-py asks for it on `$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`:
            # a subject a server's permissions can bind to this client's results subject.
            await self._connection.jetstream().subscribe(
                self.reply_subject,
                cb=self._on_reply,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                config=ConsumerConfig(name=f"results_{uuid.uuid4().hex}"),
            )
        except (nats.js.errors.Error, nats.errors.Error) as error:
            log.info("answers over core NATS only (results stream unavailable: %r)", error)
        # Over core NATS as well, always: on a NATS cluster the stream consumer above lives
        # on one node, and when that node dies nats-py may fail to recreate it (a named
        # ordered consumer); answers published while this client is connected still arrive.
        # Whichever copy comes first answers; the other finds its future done.
        await self._connection.subscribe(self.reply_subject, cb=self._on_reply)

    async def close(self) -> None:
        """Drain and close the connection (answers still in flight are delivered first).
        While NATS is away there is nothing to drain (nats-py refuses to): the connection
        is closed as it is."""
        connection, self._connection = self._connection, None
        if connection is None or connection.is_closed:
            return
        try:
            await connection.drain()
        except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
            with contextlib.suppress(OSError):  # a flush into the lost socket
                await connection.close()

    def request(self, text: str, **options: Unpack[QueryOptions]) -> QueryRequest:
        """A query request that will be answered on this client's reply subject; the options
        (see `query`) left out take the settings' defaults. Send it with `send`.

        Raises InvalidRequestError for a pipeline that does not parse."""
        settings = self._settings
        timeout_s, depth = options.get("timeout_s"), options.get("depth")
        top_k, pipeline = options.get("top_k"), options.get("pipeline")
        fields: dict[str, Any] = {
            "retrieval": options.get("retrieval"),
            "stages": None if depth is None else single_stage(depth),
        }
        if pipeline is not None:
            spec = PipelineSpec.parse(pipeline) if isinstance(pipeline, str) else pipeline
            fields = spec.request_fields()
        return QueryRequest(
            query=text,
            top_k=settings.default_top_k if top_k is None else top_k,
            timeout_ms=settings.default_timeout_ms if timeout_s is None else int(timeout_s * 1000),
            reply_to=self.reply_subject,
            cache=options.get("cache", True),
            return_documents=options.get("return_documents", True),
            priority=options.get("priority", 0),
            table=options.get("table"),
            filter=options.get("filter"),
            **fields,
        )

    async def query(self, text: str, **options: Unpack[QueryOptions]) -> RankedResult:
        """Ask and wait for the ranked result.

        Args:
            text: the query.
            top_k: results to return (default `settings.default_top_k`).
            depth: candidates the cross-encoder reranks; 0 returns the retrieval order,
                `auto` lets the worker choose (default: the workers' `default_depth`).
            timeout_s: how long the pipeline may take, and how long this call waits
                (default `settings.default_timeout_ms`). Workers answer a little before it:
                with the retrieval order marked `degraded` when reranking would miss it.
            pipeline: the retrieval mode and rerank cascade, as `PipelineSpec` or in its
                notation (`hybrid+ce@100/doc64>ce@20`); it replaces `depth`.
            retrieval: dense, bm25 or hybrid (default: the workers' `default_retrieval`);
                `pipeline` names its own.
            cache: answer from the result cache when it can (and cache the answer).
            return_documents: include each result's text (default); False sends ids and
                scores only, a much smaller answer for callers that have the texts.
            priority: 0 (default, most urgent) to 999; 668 and up is the batch lane.
            table: the LanceDB table to search (default: the workers' configured table).
            filter: a metadata filter over the table's columns, e.g. `topic = 'energy'`
                (grammar in rankstream/wire/filters.py); a bad one raises ValidationError.

        Returns:
            The ranked result: `results` best first, `timings_ms` per stage.

        Raises:
            QueryTimeoutError: no answer came within the timeout (are the workers running?).
            QueryFailedError: a worker answered with an error; `.code` says which
                (`invalid_request`: fix the request; `overloaded`: retry later;
                `expired`: allow more time) and `.worker` where.
            UnavailableError: the client is not connected, or no stream takes queries.
        """
        reply = await self.send(self.request(text, **options))
        if isinstance(reply, ErrorResult):
            raise QueryFailedError(reply.code, reply.message, reply.worker)
        return reply

    def rerank_request(
        self,
        query: str,
        documents: Sequence[str | RerankDocument],
        *,
        top_n: int | None = None,
        stages: Sequence[RerankStage] = (),
        max_doc_tokens: int | None = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> RerankRequest:
        """A request to rerank `documents` (texts, or RerankDocument with ids) for `query`,
        with no retrieval; see `rerank`. `max_doc_tokens` applies when `stages` is empty
        (a stage carries its own budget)."""
        settings = self._settings
        return RerankRequest(
            query=query,
            documents=[RerankDocument(text=d) if isinstance(d, str) else d for d in documents],
            top_n=top_n,
            stages=list(stages) or budget_stage(len(documents), max_doc_tokens),
            priority=priority,
            timeout_ms=settings.default_timeout_ms if timeout_s is None else int(timeout_s * 1000),
            reply_to=self.reply_subject,
        )

    async def rerank(
        self,
        query: str,
        documents: Sequence[str | RerankDocument],
        **options: Unpack[RerankOptions],
    ) -> RankedResult:
        """Rerank candidates you bring: no retrieval, the same batching and answer.

        Args:
            query: the query.
            documents: texts, or RerankDocument(text=..., id=...); a result's `doc_id` is the
                id given, else the document's position (from 0), and its `retrieval_rank`
                that position plus one.
            top_n: results to return (default: all).
            stages: a cascade over the documents (default: `ce` over all of them).
            max_doc_tokens: a document token budget (the query is never cut).
            priority: 0 (default, most urgent) to 999; 668 and up is the batch lane.
            timeout_s: as for `query`.

        Returns:
            The ranked result, best first.

        Raises:
            As `query`: QueryTimeoutError, QueryFailedError (e.g. `invalid_request` for more
            documents than `max_depth`), UnavailableError.
        """
        reply = await self.send(self.rerank_request(query, documents, **options))
        if isinstance(reply, ErrorResult):
            raise QueryFailedError(reply.code, reply.message, reply.worker)
        return reply

    async def send(
        self, request: QueryRequest | RerankRequest, wait_s: float | None = None
    ) -> RankedResult | ErrorResult:
        """Publish a prepared request and wait for the reply, an answer or an error.

        Args:
            request: from `request()`, or built by hand with this client's `reply_subject`.
            wait_s: how long to wait; default the request's timeout (longer, e.g. to see
                the `expired` answer a late request gets).

        Raises:
            QueryTimeoutError: no reply within the wait.
            RequestTooLargeError: the request's message is over what the server carries or
                the workers take: send fewer or shorter documents (nothing was published).
            UnavailableError: the client is not connected, or no stream takes queries.
        """
        if self._connection is None:
            raise UnavailableError(
                "client is not connected: use `async with RankstreamClient(...)`"
            )
        payload = request.model_dump_json().encode()
        self._check_fits(payload)
        future: asyncio.Future[RankedResult | ErrorResult] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[request.request_id] = future
        try:
            await self._publish(request, payload)
            return await asyncio.wait_for(future, wait_s or request.timeout_ms / 1000)
        except TimeoutError as error:
            raise QueryTimeoutError(
                f"no answer to request {request.request_id} within {request.timeout_ms} ms: "
                "are the retrieval and rerank workers running?"
            ) from error
        finally:
            self._waiting.pop(request.request_id, None)

    def _check_fits(self, payload: bytes) -> None:
        """Raise RequestTooLargeError for a message the connected server would refuse
        (`max_payload`, which nats-py learns from the server) or the workers would
        (`max_message_bytes`): publishing it would fail the same way on every retry."""
        assert self._connection is not None
        size = len(payload) + HEADER_ROOM_BYTES
        server_limit = self._connection.max_payload
        worker_limit = self._settings.max_message_bytes
        if size <= min(server_limit, worker_limit):
            return
        which = (
            f"the NATS server's max_payload of {server_limit} bytes (raise it in the server's "
            "config: infra/nats/nats-server.conf)"
            if server_limit <= worker_limit
            else f"the workers' max_message_bytes of {worker_limit} (RANKSTREAM_MAX_MESSAGE_BYTES)"
        )
        raise RequestTooLargeError(
            f"the request is a message of {size} bytes, over {which}: send fewer or shorter "
            "documents"
        )

    async def _publish(self, request: QueryRequest | RerankRequest, payload: bytes) -> None:
        """Publish until JetStream confirms it, retrying through a NATS outage until the
        request's deadline; the Nats-Msg-Id makes a retried publish land once."""
        assert self._connection is not None
        is_query = isinstance(request, QueryRequest)
        subject = self._subjects.queries if is_query else self._subjects.rerank
        delay = 0.1
        while True:
            try:
                await self._connection.jetstream().publish(
                    subject,
                    payload,
                    headers={"Nats-Msg-Id": dedup_id(request.request_id, "query")},
                    timeout=PUBLISH_TIMEOUT_S,
                )
                return
            except nats.errors.MaxPayloadError:
                self._check_fits(payload)  # reconnected to a server that carries less
                raise
            except NoStreamResponseError as error:
                # On a NATS cluster a stream has no leader to answer while its nodes elect
                # one (a node died): retry then. A stream that does not exist is an error.
                if not await self._stream_exists(subject):
                    raise UnavailableError(
                        f"no JetStream stream takes {subject}: start the workers "
                        "(`rankstream up` or `rankstream worker ...`) first"
                    ) from error
                if now_ms() + delay * 1000 > request.deadline_ms:
                    raise QueryTimeoutError(
                        f"could not publish request {request.request_id} before its deadline: "
                        "its stream has no leader"
                    ) from error
                log.info("stream of %s has no leader; retrying in %.1f s", subject, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except (TimeoutError, nats.errors.Error) as error:
                if now_ms() + delay * 1000 > request.deadline_ms:
                    raise QueryTimeoutError(
                        f"could not publish request {request.request_id} before its deadline: "
                        f"{error!r}"
                    ) from error
                log.info("publish failed (%r); retrying in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _stream_exists(self, subject: str) -> bool:
        """Whether a stream takes `subject` (asked of the JetStream API); True when the API
        does not answer either (no meta leader during an election)."""
        assert self._connection is not None
        try:
            await self._connection.jetstream().find_stream_name_by_subject(subject)
        except NotFoundError:
            return False
        except (TimeoutError, nats.errors.Error):
            return True
        return True

    async def _on_reply(self, message: Msg) -> None:
        try:
            reply = REPLY_ADAPTER.validate_json(message.data)
        except ValidationError as error:
            log.warning("ignoring a malformed reply on %s: %s", message.subject, error)
            return
        future = self._waiting.get(reply.request_id)
        # A second answer to the same request (after a redelivery) finds its future done.
        if future is not None and not future.done():
            future.set_result(reply)


def single_stage(depth: Depth) -> list[RerankStage]:
    """The cascade `depth` asks for: one `ce` stage over that many candidates (none at 0)."""
    return [] if depth == 0 else [RerankStage(depth=depth)]


def budget_stage(documents: int, max_doc_tokens: int | None) -> list[RerankStage] | None:
    """One `ce` stage over every document with a token budget; None (the workers' default
    cascade) without one."""
    if max_doc_tokens is None:
        return None
    return [RerankStage(depth=documents, max_doc_tokens=max_doc_tokens)]


def default_client_id(settings: Settings) -> str:
    """`<nats_user>.<random>` when the settings name a user that fits in a subject token,
    else a random id."""
    random = uuid.uuid4().hex[:16]
    user = settings.nats_user
    return f"{user}.{random}" if user and SUBJECT_TOKEN.match(user) else random


def inbox_prefix(settings: Settings) -> str:
    """`_INBOX.<nats_user>` for a user that fits in a subject token, else `_INBOX`: a server
    can then let each user subscribe to its own inboxes only (JetStream deliveries and API
    replies come there)."""
    user = settings.nats_user
    return f"_INBOX.{user}" if user and SUBJECT_TOKEN.match(user) else "_INBOX"


async def _log_connection_error(error: Exception) -> None:
    log.debug("NATS connection: %r", error)
