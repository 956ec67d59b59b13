"""Shared fixtures: the real Cassandra and Redis (started by deploy/local/infra.sh when not
running), a test keyspace created once per session, and the real services as separate
processes on their own ports."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout, infra
from auditmesh.schema import create_schema, drop_keyspace
from auditmesh.supervisor import Supervisor, wait_healthy

# AUDITMESH_TEST_SLOT lets several test runs share one Cassandra and Redis: each slot has its
# own keyspace, ports and Redis databases.
TEST_SLOT = int(os.environ.get("AUDITMESH_TEST_SLOT", "0"))
TEST_KEYSPACE = os.environ.get("AUDITMESH_TEST_KEYSPACE", "auditmesh_test" + (f"_{TEST_SLOT}" if TEST_SLOT else ""))


def slot_port(port: int) -> int:
    """A test service's port in this run's slot."""
    return port + 200 * TEST_SLOT


def slot_redis_url(db: int) -> str:
    """A Redis database of this run's slot: databases 12-15 for slot 0, 8-11 for slot 1, ... 0-3 for
    slot 3, then 16-19 for slot 4, 20-23 for slot 5 (infra.sh starts Redis with 64 databases)."""
    return f"redis://127.0.0.1:6379/{db - 4 * TEST_SLOT if TEST_SLOT <= 3 else db + 4 * (TEST_SLOT - 3)}"


def assert_eventually(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.1) -> None:
    """Retry ``check`` (an assertion or a truthy predicate) until it passes or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result is None or result:
                return
            error: Exception = AssertionError(f"{check} stayed false for {timeout}s")
        except AssertionError as exc:
            error = exc
        if time.monotonic() > deadline:
            raise error
        time.sleep(interval)


@pytest.fixture(scope="session")
def infrastructure() -> None:
    """Cassandra and Redis are up (started here when they are not)."""
    infra("up")


@pytest.fixture(scope="session")
def store_config(infrastructure: None) -> StoreConfig:
    """A keyspace emptied at the start of every session, so runs never see each other's rows
    and the node does not accumulate them."""
    cfg = StoreConfig(keyspace=TEST_KEYSPACE)
    drop_keyspace(cfg)
    create_schema(cfg)
    return cfg


@pytest.fixture(scope="session")
def mesh_layout(store_config: StoreConfig) -> MeshLayout:
    return MeshLayout(
        ingest_port=slot_port(22051),
        processor_base_port=slot_port(22061),
        processors=2,
        query_port=slot_port(22071),
        keyspace=TEST_KEYSPACE,
        extra_env={"AUDITMESH_TOKEN_KEY": "test-token-key", "AUDITMESH_REDIS_URL": slot_redis_url(15)},
    )


@pytest.fixture(scope="session")
def supervisor(tmp_path_factory: pytest.TempPathFactory) -> Supervisor:
    return Supervisor(Path(tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="session")
def mesh(mesh_layout: MeshLayout, supervisor: Supervisor) -> Iterator[MeshLayout]:
    """ingest, two processors and query running as separate processes against the test keyspace."""
    try:
        mesh_layout.start(supervisor)  # a service that fails to start must not leak the others
        yield mesh_layout
    finally:
        mesh_layout.stop(supervisor)


@contextmanager
def own_mesh(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    base_port: int,
    *,
    processors: int = 1,
    redis_db: int = 15,
    env: dict[str, str] | None = None,
    service_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[tuple[MeshLayout, Supervisor]]:
    """A mesh of a test's own on the test keyspace: ingest on ``base_port``, processors from
    ``base_port + 10``, query on ``base_port + 20`` (in this run's slot), with a supervisor of
    its own so that its process names do not clash with the ``mesh`` fixture's; stopped on exit.
    ``service_env`` adds variables to the services whose names start with a key ("processor",
    "query", "ingest")."""
    layout = MeshLayout(
        ingest_port=slot_port(base_port),
        processor_base_port=slot_port(base_port + 10),
        processors=processors,
        query_port=slot_port(base_port + 20),
        keyspace=TEST_KEYSPACE,
        extra_env={
            "AUDITMESH_TOKEN_KEY": f"{name}-key",
            "AUDITMESH_REDIS_URL": slot_redis_url(redis_db),
            **(env or {}),
        },
    )
    supervisor = Supervisor(Path(tmp_path_factory.mktemp(name)))
    try:
        for proc in layout.services():
            for prefix, extra in (service_env or {}).items():
                if proc.name.startswith(prefix):
                    proc = dataclasses.replace(proc, env={**proc.env, **extra})
            supervisor.start(proc)
        for proc in layout.services():
            wait_healthy(proc.target, 60, supervisor.log_file(proc.name))
        yield layout, supervisor
    finally:
        layout.stop(supervisor)


def slot_cassandra_address(node: int = 1) -> str:
    """The loopback address of node ``node`` (from 1) of this run's own three-node Cassandra
    cluster (the failover tests'): 127.0.0.2-4 for slot 0, 127.0.0.5-7 for slot 1, ... The
    shared node binds 127.0.0.1 only, so the same ports are free on these addresses."""
    return f"127.0.0.{2 + 3 * TEST_SLOT + node - 1}"


def slot_jmx_port() -> int:
    """The first JMX port of this run's own Cassandra cluster (node K: + 100 * (K - 1))."""
    return 17100 + 10 * TEST_SLOT
