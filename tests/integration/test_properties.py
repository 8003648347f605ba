"""Property-based tests: Hypothesis throws arbitrary bytes and arbitrary schema-valid messages
at both running workers. Each message is accounted for, either by a reply on its reply_to or
by a dead letter holding its exact bytes (an invalid message with a findable address gets
both). The workers keep serving afterwards. Real nats-server, real models, real LanceDB.

Failing examples found so far are kept as explicit examples (KNOWN_FAILURES and
KNOWN_BATCH_FAILURES), each with what goes wrong. They fail until the workers are fixed.

Each test starts one pipeline, because loading the models takes seconds. The pipeline runs on
its own event loop in a background thread. Each test is plain sync code wrapped around a
nested `@given` property that sends one example at a time to that thread and waits until the
work queues are empty again. Hypothesis can then replay and shrink failing examples.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import nats
import pytest
from hypothesis import HealthCheck, example, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import ErrorCode
from rankstream.planning.admission import CLOCK_SKEW_MS
from rankstream.planning.plan import QueryPlan, StagePlan
from rankstream.wire.contract import (
    REPLY_ADAPTER,
    ErrorResult,
    QueryRequest,
    RankedResult,
    RerankStage,
    StageTimings,
    now_ms,
)
from rankstream.wire.handoff import Candidate, CandidateSet
from rankstream.wire.subjects import Subjects
from rankstream.workers.app import running_workers
from rankstream.workers.delivery import DeadLetter

pytestmark = pytest.mark.integration

T = TypeVar("T")

# Small limits keep each example cheap on two CPU cores. The generated values go just past
# these limits, so both sides of each limit are tested.
MAX_DEPTH = 12
MAX_QUERY_CHARS = 400
MAX_TIMEOUT_MS = 600_000  # the workers' default
# Retry an unexpected failure after 50 ms or 100 ms, not seconds. Three deliveries in all.
RETRY_BACKOFF_S = [0.05, 0.1]
MAX_DELIVER = 3
SETTLE_TIMEOUT_S = 60.0
# How long a message must sit in a work queue that has stopped delivering it (nothing pending,
# nothing awaiting an ack) before it counts as stuck.
STUCK_AFTER_S = 3.0
# After the work queues are empty, replies and dead letters still have to reach this test's
# subscriptions.
ARRIVAL_GRACE_S = 3.0
# A deadline at least this far away must not be missed: no `expired` error, no `degraded` result.
GENEROUS_MS = 20_000.0
LETTERS_DURABLE = "properties"

PROPERTY_SETTINGS = hypothesis_settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any character, lone surrogates included. JSON's \uXXXX escapes can carry them, and
# json.dumps writes them that way.
ANY_CHAR = st.characters(exclude_categories=())
# What a pydantic model can put on the wire: any character except lone surrogates, which UTF-8
# cannot encode. Control characters, emoji and unassigned code points are included.
WIRE_CHAR = st.characters(codec="utf-8")
# Pieces that break naive handling of ids and subjects: lone surrogates, line breaks, other
# whitespace, NUL, subject separators and wildcards, a header's colon, emoji. Text drawn from
# them is mixed with arbitrary text, so Hypothesis tries them far more often than chance would.
TRICKY = ["\udfff", "\ud800", "\n", "\r", "\r\n", " ", "\t", "\x00", "\x1f", "\x85", "\xa0"]
TRICKY += ["\u2028", "\ufeff", ".", "..", "*", ">", "$", ":", "😀", "é"]
WIRE_TRICKY = [piece for piece in TRICKY if not re.search("[\ud800-\udfff]", piece)]


def mixed(pieces: list[str], chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces) | st.text(chars, max_size=3), max_size=5).map("".join)


tricky_text = mixed(TRICKY, ANY_CHAR)
wire_tricky_text = mixed(WIRE_TRICKY, WIRE_CHAR)
# Where the workers send an error for a malformed message (workers/delivery.py).
FINDABLE_SUBJECT = re.compile(r"[^\s*>]+")
# Where nats-py publishes nothing at all (it raises).
UNPUBLISHABLE = re.compile(r"[ \t\r\n]")


# --- the pipeline, on its own loop in a thread --------------------------------------------


@dataclass(frozen=True)
class Delivered:
    subject: str
    reply: RankedResult | ErrorResult


@dataclass(frozen=True)
class Sent:
    subject: str
    payload: bytes
    headers: dict[str, str] | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass
class Outcome:
    """What came back for one sent message."""

    sent: Sent
    letters: list[DeadLetter] = field(default_factory=list)
    replies: list[Delivered] = field(default_factory=list)


class Pipeline:
    """Both workers and a raw NATS connection, served from a background thread's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subjects = Subjects.from_settings(settings)
        self.results_reply_to = self.subjects.results_for("props")
        # Outside the results subjects: a request naming it is refused, and never answered.
        self.core_reply_to = f"{settings.subject_prefix}.inbox.props"
        self.replies: list[Delivered] = []
        self.letters: list[DeadLetter] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pipeline")
        self._ready = threading.Event()
        self._stop = asyncio.Event()
        self._served: concurrent.futures.Future[None] | None = None
        self._js: JetStreamContext | None = None

    def __enter__(self) -> Pipeline:
        self._thread.start()
        self._served = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        started = time.monotonic()
        while not self._ready.wait(0.1):
            if self._served.done():
                self._served.result()  # raises what stopped it
            assert time.monotonic() - started < 300, "workers did not start in 300 s"
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._served is not None and not self._served.done():
                self._loop.call_soon_threadsafe(self._stop.set)
                self._served.result(timeout=60)
        finally:
            with contextlib.suppress(Exception):
                self.run(_cancel_leftover_tasks(), timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 180.0) -> T:
        """Run a coroutine on the pipeline's loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _serve(self) -> None:
        async with running_workers(self.settings):
            connection = await nats.connect(self.settings.effective_nats_url)
            self._js = connection.jetstream()
            # Every subject: a reply to any reply_to a message names is seen here.
            await connection.subscribe(">", cb=self._on_message)
            letters = await self._js.pull_subscribe(
                self.subjects.dead_letters, durable=LETTERS_DURABLE
            )
            collector = asyncio.create_task(self._collect_dead_letters(letters))
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
                await connection.close()

    async def _on_message(self, message: Msg) -> None:
        if message.subject in (
            self.subjects.queries, self.subjects.candidates, self.subjects.dead_letters,
        ):  # fmt: skip
            return
        try:
            reply = REPLY_ADAPTER.validate_json(message.data)
        except ValidationError:
            return  # not a reply: JetStream's own traffic and the like
        self.replies.append(Delivered(message.subject, reply))

    async def _collect_dead_letters(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(64, timeout=0.2)
            except TimeoutError:
                continue
            for message in messages:
                self.letters.append(DeadLetter.model_validate_json(message.data))
                await message.ack()

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "the pipeline is not serving"
        return self._js

    async def exchange(
        self, sent: Sequence[Sent], request_ids: Sequence[str | None]
    ) -> list[Outcome]:
        """Publish messages and wait until both work queues are empty. Then wait for each
        message's replies and dead letters: matched by request id, or by payload hash for a
        dead letter of the message itself; all of them when the id is None (for one message,
        which may not name an id)."""
        assert len(sent) == 1 or None not in request_ids, "replies to match by request id"
        self.replies.clear()
        self.letters.clear()
        for message in sent:
            await self.js.publish(message.subject, message.payload, headers=message.headers)
        await self._settle()
        outcomes = [Outcome(message) for message in sent]

        def gather() -> bool:
            for outcome, request_id in zip(outcomes, request_ids, strict=True):
                outcome.letters = [
                    letter
                    for letter in self.letters
                    if request_id is None
                    or letter.payload_sha256 == outcome.sent.sha256
                    or letter.request_id == request_id
                ]
                outcome.replies = [
                    delivered
                    for delivered in self.replies
                    if request_id is None or delivered.reply.request_id == request_id
                ]
            return all(o.letters or o.replies for o in outcomes)

        # Every dead letter for these messages was stored before the message was terminated:
        # once this test's dead-letter consumer has nothing left, all of them are here.
        give_up_at = time.monotonic() + ARRIVAL_GRACE_S
        while time.monotonic() < give_up_at:
            if await self._letters_caught_up() and gather():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # replies already on their way to this connection
        gather()
        claimed = {id(letter) for outcome in outcomes for letter in outcome.letters}
        strays = [letter for letter in self.letters if id(letter) not in claimed]
        assert not strays, f"dead letters that belong to no message sent: {strays}"
        return outcomes

    async def _letters_caught_up(self) -> bool:
        info = await self.js.consumer_info(self.subjects.streams.dead_letters, LETTERS_DURABLE)
        return not info.num_pending and not info.num_ack_pending

    async def _settle(self) -> None:
        """Wait until the QUERIES and CANDIDATES work queues are empty again, because every
        message was acknowledged or terminated. Fail when a message stays after JetStream has
        stopped delivering it: nobody will ever answer it."""
        started = time.monotonic()
        stuck_since: float | None = None
        queues = (
            (self.subjects.streams.queries, self.subjects.durable("retrieval")),
            (self.subjects.streams.candidates, self.subjects.durable("rerank")),
        )
        while True:
            held: dict[str, int] = {}
            idle = True
            for stream, durable in queues:
                messages = (await self.js.stream_info(stream)).state.messages
                if messages:
                    held[stream] = messages
                    consumer = await self.js.consumer_info(stream, durable)
                    idle = idle and not consumer.num_pending and not consumer.num_ack_pending
            if not held:
                return
            now = time.monotonic()
            stuck_since = (stuck_since or now) if idle else None
            if stuck_since is not None and now - stuck_since > STUCK_AFTER_S:
                await self._purge(queues)
                raise AssertionError(
                    f"left in the work queue {held} after {MAX_DELIVER} deliveries, never "
                    "acknowledged or terminated: no one will answer it"
                )
            if now - started > SETTLE_TIMEOUT_S:
                await self._purge(queues)
                raise AssertionError(f"work queues {held} not empty after {SETTLE_TIMEOUT_S} s")
            await asyncio.sleep(0.02)

    async def _purge(self, queues: Sequence[tuple[str, str]]) -> None:
        """Remove a stuck message so that it does not fail the next example too."""
        for stream, _ in queues:
            await self.js.purge_stream(stream)

    async def still_serving(self) -> RankedResult:
        self.letters.clear()
        async with RankstreamClient(self.settings) as client:
            result = await client.query(
                "How do vaccines train the immune system?", top_k=3, depth=3, timeout_s=60
            )
        assert len(result.results) == 3
        assert result.reranked == 3
        assert not result.degraded
        assert not self.letters, f"a normal query was dead-lettered: {self.letters}"
        return result


async def _cancel_leftover_tasks() -> None:
    """nats-py leaves a closed client's ordered-consumer checks running: end them here."""
    leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    settings = settings.model_copy(
        update={
            "max_depth": MAX_DEPTH,
            "max_query_chars": MAX_QUERY_CHARS,
            "retry_backoff_s": RETRY_BACKOFF_S,
            "max_deliver": MAX_DELIVER,
            "shutdown_grace_s": 2.0,
        }
    )
    with Pipeline(settings) as running:
        yield running


def examples_of(
    name: str, values: Sequence[object]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Hypothesis's @example, once per value, in order."""

    def add(test: Callable[..., None]) -> Callable[..., None]:
        for value in reversed(values):
            test = example(**{name: value})(test)
        return test

    return add


def fresh_token() -> str:
    """Unique per send, replays included. JetStream drops a second candidate set or reply with
    the same request id within two minutes (Nats-Msg-Id), so ids must not repeat across runs."""
    return uuid.uuid4().hex[:12]


# --- where the workers can answer a malformed message -------------------------------------


@dataclass(frozen=True)
class Address:
    """What a message says about where to answer it: the request_id and reply_to strings in
    it (an object, or the object under its "plan" key, where a candidate set carries its
    request's address), or None where there are none; `results_root`: the only subjects the
    workers answer on."""

    request_id: str | None
    reply_to: str | None
    results_root: str

    @property
    def findable(self) -> bool:
        """Whether the workers answer an invalid message here (workers/delivery.py): a
        non-empty request_id and a reply_to that looks like a subject under the results root."""
        return (
            bool(self.request_id)
            and self.reply_to is not None
            and len(self.reply_to) <= 255
            and FINDABLE_SUBJECT.fullmatch(self.reply_to) is not None
            and self.reply_to.startswith(self.results_root + ".")
        )

    @property
    def error_id(self) -> str | None:
        """The request id an error reply and a dead letter carry."""
        return self.request_id[:128] if self.findable and self.request_id else None

    @property
    def routable(self) -> bool:
        """Whether a reply sent to reply_to can reach a subscriber at all."""
        if self.reply_to is None or UNPUBLISHABLE.search(self.reply_to):
            return False
        return _encodable(self.reply_to) and all(self.reply_to.split("."))

    @property
    def answerable(self) -> bool:
        """Whether an invalid message must get an error reply: the workers find the address,
        a reply can reach reply_to, and the request id can be written in a reply (JSON in
        UTF-8 cannot hold a lone surrogate)."""
        return self.findable and self.routable and _encodable(self.request_id or "")


def _encodable(text: str) -> bool:
    """UTF-8 can hold every code point but a lone surrogate (U+D800..U+DFFF)."""
    return not any(0xD800 <= ord(character) <= 0xDFFF for character in text)


def address_in(payload: bytes, results_root: str) -> Address:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Address(None, None, results_root)
    request = data.get("plan", data) if isinstance(data, dict) else None
    if not isinstance(request, dict):
        return Address(None, None, results_root)
    request_id, reply_to = request.get("request_id"), request.get("reply_to")
    return Address(
        request_id if isinstance(request_id, str) else None,
        reply_to if isinstance(reply_to, str) else None,
        results_root,
    )


# --- property 1: arbitrary bytes, JSON-ish values, almost-valid messages ------------------


@dataclass(frozen=True)
class FreshId:
    """A request id made unique when sent: a fresh token, then `stem`."""

    stem: str


@dataclass(frozen=True)
class Listened:
    """One of the reply subjects this test listens on (under the results stream, or a core
    subject), then `suffix`: a well-formed subject only when the suffix is empty or plain."""

    core: bool
    suffix: str = ""


def render(value: object, token: str, pipeline: Pipeline) -> object:
    if isinstance(value, FreshId):
        return token + value.stem
    if isinstance(value, Listened):
        base = pipeline.core_reply_to if value.core else pipeline.results_reply_to
        return base + value.suffix
    if isinstance(value, dict):
        return {key: render(item, token, pipeline) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, token, pipeline) for item in value]
    return value


@dataclass(frozen=True)
class RawMessage:
    """What property 1 sends: `body` is bytes, or a JSON value to encode when sent."""

    to_candidates: bool
    body: object
    ensure_ascii: bool = True
    content_type: str | None = None

    def sent(self, pipeline: Pipeline) -> Sent:
        if isinstance(self.body, bytes):
            payload = self.body
        else:
            value = render(self.body, fresh_token(), pipeline)
            text = json.dumps(value, ensure_ascii=self.ensure_ascii)
            payload = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8
        subjects = pipeline.subjects
        return Sent(
            subjects.candidates if self.to_candidates else subjects.queries,
            payload,
            None if self.content_type is None else {"content-type": self.content_type},
        )


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(ANY_CHAR)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHAR), inner, max_size=4)
    ),
    max_leaves=12,
)
wrong_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities become the JSON-ish NaN and Infinity
    | st.text(ANY_CHAR, max_size=12)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
good_request_fields: dict[str, st.SearchStrategy[object]] = {
    "request_id": st.builds(FreshId, tricky_text),
    "query": st.text(WIRE_CHAR, min_size=1, max_size=60),
    "top_k": st.integers(1, MAX_DEPTH),
    "stages": st.lists(
        st.builds(lambda depth: {"depth": depth}, st.integers(1, MAX_DEPTH)), max_size=1
    ),
    "timeout_ms": st.integers(30_000, 120_000),
    # A subject this test listens on, or one made unusable by what follows it: whitespace,
    # an empty token, a lone surrogate. The schema itself takes any non-empty string.
    "reply_to": st.builds(Listened, st.booleans(), st.just("") | tricky_text),
}
good_candidate_fields: dict[str, st.SearchStrategy[object]] = {
    "doc_id": st.text(WIRE_CHAR, max_size=10),
    "text": st.text(WIRE_CHAR, max_size=40),
    "retrieval_score": st.floats(allow_nan=False, allow_infinity=False),
    "retrieval_rank": st.integers(1, 1000),
}
OPTIONAL_FIELDS = ("created_at_ms", "schema_version")


@st.composite
def almost(
    draw: st.DrawFn, fields: dict[str, st.SearchStrategy[object]], breakable: Sequence[str]
) -> dict[str, object]:
    """Valid fields, then 0 to 3 of them dropped, replaced by a value of the wrong type or
    range, or joined by an unexpected one."""
    body = {name: draw(strategy) for name, strategy in fields.items()}
    for name in draw(st.sets(st.sampled_from([*breakable, "unexpected"]), max_size=3)):
        if name in body and draw(st.booleans()):
            del body[name]
        else:
            body[name] = draw(wrong_values)
    return body


almost_requests = almost(good_request_fields, [*good_request_fields, *OPTIONAL_FIELDS])
# A candidate set's plan: a request's fields as a retrieval worker resolved them (no stage,
# so no model name need match), then broken the same way.
good_plan_fields: dict[str, st.SearchStrategy[object]] = {
    **{name: good_request_fields[name] for name in ("request_id", "query", "top_k", "reply_to")},
    "kind": st.just("query"),
    "created_at_ms": st.builds(now_ms),
    "timeout_ms": good_request_fields["timeout_ms"],
    "retrieval": st.none(),
}
almost_plans = almost(good_plan_fields, list(good_plan_fields))


@st.composite
def almost_candidate_sets(draw: st.DrawFn) -> dict[str, object]:
    candidate_set: dict[str, object] = {
        "plan": draw(almost_plans),
        "candidates": draw(
            st.lists(almost(good_candidate_fields, list(good_candidate_fields)), max_size=4)
        ),
        "timings_ms": {},
        "embedder_model": draw(st.text(WIRE_CHAR, max_size=10)),
    }
    for name in draw(st.sets(st.sampled_from([*candidate_set, "unexpected"]), max_size=2)):
        candidate_set[name] = draw(wrong_values)
    return candidate_set


raw_messages = st.builds(
    RawMessage,
    to_candidates=st.booleans(),
    body=st.one_of(
        st.binary(max_size=512),
        json_values,
        almost_requests,
        almost_candidate_sets(),
    ),
    ensure_ascii=st.booleans(),
    # What FastStream's own publishers set: the body is then decoded as that type.
    content_type=st.sampled_from([None, None, "application/json", "text/plain"]),
)


def check_accounted_for(outcome: Outcome, address: Address) -> None:
    sent = outcome.sent
    note(f"payload {sent.payload!r}, {address}")
    note(f"dead letters {outcome.letters}")
    note(f"replies {outcome.replies}")
    assert outcome.letters or outcome.replies, "neither a reply nor a dead letter"
    assert len(outcome.letters) <= 1, f"{len(outcome.letters)} dead letters for one message"
    if outcome.letters:
        (letter,) = outcome.letters
        assert letter.subject == sent.subject, "the dead letter holds a later stage's message"
        assert letter.payload_sha256 == sent.sha256
        assert base64.b64decode(letter.payload_base64) == sent.payload
        assert letter.payload_bytes == len(sent.payload)
        assert not letter.truncated
        assert letter.code == ErrorCode.INVALID_REQUEST, f"not a clear error: {letter.reason}"
        if address.answerable:
            assert letter.request_id == address.error_id
        elif _encodable(address.request_id or ""):
            assert letter.request_id in (None, address.error_id)
        if not address.answerable:
            # No reply can carry this id or reach this reply_to. One with a stand-in id is
            # welcome where the subject works.
            assert len(outcome.replies) <= 1, f"{len(outcome.replies)} replies to one message"
            for delivered in outcome.replies:
                assert delivered.subject == address.reply_to
                assert isinstance(delivered.reply, ErrorResult)
            return
        (delivered,) = outcome.replies
        assert delivered.subject == address.reply_to
        reply = delivered.reply
        assert isinstance(reply, ErrorResult)
        assert reply.request_id == address.error_id
        assert (reply.code, reply.message) == (letter.code, letter.reason)
        return
    # Accepted: answered once, on the reply_to it names, under its request id if it has one.
    assert len(outcome.replies) == 1, f"{len(outcome.replies)} replies to one message"
    (delivered,) = outcome.replies
    assert delivered.subject == address.reply_to
    reply = delivered.reply
    if address.request_id is not None:
        assert reply.request_id == address.request_id
    assert isinstance(reply, RankedResult) or reply.code == ErrorCode.EXPIRED, reply


def a_query(request_id: str, reply_to: Listened) -> dict[str, object]:
    """A valid query request, answered by the retrieval worker alone (depth 0)."""
    return {"request_id": FreshId(request_id), "query": "0", "depth": 0, "reply_to": reply_to}


# Failing examples found by Hypothesis (shrunk) or confirmed by hand against the workers as
# they are. They run first, every time, so a fix is checked and a regression is caught.
KNOWN_FAILURES = [
    # With a content type set (FastStream's own publishers set one), FastStream decodes the
    # body as JSON or text before validation. Its JSONDecodeError or UnicodeDecodeError is
    # not a ValidationError, so the middleware retries the message as a transient failure,
    # then dead-letters it as `internal` instead of `invalid_request`.
    RawMessage(False, b"", content_type="application/json"),
    RawMessage(False, b"\xff", content_type="text/plain"),
    # A lone surrogate in the request id, as a JSON escape. FastStream's decoder (orjson)
    # refuses it, so the message is invalid. reply_address (json.loads) accepts it, and the
    # DeadLetter that carries it cannot be serialized. No dead letter, no reply, never
    # terminated: the message stays in the work queue.
    RawMessage(False, a_query("\udfff", Listened(core=False))),
    # A valid request whose reply_to ends in a newline. nats-py refuses to publish the
    # answer, so the request is retried, then given up on. Delivery's check `^[^\s*>]+$`
    # passes the subject (`$` also matches before a final newline), so give_up tries to
    # send the error too. That raises before `reject()`: a dead letter for every delivery,
    # and the message is never terminated. The max-deliveries watcher fails the same way.
    RawMessage(False, a_query("", Listened(core=False, suffix="\n"))),
    # The same with a reply_to under the results root that no stream takes (an empty
    # token): publishing the answer through JetStream raises NoStreamResponseError.
    RawMessage(False, a_query("", Listened(core=False, suffix="."))),
    # A valid request whose reply_to nats-py refuses: retried as if the failure were
    # transient, then dead-lettered `internal` instead of refused as `invalid_request`.
    RawMessage(False, a_query("", Listened(core=False, suffix="\n\n"))),
    # A valid request whose core reply_to has an empty token. The server drops the answer,
    # and the message is acknowledged: no reply, no dead letter. (Now refused at admission:
    # a reply_to outside the results subjects is never answered.)
    RawMessage(False, a_query("", Listened(core=True, suffix=".."))),
    # A valid request whose reply_to is outside the results subjects: the worker answered
    # there (any subject it may publish on, a cache entry's among them).
    RawMessage(False, a_query("", Listened(core=True))),
]


def test_arbitrary_bytes_are_answered_or_dead_lettered_exactly(pipeline: Pipeline) -> None:
    @hypothesis_settings(PROPERTY_SETTINGS, max_examples=60)  # cheap: most are refused at once
    @given(message=raw_messages)
    @examples_of("message", KNOWN_FAILURES)
    def every_message_is_accounted_for(message: RawMessage) -> None:
        sent = message.sent(pipeline)
        (outcome,) = pipeline.run(pipeline.exchange([sent], [None]))
        check_accounted_for(outcome, address_in(sent.payload, pipeline.subjects.results_root))

    every_message_is_accounted_for()
    pipeline.run(pipeline.still_serving())


# --- property 2: schema-valid query requests and candidate sets ---------------------------


@dataclass(frozen=True)
class RequestSpec:
    """A query request, built when sent: `created` is relative to that moment unless
    `absolute`, and the request id is `stem`, "~", then a token unique to the send."""

    stem: str
    query: str
    top_k: int
    depth: int
    timeout_ms: int
    created: float
    absolute: bool

    def build(self, pipeline: Pipeline, token: str) -> QueryRequest:
        return QueryRequest(
            request_id=f"{self.stem}~{token}",
            query=self.query,
            top_k=self.top_k,
            stages=[RerankStage(depth=self.depth)] if self.depth else [],
            # relative: a draw further back than the epoch means "created at the epoch" (the
            # schema takes no earlier time), still a deadline long past
            created_at_ms=self.created if self.absolute else max(0.0, now_ms() + self.created),
            timeout_ms=self.timeout_ms,
            reply_to=pipeline.results_reply_to,
        )


def breaks_a_limit(request: QueryRequest) -> bool:
    return (
        len(request.query) > MAX_QUERY_CHARS
        or not request.query.strip()
        or max(request.top_k, depth_of(request)) > MAX_DEPTH
        or request.timeout_ms > MAX_TIMEOUT_MS
    )


def depth_of(request: QueryRequest) -> int:
    """The one stage's depth (0: none)."""
    return int(request.stages[0].depth) if request.stages else 0


def generous(request: QueryRequest, sent_at_ms: float) -> bool:
    """Whether the deadline the workers admit it with is far enough away: a client clock
    ahead of theirs beyond the allowance counts from when they receive it."""
    created = request.created_at_ms
    if created > sent_at_ms + CLOCK_SKEW_MS:
        created = sent_at_ms
    return created + request.timeout_ms > sent_at_ms + GENEROUS_MS


finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def request_specs(draw: st.DrawFn) -> RequestSpec:
    """Mostly requests within the limits, with time to spare. Now and then a query just
    around the length limit, top_k or depth one past the limit, or a deadline that may
    already have passed (any timeout, created at any time)."""
    stem = draw(st.text(WIRE_CHAR, min_size=1, max_size=110) | wire_tricky_text)
    if draw(st.integers(0, 3)) < 3:
        query = draw(st.text(WIRE_CHAR, min_size=1, max_size=60))
    else:
        query = draw(st.text(WIRE_CHAR, min_size=MAX_QUERY_CHARS - 2, max_size=MAX_QUERY_CHARS + 2))
    top_k, depth = draw(st.integers(1, MAX_DEPTH + 1)), draw(st.integers(0, MAX_DEPTH + 1))
    if draw(st.integers(0, 3)) < 3:
        timeout_ms, created, absolute = draw(st.integers(30_000, 120_000)), 0.0, False
    else:
        timeout_ms = draw(st.integers(1, 2_000) | st.integers(1, 10**15))
        created, absolute = draw(st.floats(-300_000, 300_000) | finite), draw(st.booleans())
        if absolute:  # the schema takes no time before 1970
            created = abs(created)
    return RequestSpec(stem, query, top_k, depth, timeout_ms, created, absolute)


WHITESPACE = ["", " ", "\t", "\n", "\r\n", "\u2028", "\ufeff"]


@st.composite
def request_batches(draw: st.DrawFn) -> list[RequestSpec]:
    """One to three requests sent together, with distinct ids. Sometimes the ids differ only
    in leading whitespace or line breaks, as ids from different clients may."""
    specs = draw(st.lists(request_specs(), min_size=1, max_size=3))
    if len(specs) > 1 and draw(st.booleans()):
        stem = specs[0].stem
        specs = [replace(spec, stem=draw(st.sampled_from(WHITESPACE)) + stem) for spec in specs]
    return list({spec.stem: spec for spec in specs}.values())


def simple_request(stem: str) -> RequestSpec:
    return RequestSpec(stem, "0", top_k=1, depth=1, timeout_ms=30_000, created=0.0,
                       absolute=False)  # fmt: skip


KNOWN_BATCH_FAILURES = [
    # Two requests whose ids differ only in a leading line break. nats-py strips header
    # values, so both candidate sets get the same Nats-Msg-Id, and JetStream drops the
    # second as a duplicate: no reply, no dead letter. (Likewise " x" and "x"; and any two
    # requests that share an id within the two-minute duplicate window.)
    [simple_request("a"), simple_request("\na")],
]


def check_one_reply(
    outcome: Outcome, request: QueryRequest, sent_at_ms: float
) -> RankedResult | None:
    """Exactly one reply, on the request's reply_to, with its id. Returns a ranked result."""
    note(f"request {request!r}")
    note(f"dead letters {outcome.letters}")
    note(f"replies {outcome.replies}")
    assert len(outcome.replies) == 1, f"{len(outcome.replies)} replies to one request"
    (delivered,) = outcome.replies
    assert delivered.subject == request.reply_to
    reply = delivered.reply
    assert reply.request_id == request.request_id
    if isinstance(reply, ErrorResult):
        refused_for_time = (ErrorCode.EXPIRED, ErrorCode.OVERLOADED)
        assert reply.code in (ErrorCode.INVALID_REQUEST, *refused_for_time), reply
        if reply.code in refused_for_time:
            # A valid request is refused only for its deadline: expired when even an idle
            # worker could not answer it in time, overloaded when the batch sent with it
            # queues ahead of it and another replica still could (rankstream.stages).
            assert not generous(request, sent_at_ms), reply
            assert not outcome.letters
            return None
        (letter,) = outcome.letters
        assert letter.subject == outcome.sent.subject
        assert base64.b64decode(letter.payload_base64) == outcome.sent.payload
        assert letter.code == ErrorCode.INVALID_REQUEST
        assert letter.request_id == request.request_id
        return None
    assert not outcome.letters
    assert reply.query == request.query
    assert not (reply.degraded and generous(request, sent_at_ms)), "missed a generous deadline"
    return reply


def check_ranked_order(result: RankedResult) -> None:
    scored = [doc.score for doc in result.results[: result.reranked]]
    assert scored == sorted(scored, reverse=True)


def test_schema_valid_query_requests_get_exactly_one_reply(pipeline: Pipeline) -> None:
    @PROPERTY_SETTINGS
    @given(specs=request_batches())
    @examples_of("specs", KNOWN_BATCH_FAILURES)
    def each_request_is_answered_once(specs: list[RequestSpec]) -> None:
        token = fresh_token()
        requests = [spec.build(pipeline, token) for spec in specs]
        sent = [
            Sent(pipeline.subjects.queries, request.model_dump_json().encode())
            for request in requests
        ]
        sent_at_ms = now_ms()
        outcomes = pipeline.run(pipeline.exchange(sent, [r.request_id for r in requests]))
        for outcome, request in zip(outcomes, requests, strict=True):
            result = check_one_reply(outcome, request, sent_at_ms)
            if breaks_a_limit(request):
                assert result is None, "a request past a limit was answered"
                assert outcome.letters, "a request past a limit was not refused"
                continue
            if result is None:
                continue
            assert len(result.results) == request.top_k  # the corpus holds more documents
            assert len({doc.doc_id for doc in result.results}) == request.top_k
            assert result.reranked == (0 if result.degraded else depth_of(request))
            check_ranked_order(result)

    each_request_is_answered_once()
    pipeline.run(pipeline.still_serving())


@dataclass(frozen=True)
class CandidateSetSpec:
    request: RequestSpec
    candidates: list[Candidate]
    timings: StageTimings
    published_at_ms: float
    embedder_model: str

    def build(self, pipeline: Pipeline) -> tuple[QueryRequest, CandidateSet]:
        """The request, and the candidate set a retrieval worker would make of it."""
        request = self.request.build(pipeline, fresh_token())
        return request, CandidateSet(
            plan=unchecked_plan(request, pipeline.settings),
            candidates=self.candidates,
            timings_ms=self.timings,
            published_at_ms=self.published_at_ms,
            embedder_model=self.embedder_model,
        )


def unchecked_plan(request: QueryRequest, settings: Settings) -> QueryPlan:
    """The plan a retrieval worker would make of `request`, with no bound checked: what a
    candidate set past a limit carries."""
    stages = [
        StagePlan(
            name=stage.name, scorer="ce", model=settings.reranker_model, depth=int(stage.depth),
            maxp_windows=settings.maxp_max_windows, max_length=settings.max_length,
        )
        for stage in request.stages or []
    ]  # fmt: skip
    return QueryPlan(
        kind="query", request_id=request.request_id, query=request.query,
        reply_to=request.reply_to, top_k=request.top_k, created_at_ms=request.created_at_ms,
        timeout_ms=request.timeout_ms, retrieval=None, stages=tuple(stages),
    )  # fmt: skip


extreme_floats = st.one_of(
    finite, st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, -5e-324, 1.7976931348623157e308])
)
candidate_set_specs = st.builds(
    CandidateSetSpec,
    request=request_specs(),
    candidates=st.lists(
        st.builds(
            Candidate,
            doc_id=st.text(WIRE_CHAR, max_size=20),
            text=st.text(WIRE_CHAR, max_size=200),
            retrieval_score=extreme_floats,
            # JSON integers as the workers decode them: 64 bits
            retrieval_rank=st.integers(1, 2**63 - 1),
        ),
        max_size=MAX_DEPTH + 1,
    ),
    timings=st.builds(StageTimings, **{name: extreme_floats for name in StageTimings.model_fields}),
    published_at_ms=extreme_floats,
    embedder_model=st.text(WIRE_CHAR, max_size=20),
)


def test_schema_valid_candidate_sets_get_exactly_one_reply(pipeline: Pipeline) -> None:
    @PROPERTY_SETTINGS
    @given(spec=candidate_set_specs)
    def each_candidate_set_is_answered_once(spec: CandidateSetSpec) -> None:
        request, candidate_set = spec.build(pipeline)
        candidates = candidate_set.candidates
        sent = Sent(pipeline.subjects.candidates, candidate_set.model_dump_json().encode())
        sent_at_ms = now_ms()
        (outcome,) = pipeline.run(pipeline.exchange([sent], [request.request_id]))
        result = check_one_reply(outcome, request, sent_at_ms)
        if breaks_a_limit(request) or len(candidates) > MAX_DEPTH:
            assert result is None, "a candidate set past a limit was answered"
            assert outcome.letters, "a candidate set past a limit was not refused"
            return
        assert result is not None, "the rerank worker answers a late request `degraded`"
        assert result.embedder_model == candidate_set.embedder_model
        scored = 0 if result.degraded else min(depth_of(request), len(candidates))
        assert result.reranked == scored
        assert len(result.results) == min(request.top_k, len(candidates))
        check_ranked_order(result)
        # The scored candidates, best first, then the rest in retrieval order, unchanged.
        sent_docs = [(c.doc_id, c.text, c.retrieval_score, c.retrieval_rank) for c in candidates]
        for position, doc in enumerate(result.results):
            got = (doc.doc_id, doc.text, doc.retrieval_score, doc.retrieval_rank)
            if position < scored:
                assert got in sent_docs[:scored]
            else:
                assert got == sent_docs[position]
                assert doc.score == candidates[position].retrieval_score

    each_candidate_set_is_answered_once()
    pipeline.run(pipeline.still_serving())
