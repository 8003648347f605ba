"""Faults done to a `NatsCluster`'s processes, for the cluster tests: kill -9 of a node (or
of all at once), a pause (SIGSTOP) and its end, a network partition (its routes cut at a
loopback proxy) and its healing, a restart on the same store or on an emptied one; the
leaders of streams and consumers through the JetStream API; a consumer's lag as KEDA reads it.

The package starts and stops clusters (`rankstream up --cluster N`); only these tests break
them, so this lives here and not in `rankstream.workers.local`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from rankstream.workers.local import ClusterNode, NatsCluster, http_json

# Every write fsynced before its PubAck, as the shipped server configs have it: a kill -9 of
# every node at once (the loopback stand-in for a power loss) then loses nothing acknowledged.
# Where each node says peers may reach its routes: a closed port, so that a node never
# opens a route that bypasses the proxies (implicit routes to gossiped addresses).
NO_DIRECT_ROUTE = "127.0.0.1:1"


def _listening_socket() -> socket.socket:
    """A socket bound to a free loopback port now, so that no node draws the same port."""
    return socket.create_server(("127.0.0.1", 0))


@dataclass
class _Link:
    """One direction of a route between two nodes: `source` dials `listen_port`, and the
    proxy forwards to `target`'s route port."""

    source: str
    target: str
    target_port: int
    listening: socket.socket = field(default_factory=_listening_socket)
    sockets: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def listen_port(self) -> int:
        return int(self.listening.getsockname()[1])


class RouteProxy:
    """A TCP proxy on loopback for every route between two nodes (one per direction, in its
    own thread and event loop, so that it forwards while the test blocks). `cut(name)` closes
    the node's routes and refuses new ones until `heal(name)`: a network partition, the
    node running and its clients still connected."""

    def __init__(self, route_ports: dict[str, int]) -> None:
        self.links = [
            _Link(source, target, port)
            for source in route_ports
            for target, port in route_ports.items()
            if target != source
        ]
        self.cut_off: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []

    def routes_of(self, source: str) -> list[str]:
        """The route URLs `source` dials: one proxy port per peer."""
        ports = [link.listen_port for link in self.links if link.source == source]
        return [f"nats://127.0.0.1:{port}" for port in ports]

    def start(self) -> None:
        self._thread.start()
        for link in self.links:
            server = self._call(asyncio.start_server(self._forwarder(link), sock=link.listening))
            self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def cut(self, name: str) -> None:
        """Partition node `name` from its peers: its routes close, new ones are refused."""
        self.cut_off.add(name)
        self._call(self._close_links_of(name))

    def heal(self, name: str) -> None:
        """End the partition: the nodes' route retries get through again."""
        self.cut_off.discard(name)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def _blocked(self, link: _Link) -> bool:
        return bool({link.source, link.target} & self.cut_off)

    async def _close_links_of(self, name: str) -> None:
        for link in self.links:
            if name in (link.source, link.target):
                for writer in list(link.sockets):
                    writer.close()

    def _forwarder(self, link: _Link) -> Any:
        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self._blocked(link):
                writer.close()
                return
            try:
                target_reader, target_writer = await asyncio.open_connection(
                    "127.0.0.1", link.target_port
                )
            except OSError:
                writer.close()
                return
            link.sockets.update((writer, target_writer))
            await asyncio.gather(
                _pipe(reader, target_writer), _pipe(target_reader, writer), return_exceptions=True
            )
            link.sockets.difference_update((writer, target_writer))

        return forward


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes, then close both directions' writer."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class ProxiedNode(ClusterNode):
    """A `ClusterNode` whose routes go through a `RouteProxy` (its JetStream fsyncs every
    write, `sync_interval: always`, as every node `rankstream.workers.local` starts)."""

    def __init__(
        self, name: str, store_dir: Path, route_ports: list[int], index: int, proxy: RouteProxy
    ) -> None:
        super().__init__(name, store_dir, route_ports, index)
        # nats-server's flags: the last of a repeated flag wins.
        self._extra_args = (
            *self._extra_args,
            "--routes", ",".join(proxy.routes_of(name)),
            "--cluster_advertise", NO_DIRECT_ROUTE,
        )  # fmt: skip


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
    """A `NatsCluster` whose nodes a test can break: `kill` (SIGKILL) of one or `kill_all`,
    `suspend`/`resume` (SIGSTOP/SIGCONT), `partition`/`heal` (routes cut at a proxy),
    `restart` (optionally on an emptied store); leaders are found through the JetStream API
    (`stream_leader`, `consumer_leader`), lag through the monitoring port (`consumer_lag`).
    Every node fsyncs each JetStream write before acknowledging it."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        super().__init__(base_dir, size)
        self.suspended: set[str] = set()
        route_ports = [node.route_port for node in self.nodes]
        self.stores = {node.name: base_dir / node.name for node in self.nodes}
        self.routes = RouteProxy({node.name: node.route_port for node in self.nodes})
        self.nodes = [
            ProxiedNode(node.name, base_dir / node.name, route_ports, i, self.routes)
            for i, node in enumerate(self.nodes)
        ]

    def start(self) -> FaultyCluster:
        self.routes.start()
        super().start()
        return self

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
        self.routes.stop()

    def kill(self, name: str) -> ClusterNode:
        """SIGKILL, as a crash: nothing is flushed, no client is told. The store stays, so
        `restart(name)` brings the same node back."""
        node = self.node(name)
        os.kill(node.pid, signal.SIGKILL)
        node.stop()  # reaps the process; the store is the node's own and stays
        self.suspended.discard(name)
        return node

    def kill_all(self) -> None:
        """SIGKILL of every node at once, as a power loss to the whole cluster: each store
        holds what was fsynced. `restart_all()` brings them back on their stores."""
        for node in self.nodes:
            if node.running:
                os.kill(node.pid, signal.SIGKILL)
        for node in self.nodes:
            node.stop()
        self.suspended.clear()

    def restart_all(self) -> None:
        """Start every node on its store, side by side (a node waits for its peers to elect
        the meta leader), and return once the cluster is healthy."""
        for node in self.nodes:
            node.start()
        self.wait_healthy()

    def wipe(self, name: str) -> None:
        """Delete a stopped node's store, as a replaced disk: `restart(name)` then brings it
        back empty, and it must catch up from its peers."""
        assert not self.node(name).running, f"{name} runs: kill it before wiping its store"
        shutil.rmtree(self.stores[name])

    def partition(self, name: str) -> None:
        """Cut every route between `name` and its peers; it keeps running and serving the
        clients connected to it. `heal(name)` ends the partition."""
        self.routes.cut(name)

    def heal(self, name: str) -> None:
        """Let the routes of a partitioned node through again; returns once the cluster is
        healthy (the node rejoined and caught up)."""
        self.routes.heal(name)
        self.wait_healthy()

    def route_count(self, name: str) -> int:
        """How many route connections node `name` holds now (`/routez`)."""
        return int(http_json(f"{self.node(name).monitor_url}/routez")["num_routes"])

    def syncs_always(self, name: str) -> bool:
        """Whether node `name` fsyncs every JetStream write (`/varz`'s JetStream config)."""
        varz = http_json(f"{self.node(name).monitor_url}/varz")
        return bool(varz["jetstream"]["config"].get("sync_always"))

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
