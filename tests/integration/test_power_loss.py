"""rankstream on a three-node NATS cluster through the faults a data centre has: a power loss
(kill -9 of every node at once, then a restart on their stores), a lost disk (one node's
store deleted while it is down) and a network partition (one node's routes cut at a
loopback proxy while it keeps running). A client keeps publishing through each fault; a
request counts as acknowledged when JetStream returned its PubAck, and every acknowledged
request must be answered exactly once. Each test prints sent / acknowledged / answered /
duplicated / lost.

The load is small (a request every 0.3 s at depth 2): the cross-encoder scores a few dozen
pairs a second on this machine, and the faults must come while work is in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from rankstream.config import Settings
from rankstream.wire.subjects import Subjects
from rankstream.workers.local import WorkerProcess
from tests.integration import test_cluster
from tests.integration.cluster import FaultyCluster
from tests.integration.ledger import Ledger, until, watched_client
from tests.integration.test_cluster import running

pytestmark = pytest.mark.integration
cluster, cluster_settings = test_cluster.cluster, test_cluster.cluster_settings  # fixtures

EVERY_S, DEPTH = 0.3, 2
SETTLE_S = 120.0  # redelivery after a lost ack comes after the 15 s ack wait, and may repeat


@asynccontextmanager
async def under_load(settings: Settings) -> AsyncIterator[tuple[Ledger, list[WorkerProcess]]]:
    """A retrieval and a rerank worker process, and a client publishing a request every
    `EVERY_S` from their first answers until the block ends; then every acknowledged request
    is given `SETTLE_S` to be answered."""
    workers = [WorkerProcess("retrieval", settings), WorkerProcess("rerank", settings)]
    async with running(*workers), watched_client(settings) as (client, ledger):
        load = asyncio.ensure_future(ledger.keep_sending(client, EVERY_S, DEPTH))
        try:
            await until(lambda: len(ledger.seen) >= 3, timeout_s=180, what="first answers")
            yield ledger, workers
        finally:
            load.cancel()
        await ledger.settle(SETTLE_S)


async def acknowledged_more(ledger: Ledger, count: int, what: str) -> None:
    """Until `count` more requests than now were acknowledged."""
    target = len(ledger.acknowledged) + count
    await until(lambda: len(ledger.acknowledged) >= target, timeout_s=180, what=what)


async def replicas_current(faulty: FaultyCluster, node: str) -> dict[str, bool]:
    """For every stream: whether `node` leads it or follows it as a current replica."""
    names = (await faulty.api("$JS.API.STREAM.NAMES"))["streams"]
    current = {}
    for name in names:
        info: dict[str, Any] = (await faulty.api(f"$JS.API.STREAM.INFO.{name}"))["cluster"]
        current[name] = info.get("leader") == node or any(
            replica["name"] == node and replica.get("current", False)
            for replica in info.get("replicas", [])
        )
    return current


async def test_a_power_loss_to_every_node_loses_no_acknowledged_request_and_answers_each_once(
    cluster: FaultyCluster, cluster_settings: Settings
) -> None:
    """kill -9 of all three nodes at once under load, the stand-in for a power loss (every
    node fsyncs a write before it acknowledges it). The client keeps publishing into the dead
    cluster (those publishes are not acknowledged); the nodes restart on their stores, the
    workers reconnect by themselves, and every acknowledged request is answered once."""
    settings = cluster_settings
    assert all(cluster.syncs_always(node.name) for node in cluster.nodes)
    async with under_load(settings) as (ledger, workers):
        await acknowledged_more(ledger, 6, "requests in flight at the power loss")
        await until(lambda: len(ledger.acknowledged) > len(ledger.seen), what="in flight")
        cluster.kill_all()
        lost_power_at = time.monotonic()
        acknowledged_before = len(ledger.acknowledged)
        answered_before = len(ledger.seen)
        await asyncio.sleep(2.0)  # publishes into the dark
        await asyncio.to_thread(cluster.restart_all)
        back_s = time.monotonic() - lost_power_at
        await acknowledged_more(ledger, 5, "publishes acknowledged after the restart")
        workers_alive = all(worker.running for worker in workers)
    figures = ledger.figures(
        f"power loss (kill -9 of all 3 nodes) after {acknowledged_before} acknowledged, "
        f"{answered_before} answered; cluster healthy again after {back_s:.1f} s"
    )
    assert answered_before < acknowledged_before, "the power loss came after the load"
    assert figures["acknowledged"] > acknowledged_before
    assert workers_alive
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0


async def test_a_node_whose_store_is_deleted_rejoins_empty_and_catches_up_losing_nothing(
    cluster: FaultyCluster, cluster_settings: Settings
) -> None:
    """The node leading the queries stream is killed, its store deleted (a replaced disk),
    and started again empty while the client keeps sending: it rejoins, every stream lists it
    as a current replica again, and every acknowledged request is answered once."""
    settings = cluster_settings
    queries = Subjects.from_settings(settings).streams.queries
    async with under_load(settings) as (ledger, _):
        wiped = await cluster.stream_leader(queries)
        cluster.kill(wiped)
        cluster.wipe(wiped)
        acknowledged_at_kill = len(ledger.acknowledged)
        await acknowledged_more(ledger, 5, "publishes acknowledged by the two survivors")
        down_at = time.monotonic()
        await asyncio.to_thread(cluster.restart, wiped)
        give_up = time.monotonic() + 60
        while not all((current := await replicas_current(cluster, wiped)).values()):
            assert time.monotonic() < give_up, f"{wiped} not current: {current}"
            await asyncio.sleep(0.5)
        caught_up_s = time.monotonic() - down_at
        await acknowledged_more(ledger, 5, "publishes acknowledged after the rejoin")
    figures = ledger.figures(
        f"store of {wiped} (queries leader) deleted after {acknowledged_at_kill} acknowledged; "
        f"restarted empty, current in all {len(current)} streams {caught_up_s:.1f} s later"
    )
    assert all(current.values())
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0


async def test_a_node_partitioned_from_its_peers_loses_nothing_acknowledged_once_healed(
    cluster: FaultyCluster, cluster_settings: Settings
) -> None:
    """Every route between the node leading the queries stream and its two peers is cut at
    the proxy (the node keeps running, and clients connected to it stay connected to it)
    while the client keeps sending: the majority elects another leader and goes on; after
    the partition heals every acknowledged request is answered once."""
    settings = cluster_settings
    queries = Subjects.from_settings(settings).streams.queries
    async with under_load(settings) as (ledger, _):
        cut_off = await cluster.stream_leader(queries)
        cluster.partition(cut_off)
        cut_at = time.monotonic()
        acknowledged_at_cut = len(ledger.acknowledged)
        leader_during = await cluster.stream_leader(queries, other_than=cut_off)
        routes_during = cluster.route_count(cut_off)
        await asyncio.sleep(max(0.0, 15 - (time.monotonic() - cut_at)))
        acknowledged_during = len(ledger.acknowledged) - acknowledged_at_cut
        await asyncio.to_thread(cluster.heal, cut_off)
        healed_s = time.monotonic() - cut_at
        await acknowledged_more(ledger, 5, "publishes acknowledged after the healing")
    figures = ledger.figures(
        f"partition of {cut_off} (queries leader) for 15 s after {acknowledged_at_cut} "
        f"acknowledged: {acknowledged_during} acknowledged meanwhile, {routes_during} routes "
        f"left to it, new leader "
        f"{leader_during}; healthy {healed_s:.1f} s after the cut"
    )
    assert routes_during == 0, f"{cut_off} still had {routes_during} routes: not cut off"
    assert leader_during != cut_off
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
