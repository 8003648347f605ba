"""Faults done to a `NatsCluster`'s processes, for the cluster tests: kill -9 of a node, a
partition (SIGSTOP) and its end, a restart on the same store; the leaders of streams and
consumers through the JetStream API; a consumer's lag as KEDA reads it.

The package starts and stops clusters (`rankstream up --cluster N`); only these tests break
them, so this lives here and not in `rankstream.workers.local`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats

from rankstream.workers.local import ClusterNode, NatsCluster, http_json


@dataclass(frozen=True)
class ConsumerLag:
    """A durable consumer's lag as KEDA's `nats-jetstream` scaler computes it: read from
    `/jsz?acc=<account>&consumers=true&config=true` on the node that leads the consumer,
    `num_pending` (not yet delivered) + `num_ack_pending` (delivered, not acknowledged)."""

    leader: str
    num_pending: int
    num_ack_pending: int

    @property
    def lag(self) -> int:
        return self.num_pending + self.num_ack_pending


class FaultyCluster(NatsCluster):
    """A `NatsCluster` whose nodes a test can break: `kill` (SIGKILL), `suspend`/`resume`
    (SIGSTOP/SIGCONT), `restart`; leaders are found through the JetStream API
    (`stream_leader`, `consumer_leader`), lag through the monitoring port (`consumer_lag`)."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        super().__init__(base_dir, size)
        self.suspended: set[str] = set()

    @property
    def reachable(self) -> list[ClusterNode]:
        """The nodes that run and are not suspended."""
        return [node for node in super().reachable if node.name not in self.suspended]

    def node(self, name: str) -> ClusterNode:
        (found,) = (node for node in self.nodes if node.name == name)
        return found

    def stop(self) -> None:
        for name in list(self.suspended):  # a suspended node acts on SIGTERM only once resumed
            self.resume(name)
        super().stop()

    def kill(self, name: str) -> ClusterNode:
        """SIGKILL, as a crash: nothing is flushed, no client is told. The store stays, so
        `restart(name)` brings the same node back."""
        node = self.node(name)
        os.kill(node.pid, signal.SIGKILL)
        node.stop()  # reaps the process; the store is the node's own and stays
        self.suspended.discard(name)
        return node

    def suspend(self, name: str) -> ClusterNode:
        """SIGSTOP: the node stops answering anyone (clients, routes, monitoring) while its
        sockets stay open, as a node cut off by a network partition looks to its peers."""
        node = self.node(name)
        os.kill(node.pid, signal.SIGSTOP)
        self.suspended.add(name)
        return node

    def resume(self, name: str) -> ClusterNode:
        """SIGCONT after `suspend()`: the partition heals."""
        node = self.node(name)
        if node.running and name in self.suspended:
            os.kill(node.pid, signal.SIGCONT)
        self.suspended.discard(name)
        return node

    def restart(self, name: str) -> ClusterNode:
        """Start a killed or stopped node again on its ports and store; returns once the whole
        cluster is healthy again (the node caught up)."""
        node = self.node(name)
        if node.running:
            node.stop()
        node.start()
        self.wait_healthy()
        return node

    async def api(self, subject: str, timeout_s: float = 2.0) -> dict[str, Any]:
        """One JetStream API request (`$JS.API....`) through any reachable node."""
        connection = await nats.connect(
            servers=[node.url for node in self.reachable],
            connect_timeout=2,
            max_reconnect_attempts=1,
            allow_reconnect=False,
        )
        try:
            reply = await connection.request(subject, b"", timeout=timeout_s)
            answer: dict[str, Any] = json.loads(reply.data)
            return answer
        finally:
            await connection.close()

    async def stream_leader(
        self, stream: str, timeout_s: float = 30.0, other_than: str | None = None
    ) -> str:
        """The name of the node that leads `stream` (`$JS.API.STREAM.INFO.<stream>` ->
        `cluster.leader`), waiting through an election. `other_than`: wait until a node other
        than this one leads (after a fault to it, its peers name it until they elect anew)."""
        return await self._leader(f"$JS.API.STREAM.INFO.{stream}", timeout_s, other_than)

    async def consumer_leader(
        self, stream: str, consumer: str, timeout_s: float = 30.0, other_than: str | None = None
    ) -> str:
        """The node that leads a consumer (`$JS.API.CONSUMER.INFO.<stream>.<consumer>`)."""
        subject = f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"
        return await self._leader(subject, timeout_s, other_than)

    async def _leader(self, subject: str, timeout_s: float, other_than: str | None) -> str:
        give_up = time.monotonic() + timeout_s
        while True:
            try:
                leader = (await self.api(subject)).get("cluster", {}).get("leader")
                if leader and leader != other_than:
                    return str(leader)
            except (OSError, TimeoutError, nats.errors.Error):
                pass  # no node answered in time: ask again
            if time.monotonic() > give_up:
                raise TimeoutError(f"{subject}: no leader within {timeout_s:g} s")
            await asyncio.sleep(0.2)

    def consumer_lag(self, stream: str, consumer: str, account: str = "$G") -> ConsumerLag:
        """What KEDA's nats-jetstream scaler reads: each node's `/jsz` until the one whose
        server name is the consumer's `cluster.leader`, and its pending counts there."""
        for node in self.reachable:
            try:
                jsz = _jsz(node, account)
            except (OSError, ValueError):
                continue
            for detail in _consumer_details(jsz, account, stream, consumer):
                # Followers hold the consumer too, with stale counts: only the leader's count.
                if detail.get("cluster", {}).get("leader") == node.name:
                    return ConsumerLag(
                        leader=node.name,
                        num_pending=int(detail.get("num_pending", 0)),
                        num_ack_pending=int(detail.get("num_ack_pending", 0)),
                    )
        raise LookupError(f"no node leads consumer {consumer} of stream {stream} now")


def _jsz(node: ClusterNode, account: str) -> Any:
    """`/jsz` with the streams and consumers of `account` this node holds, the way KEDA's
    nats-jetstream scaler asks for it."""
    return http_json(f"{node.monitor_url}/jsz?acc={account}&consumers=true&config=true")


def _consumer_details(jsz: Any, account: str, stream: str, consumer: str) -> list[Any]:
    return [
        detail
        for held in jsz.get("account_details", [])
        if held.get("name") == account
        for detail_stream in held.get("stream_detail", [])
        if detail_stream.get("name") == stream
        for detail in detail_stream.get("consumer_detail", [])
        if detail.get("name") == consumer
    ]
