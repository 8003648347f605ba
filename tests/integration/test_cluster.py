"""rankstream on a three-node NATS cluster: real `nats-server` processes clustered by routes on
loopback, streams with three replicas, real worker processes (several replicas of each), and
faults done to the processes themselves: kill -9 of a stream's leader, SIGTERM of one worker
replica, SIGSTOP of a node (a partition) and its return. Each test prints sent / answered /
duplicated / lost; the lag test prints the figures beside the KEDA objects.

Depths and request counts are small: the cross-encoder scores a few dozen pairs a second on
this machine, and each test must still run its faults under load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import yaml

from rankstream.config import Settings
from rankstream.wire.contract import ErrorResult, RankedResult
from rankstream.wire.streams import cache_stream_config, ensure_streams, stream_configs
from rankstream.wire.subjects import Subjects
from rankstream.workers.local import WorkerProcess, free_port, metric_samples
from rankstream.workers.logs import READY_LINE
from tests.integration.cluster import ConsumerLag, FaultyCluster
from tests.integration.ledger import ask_many, until, watched_client

pytestmark = pytest.mark.integration

SENT, SECOND_WAVE = 60, 30  # requests of the kill -9 test, before each kill
KEDA_OBJECTS = Path(__file__).parents[2] / "infra" / "k8s" / "keda-scaledobjects.yaml"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultyCluster]:
    """Three JetStream nodes of this test's own, routes and monitoring on loopback."""
    with FaultyCluster(tmp_path / "nats") as cluster:
        yield cluster


@pytest.fixture
def cluster_settings(settings: Settings, cluster: FaultyCluster) -> Settings:
    """Every server in RANKSTREAM_NATS_URL, three replicas per stream, and a short ack wait so
    that work whose ack was lost with a node comes back within seconds (heartbeats keep
    held work from redelivery meanwhile). A replica holds at most 8 messages: on this
    machine that is already ~5 s of model work at depth 2, and it keeps the two replicas of
    the replica test from taking a round each in one pull."""
    return Settings.model_validate(
        settings.model_dump()
        | {
            "nats_url": cluster.url,
            "stream_replicas": 3,
            "ack_wait_s": 15.0,
            "max_inflight_requests": 8,
            "metrics_port": 0,
        }
    )


@asynccontextmanager
async def running(*workers: WorkerProcess) -> AsyncIterator[None]:
    """Start the worker processes side by side (each loads its models) and stop them all."""
    try:
        await asyncio.gather(*(asyncio.to_thread(worker.start) for worker in workers))
        yield
    finally:
        for worker in workers:
            if worker.running:
                worker.stop()


def handled(worker_port: int, worker: str, outcome: str) -> int:
    """`rankstream_requests_total{worker, outcome}` on one replica's /metrics."""
    return int(
        sum(
            sample.value
            for sample in metric_samples(worker_port)
            if sample.name == "rankstream_requests_total"
            and sample.labels == {"worker": worker, "outcome": outcome}
        )
    )


def all_ranked(replies: list[RankedResult | ErrorResult]) -> bool:
    return all(isinstance(r, RankedResult) and not r.degraded for r in replies)


async def test_every_stream_and_the_cache_bucket_get_three_replicas_and_a_second_start_keeps_them(
    cluster: FaultyCluster, cluster_settings: Settings
) -> None:
    """`RANKSTREAM_STREAM_REPLICAS=3`: each stream (the cache's key-value bucket too) is
    created with three copies, one on every node; a second start (another replica) finds
    them as it would create them: no difference, nothing changed."""
    settings = cluster_settings.model_copy(update={"cache_ttl_s": 60.0})
    assert await ensure_streams(settings) == []
    wanted = stream_configs(
        Subjects.from_settings(settings),
        cache=cache_stream_config(Subjects.from_settings(settings), 60.0, 1 << 20),
    )
    for config in wanted:
        info = await cluster.api(f"$JS.API.STREAM.INFO.{config.name}")
        assert info["config"]["num_replicas"] == 3, info
        holders = {info["cluster"]["leader"]} | {r["name"] for r in info["cluster"]["replicas"]}
        assert holders == {node.name for node in cluster.nodes}, info["cluster"]
    assert await ensure_streams(settings) == []
    print(f"\nreplicas: {len(wanted)} streams, 3 copies each, one per node")


async def test_kill_9_of_the_queries_leader_then_of_the_results_leader_loses_nothing(
    cluster: FaultyCluster, cluster_settings: Settings
) -> None:
    """The node leading the queries stream dies under load, comes back, then the node leading
    the results stream dies: JetStream elects new leaders among the survivors, the workers and
    the client reconnect to them by themselves, every request is answered once."""
    settings = cluster_settings
    streams = Subjects.from_settings(settings).streams
    retrieval, rerank = WorkerProcess("retrieval", settings), WorkerProcess("rerank", settings)
    async with running(retrieval, rerank), watched_client(settings) as (client, ledger):
        answers = asyncio.ensure_future(ask_many(client, ledger, SENT, depth=2))
        await until(lambda: len(ledger.seen) >= 6, what="first answers")

        queries_leader = await cluster.stream_leader(streams.queries)
        cluster.kill(queries_leader)
        killed_at = time.monotonic()
        answered_at_first_kill = len(ledger.seen)
        new_queries_leader = await cluster.stream_leader(streams.queries, other_than=queries_leader)
        elected_s = time.monotonic() - killed_at
        # Answers flow again on the two survivors before the node comes back.
        await until(lambda: len(ledger.seen) >= answered_at_first_kill + 3, what="flow on two")
        flowing_s = time.monotonic() - killed_at
        await asyncio.to_thread(cluster.restart, queries_leader)
        restart_s = time.monotonic() - killed_at - flowing_s

        # A second wave, so that the second kill comes under load however long the restart
        # took (the node catches up before the cluster says healthy).
        second_wave = asyncio.ensure_future(ask_many(client, ledger, SECOND_WAVE, depth=2))
        answered_before_wave = len(ledger.seen)
        await until(lambda: len(ledger.seen) >= answered_before_wave + 3, what="second wave")
        results_leader = await cluster.stream_leader(streams.results)
        cluster.kill(results_leader)
        answered_at_second_kill = len(ledger.seen)
        new_results_leader = await cluster.stream_leader(streams.results, other_than=results_leader)

        replies = await answers + await second_wave
        # After both failovers, new work still flows through the same client and workers.
        after = await ask_many(client, ledger, 5, depth=2)
        await ledger.settle()
        workers_alive = retrieval.running and rerank.running
    figures = ledger.figures(
        f"kill -9 of {queries_leader} (queries leader, after {answered_at_first_kill} answers; "
        f"new leader {new_queries_leader} in {elected_s:.1f} s, answers flowing again after "
        f"{flowing_s:.1f} s, restart and catch-up {restart_s:.1f} s), then of {results_leader} "
        f"(results leader, after {answered_at_second_kill}; new leader {new_results_leader})"
    )
    assert new_queries_leader != queries_leader
    assert new_results_leader != results_leader
    assert answered_at_second_kill < SENT + SECOND_WAVE, "the second kill came after the load"
    assert workers_alive
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert all_ranked(replies + after)


async def test_two_replicas_of_each_worker_share_the_load_and_a_sigterm_loses_nothing(
    cluster_settings: Settings,
) -> None:
    """Two retrieval and two rerank processes share one durable consumer per stage: each
    handles part of the requests and together they handle every one, once. Then one replica
    of each gets SIGTERM mid-load: it finishes what it holds and the other takes the rest."""
    ports = {name: free_port() for name in ("retrieval-a", "retrieval-b", "rerank-a", "rerank-b")}
    replicas = {
        name: WorkerProcess(
            name.split("-")[0], cluster_settings.model_copy(update={"metrics_port": port})
        )
        for name, port in ports.items()
    }
    async with running(*replicas.values()), watched_client(cluster_settings) as (client, ledger):
        first = await ask_many(client, ledger, 30, depth=2)

        # A replica counts a request just after its reply is on the wire: the client can see
        # the last answers a moment before their counters move.
        def counted() -> tuple[dict[str, int], dict[str, int]]:
            return (
                {n: handled(ports[n], "retrieval", "forwarded") for n in ports if "ret" in n},
                {n: handled(ports[n], "rerank", "ok") for n in ports if "rerank" in n},
            )

        await until(
            lambda: all(sum(c.values()) >= 30 for c in counted()),
            timeout_s=10,
            what="the first round's counters",
        )
        forwarded, ranked = counted()

        answers = asyncio.ensure_future(ask_many(client, ledger, 40, depth=2))
        await until(lambda: len(ledger.seen) >= 30 + 6, what="answers of the second round")
        answered_at_sigterm = len(ledger.seen) - 30
        exit_codes = await asyncio.gather(
            *(asyncio.to_thread(replicas[n].stop, 40) for n in ("retrieval-b", "rerank-b"))
        )
        answered_while_stopping = len(ledger.seen) - 30 - answered_at_sigterm
        second = await answers
        ranked_after = handled(ports["rerank-a"], "rerank", "ok")
        await ledger.settle()
    figures = ledger.figures(
        f"two replicas each: first round forwarded {forwarded}, ranked {ranked}; SIGTERM of "
        f"retrieval-b and rerank-b after {answered_at_sigterm} of 40 answers "
        f"({answered_while_stopping} more while they shut down)"
    )
    assert all(count > 0 for count in (*forwarded.values(), *ranked.values())), (forwarded, ranked)
    assert sum(forwarded.values()) == 30
    assert sum(ranked.values()) == 30
    assert exit_codes == [0, 0]
    assert answered_at_sigterm < 40, "the SIGTERM came after the load"
    assert ranked_after > ranked["rerank-a"], "the remaining replica took none of the rest"
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert all_ranked(first + second)


async def test_a_partitioned_node_is_routed_around_and_catches_up_when_it_returns(
    cluster: FaultyCluster, cluster_settings: Settings
) -> None:
    """SIGSTOP of the node leading the candidates stream: its peers stop hearing from it (as
    across a network partition), elect another leader, and connections to it move to the
    other servers once their pings go unanswered; after SIGCONT it rejoins as a follower,
    catches up, and every request is answered once."""
    settings = cluster_settings
    streams = Subjects.from_settings(settings).streams
    retrieval, rerank = WorkerProcess("retrieval", settings), WorkerProcess("rerank", settings)
    async with running(retrieval, rerank), watched_client(settings) as (client, ledger):
        answers = asyncio.ensure_future(ask_many(client, ledger, 80, depth=2))
        await until(lambda: len(ledger.seen) >= 6, what="first answers")

        cut_off = await cluster.stream_leader(streams.candidates)
        cluster.suspend(cut_off)
        partition_started = time.monotonic()
        answered_at_partition = len(ledger.seen)
        leader_during = await cluster.stream_leader(streams.candidates, other_than=cut_off)
        elected_s = time.monotonic() - partition_started
        # Longer than a connection takes to give up on a silent server (15 s of pings).
        await asyncio.sleep(max(0.0, 20 - (time.monotonic() - partition_started)))
        answered_during = len(ledger.seen) - answered_at_partition
        cluster.resume(cut_off)
        await asyncio.to_thread(cluster.wait_healthy)
        caught_up_s = time.monotonic() - partition_started

        replies = await answers
        # Once it is back, work flows with the returned node in the cluster (it may lead again).
        after = await ask_many(client, ledger, 5, depth=2)
        await ledger.settle()
    figures = ledger.figures(
        f"SIGSTOP of {cut_off} (candidates leader) for 20 s after {answered_at_partition} "
        f"answers: {answered_during} answered meanwhile, new leader {leader_during} after "
        f"{elected_s:.1f} s; "
        f"healthy again {caught_up_s:.0f} s after the cut"
    )
    assert leader_during != cut_off
    assert answered_during > 0, "nothing was answered while the node was cut off"
    assert answered_at_partition < 80, "the partition came after the load"
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert all_ranked(replies + after)


@dataclass
class LagTrace:
    """KEDA's lag of the rerank consumer, sampled over time: (seconds, lag)."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    def drained_per_s(self, start_s: float, end_s: float) -> float:
        """How fast the lag fell between two moments (least squares over the samples)."""
        window = [(t, lag) for t, lag in self.samples if start_s <= t <= end_s]
        assert len(window) >= 3, f"too few lag samples in [{start_s:.1f}, {end_s:.1f}] s"
        mean_t = sum(t for t, _ in window) / len(window)
        mean_lag = sum(lag for _, lag in window) / len(window)
        slope = sum((t - mean_t) * (lag - mean_lag) for t, lag in window) / sum(
            (t - mean_t) ** 2 for t, _ in window
        )
        return -slope


def rerank_lag_threshold() -> int:
    """The rerank ScaledObject's `lagThreshold`, as the manifests ship it."""
    for document in yaml.safe_load_all(KEDA_OBJECTS.read_text()):
        if document["metadata"]["name"] == "rankstream-rerank":
            (trigger,) = document["spec"]["triggers"]
            return int(trigger["metadata"]["lagThreshold"])
    raise LookupError("no rankstream-rerank ScaledObject")


async def test_the_lag_keda_reads_passes_the_manifests_threshold_and_a_second_replica_drains_it(
    cluster: FaultyCluster, cluster_settings: Settings
) -> None:
    """A burst of requests; the rerank consumer's lag read as KEDA reads it (`/jsz` on the
    consumer's leader, num_pending + num_ack_pending). When it passes the rerank
    ScaledObject's lagThreshold, a second rerank replica starts, and the lag drains to zero.
    Each replica gets one core of its own, as on its own node. Prints the drain rates."""
    settings = cluster_settings
    subjects = Subjects.from_settings(settings)
    threshold = rerank_lag_threshold()
    # A burst, then more work whenever the lag falls below `floor` until the second replica
    # is ready (its start and model load take 15-30 s here, longer on a busy machine), as
    # load keeps arriving while KEDA's new replica starts; then the two drain what is left.
    depth, burst, floor = 4, max(threshold * 3, 48), max(threshold * 5, 40)
    first = WorkerProcess("rerank", settings, cpus=[0])
    second = WorkerProcess("rerank", settings, cpus=[1])
    trace = LagTrace()
    started = time.monotonic()

    async def sample(every_s: float = 0.5) -> None:
        """Read the lag as KEDA polls it, all along (its polling interval is 10 s)."""
        while True:
            try:
                reading: ConsumerLag = await asyncio.to_thread(
                    cluster.consumer_lag, subjects.streams.candidates, subjects.durable("rerank")
                )
                trace.samples.append((time.monotonic() - started, reading.lag))
            except LookupError:
                pass  # the consumer's leader is being elected: no reading this time
            await asyncio.sleep(every_s)

    async def until_lag(condition: Callable[[int], bool], what: str) -> float:
        give_up = time.monotonic() + 180
        while not (trace.samples and condition(trace.samples[-1][1])):
            assert time.monotonic() < give_up, f"lag never {what}: {trace.samples[-5:]}"
            await asyncio.sleep(0.1)
        return trace.samples[-1][0]

    async with (
        running(WorkerProcess("retrieval", settings), first),
        watched_client(settings) as (client, ledger),
    ):
        sampler = asyncio.ensure_future(sample())
        waves = [asyncio.ensure_future(ask_many(client, ledger, burst, depth=depth))]

        async def feed_until_ready() -> None:
            while not second.running or READY_LINE not in second.log_text():
                if trace.samples and trace.samples[-1][1] < floor:
                    waves.append(asyncio.ensure_future(ask_many(client, ledger, 8, depth)))
                await asyncio.sleep(1.0)

        try:
            passed_s = await until_lag(lambda value: value > threshold, "passed the threshold")
            alone_from = time.monotonic()
            feeder = asyncio.ensure_future(feed_until_ready())
            try:
                await asyncio.to_thread(second.start)
            finally:
                feeder.cancel()
            second_ready_s = time.monotonic() - started
            alone_until = time.monotonic()
            # A burst for the two to drain together: what the feeder left may be gone in a
            # second, too short a window to measure a drain rate over.
            waves.append(asyncio.ensure_future(ask_many(client, ledger, burst, depth=depth)))
            drained_s = await until_lag(lambda value: value == 0, "drained")
        finally:
            sampler.cancel()
            second.stop()
        replies = [reply for wave in waves for reply in await wave]
    peak = max(value for _, value in trace.samples)
    one = ledger.answered_per_s(alone_from, alone_until)  # fed meanwhile: answers, not lag
    two = trace.drained_per_s(second_ready_s + 1, drained_s)
    figures = ledger.figures(
        f"lag: peak {peak}, threshold {threshold} passed at {passed_s:.1f} s, second replica "
        f"ready at {second_ready_s:.1f} s, drained at {drained_s:.1f} s; candidate sets of "
        f"depth {depth} drained per second: {one:.1f} by one replica ({one * depth:.1f} pairs/s),"
        f" {two:.1f} by two ({two / 2 * depth:.1f} pairs/s per replica)"
    )
    assert peak > threshold
    assert one > 0
    assert two > 0
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert all_ranked(replies)


async def test_up_with_a_cluster_points_every_process_at_all_nodes_and_three_replicas(
    settings: Settings,
) -> None:
    """`rankstream up --cluster 3`'s NATS: three healthy nodes, their URLs, three replicas."""
    from rankstream.workers.stack import local_nats

    unset = settings.model_copy(update={"nats_url": None})
    async with local_nats(unset, port=None, cluster=3) as clustered:
        assert clustered.nats_url is not None
        assert len(clustered.nats_servers) == 3
        assert clustered.stream_replicas == 3
        connection = await nats.connect(servers=clustered.nats_servers)
        try:
            routes = len(connection.servers)  # the servers the client knows, gossip included
        finally:
            await connection.close()
    assert routes == 3
