"""A mesh with the scaler: processors register in Redis, ingest follows membership, the scaler
starts and stops processors through a supervisor of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import redis

from auditmesh.mesh import MeshLayout
from auditmesh.supervisor import Supervisor, wait_healthy
from auditpb.v1 import scaler_pb2 as spb
from auditpb.v1 import scaler_pb2_grpc as spb_grpc
from tests.conftest import TEST_KEYSPACE, slot_port, slot_redis_url

REDIS_URL = slot_redis_url(13)


@contextmanager
def scaling_mesh(
    tmp_path_factory: pytest.TempPathFactory, name: str, base_port: int, *, processors: int = 1, env: dict[str, str]
) -> Iterator[tuple[MeshLayout, Supervisor]]:
    """ingest on ``base_port``, processors from ``base_port + 10``, query on ``base_port + 20``,
    the scaler on ``base_port + 35`` (in this run's slot), no monitor; ``env`` goes to every
    service (the scaler's AUDITMESH_SCALER_* settings among them). Stopped on exit, the
    processors the scaler started included."""
    layout = MeshLayout(
        ingest_port=slot_port(base_port),
        processor_base_port=slot_port(base_port + 10),
        processors=processors,
        query_port=slot_port(base_port + 20),
        keyspace=TEST_KEYSPACE,
        monitor=False,
        scaler=True,
        extra_env={"AUDITMESH_TOKEN_KEY": f"{name}-key", "AUDITMESH_REDIS_URL": REDIS_URL, **env},
    )
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stale = list(client.scan_iter(match=f"{layout.membership_prefix}:*"))
        if stale:
            client.delete(*stale)  # members of an earlier run on these ports
    finally:
        client.close()
    supervisor = Supervisor(Path(tmp_path_factory.mktemp(name)))
    try:
        for proc in layout.services():
            supervisor.start(proc)
        for proc in layout.services():
            wait_healthy(proc.target, 60, supervisor.log_file(proc.name))
        yield layout, supervisor
    finally:
        layout.stop(supervisor)


def scaler_status(layout: MeshLayout) -> spb.ScalerStatus:
    with grpc.insecure_channel(layout.scaler_target) as channel:
        status: spb.ScalerStatus = spb_grpc.ScalerServiceStub(channel).Status(spb.StatusRequest(), timeout=5)
        return status
