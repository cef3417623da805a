"""A real three-node Redis Cluster from the redis-server binary, for the cluster tests."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from tests.support.net import bindable
from tests.support.redis_server import RedisProcess

SLOTS = 16384
BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000 (redis < 7 cannot move it)


def free_cluster_port(taken: set[int]) -> int:
    """A port that is free, and whose cluster-bus port (port + 10000) is free too."""
    for _ in range(1000):
        port = random.randrange(20000, 55000)
        if {port, port + BUS_OFFSET} & taken:
            continue
        if bindable(port) and bindable(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def cluster_info(client: Redis) -> dict[str, str]:
    """CLUSTER INFO of one node as a dict of strings."""
    raw = client.cluster("INFO")
    if isinstance(raw, dict):  # redis-py parses it for some versions and protocols
        return {str(key): str(value) for key, value in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


class RedisClusterProcesses:
    """Three master nodes, no replicas, each owning a third of the hash slots."""

    def __init__(self, size: int = 3) -> None:
        taken: set[int] = set()
        self.nodes: list[RedisProcess] = []
        for _ in range(size):
            port = free_cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            self.nodes.append(
                RedisProcess(
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                )
            )

    @property
    def ports(self) -> list[int]:
        """The client port of every node."""
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The cache URL the proxy is given: any one node is enough to discover the rest."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}/0"

    def clients(self) -> list[Redis]:
        """A plain (non-cluster) client per node; the caller closes them."""
        return [Redis(host="127.0.0.1", port=port, socket_timeout=5) for port in self.ports]

    def start(self) -> None:
        """Start the nodes, split the slots, introduce them, wait for cluster_state:ok."""
        for node in self.nodes:
            node.start()
        clients = self.clients()
        try:
            share = SLOTS // len(clients)
            for index, client in enumerate(clients):
                low = index * share
                high = SLOTS if index == len(clients) - 1 else low + share
                client.cluster("ADDSLOTS", *range(low, high))
                client.cluster("SET-CONFIG-EPOCH", index + 1)
            for port in self.ports[1:]:
                clients[0].cluster("MEET", "127.0.0.1", port)
            self._wait_until_ok(clients)
        finally:
            for client in clients:
                client.close()

    def _wait_until_ok(self, clients: list[Redis]) -> None:
        deadline = time.monotonic() + 30
        while True:
            infos = [cluster_info(client) for client in clients]
            if all(
                info.get("cluster_state") == "ok"
                and info.get("cluster_known_nodes") == str(len(clients))
                and info.get("cluster_slots_ok") == str(SLOTS)
                for info in infos
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not form: {infos}")
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Stop every node and remove its directory."""
        for node in self.nodes:
            node.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A running three-node Redis Cluster, shared by the session, torn down at its end."""
    cluster = RedisClusterProcesses()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    """The ``redis+cluster://`` URL of the session's cluster."""
    return redis_cluster.url
