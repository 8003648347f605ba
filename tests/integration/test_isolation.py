"""Per-client isolation with infra/nats/accounts.conf as shipped, on a real nats-server: two
authenticated clients (users `client` and `gateway`) each get their own answers, and one that
tries to read the other's, by core subscription, by a JetStream consumer on the results
stream (named or not) or through the other's inboxes, is refused by the server."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from rankstream.client import RankstreamClient, inbox_prefix
from rankstream.config import Settings
from rankstream.wire.connection import connect_kwargs
from rankstream.wire.streams import ensure_streams
from rankstream.workers.app import WorkerKind, running_workers
from tests.integration.test_security import ACCOUNTS_CONF, nats_server

pytestmark = pytest.mark.integration

QUERY = "How does a heat pump heat a house?"
ROLES = ("retrieval", "rerank", "client", "gateway")


async def wait_for_log(server_log: Callable[[], str], text: str) -> bool:
    for _ in range(100):  # the server writes its log as it goes
        if text in server_log():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_client_reads_only_its_own_answers(
    tmp_path: Path, sample_db: str, model_cache_dir: Path
) -> None:
    shutil.copy(ACCOUNTS_CONF, tmp_path / "accounts.conf")
    passwords = {role: "p" + secrets.token_urlsafe(16) for role in ROLES}
    env = {f"NATS_{role.upper()}_PASSWORD": value for role, value in passwords.items()}
    with nats_server(tmp_path, 'include "accounts.conf"', env) as server:
        role = {
            name: Settings(
                nats_url=server.url,
                nats_user=name,
                nats_password=password,
                lancedb_uri=sample_db,
                model_cache_dir=model_cache_dir,
                metrics_port=0,
            )
            for name, password in passwords.items()
        }
        async with (
            running_workers(role["retrieval"], [WorkerKind.RETRIEVAL]),
            running_workers(role["rerank"], [WorkerKind.RERANK]),
            RankstreamClient(role["client"]) as alice,
            RankstreamClient(role["gateway"]) as mallory,
        ):
            assert alice.reply_subject.startswith("rankstream.results.client.")
            assert mallory.reply_subject.startswith("rankstream.results.gateway.")
            snoop = await nats.connect(
                **connect_kwargs(role["gateway"]),
                inbox_prefix=inbox_prefix(role["gateway"]),
                allow_reconnect=False,
            )
            seen: list[Msg] = []

            async def collect(message: Msg) -> None:
                seen.append(message)

            try:
                # Core NATS: alice's results subject, and every inbox.
                await snoop.subscribe("rankstream.results.client.>", cb=collect)
                await snoop.subscribe("_INBOX.>", cb=collect)
                await snoop.flush()
                # JetStream: a consumer on the results stream filtered to alice's subject,
                # created by name (filter in the subject) and without (filter in the body).
                js = snoop.jetstream(timeout=1.5)
                for config in (ConsumerConfig(name="snoop"), None):
                    with pytest.raises(nats.errors.TimeoutError):
                        await js.subscribe(
                            alice.reply_subject,
                            cb=collect,
                            stream="RANKSTREAM_RESULTS",
                            ordered_consumer=True,
                            deliver_policy=DeliverPolicy.ALL,
                            config=config,
                        )
                mine, theirs = await asyncio.gather(
                    alice.rerank(QUERY, ["a heat pump moves heat", "bread"], timeout_s=120),
                    mallory.rerank(QUERY, ["heat pumps are electric"], timeout_s=120),
                )
                await asyncio.sleep(0.5)  # anything leaking would have arrived by now
            finally:
                await snoop.close()
        assert mine.results[0].text == "a heat pump moves heat"
        assert theirs.reranked == 1
        assert seen == [], "the other client's answers reached the snooper"
        log = server.log
        for subject in ("rankstream.results.client.>", "_INBOX.>"):
            assert await wait_for_log(log, f'Subscription Violation - Subject "{subject}"')
        assert await wait_for_log(
            log,
            'Publish Violation - Subject "$JS.API.CONSUMER.CREATE.RANKSTREAM_RESULTS.snoop.'
            f"{alice.reply_subject}",
        )
        assert await wait_for_log(
            log, 'Publish Violation - Subject "$JS.API.CONSUMER.CREATE.RANKSTREAM_RESULTS"'
        )
        assert '"RANKSTREAM/user:client" - ' not in log(), "alice was refused something"


async def test_a_client_cannot_delete_another_clients_results_consumer(tmp_path: Path) -> None:
    shutil.copy(ACCOUNTS_CONF, tmp_path / "accounts.conf")
    passwords = {role: "p" + secrets.token_urlsafe(16) for role in ROLES}
    env = {f"NATS_{role.upper()}_PASSWORD": value for role, value in passwords.items()}
    with nats_server(tmp_path, 'include "accounts.conf"', env) as server:
        role = {
            name: Settings(nats_url=server.url, nats_user=name, nats_password=password)
            for name, password in passwords.items()
        }
        await ensure_streams(role["retrieval"])
        alice = await nats.connect(
            **connect_kwargs(role["client"]), inbox_prefix=inbox_prefix(role["client"])
        )
        mallory = await nats.connect(
            **connect_kwargs(role["gateway"]), inbox_prefix=inbox_prefix(role["gateway"])
        )
        try:
            # alice's consumer, as RankstreamClient makes one (named, filtered to her subject)
            await alice.jetstream().subscribe(
                "rankstream.results.client.alice",
                stream="RANKSTREAM_RESULTS",
                ordered_consumer=True,
                config=ConsumerConfig(name="results_alice"),
            )
            with pytest.raises(nats.errors.TimeoutError):  # refused: no answer comes back
                await mallory.jetstream(timeout=1.5).delete_consumer(
                    "RANKSTREAM_RESULTS", "results_alice"
                )
        finally:
            await mallory.close()
            await alice.close()
        assert await wait_for_log(
            server.log,
            "Publish Violation - Subject "
            '"$JS.API.CONSUMER.DELETE.RANKSTREAM_RESULTS.results_alice"',
        )
