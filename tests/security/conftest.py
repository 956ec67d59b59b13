"""A mesh in secure mode (TLS everywhere, mTLS to processors, tokens at ingest and query) with
material made by ``auditmesh certs`` logic, and helpers to call it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from auditmesh.mesh import MeshLayout
from auditmesh.security.certs import channel_credentials, create_material
from auditmesh.security.tokens import issue_token
from auditmesh.supervisor import Supervisor
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import TEST_KEYSPACE, slot_port, slot_redis_url

RATE_EVENTS_PER_S = 2
RATE_EVENTS_BURST = 40
RATE_CALLS_BURST = 100
"""Low on purpose: the rate-limit tests pass them with subjects of their own; other tests send
fewer events and make fewer query calls per subject than the bursts."""


@dataclass(frozen=True)
class SecureMesh:
    layout: MeshLayout
    supervisor: Supervisor
    dir: Path

    def token(self, subject: str, *scopes: str, **restrictions: object) -> str:
        return issue_token(self.dir, subject, scopes or ("admin",), **restrictions)  # type: ignore[arg-type]

    def channel(self, target: str) -> grpc.Channel:
        """TLS verifying the server against the mesh's CA, no client certificate."""
        return grpc.secure_channel(target, channel_credentials(self.dir))


RULES = Path(__file__).resolve().parents[2] / "rules"


@pytest.fixture(scope="session")
def security_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("security")
    create_material(directory)
    return directory


@pytest.fixture(scope="session")
def secure_mesh(
    store_config: object, security_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureMesh]:
    """ingest, one processor, query and the scaler as separate processes in secure mode (the
    scaler held at one processor: it is here for its port and the reports it receives)."""
    layout = MeshLayout(
        ingest_port=slot_port(23451),
        processor_base_port=slot_port(23461),
        processors=1,
        query_port=slot_port(23471),
        keyspace=TEST_KEYSPACE,
        monitor=False,
        scaler=True,
        extra_env={
            "AUDITMESH_SCALER_MAX_REPLICAS": "1",
            "AUDITMESH_DETECTION_RULES": str(RULES),
            "AUDITMESH_TOKEN_KEY": "secure-mesh-key",
            "AUDITMESH_REDIS_URL": slot_redis_url(14),
            "AUDITMESH_SECURITY_DIR": str(security_dir),
            "AUDITMESH_RATE_EVENTS_PER_S": str(RATE_EVENTS_PER_S),
            "AUDITMESH_RATE_EVENTS_BURST": str(RATE_EVENTS_BURST),
            "AUDITMESH_RATE_CALLS_PER_S": "20",
            "AUDITMESH_RATE_CALLS_BURST": str(RATE_CALLS_BURST),
            "AUDITMESH_CHECKPOINT_INTERVAL_S": "0.5",
        },
    )
    supervisor = Supervisor(tmp_path_factory.mktemp("secure-run"))
    try:
        layout.start(supervisor)
        yield SecureMesh(layout, supervisor, security_dir)
    finally:
        layout.stop(supervisor)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def make_event(wedding: str, **fields: object) -> pb.Event:
    ev = pb.Event(
        event_id=uuid.uuid4().hex,
        wedding_id=wedding,
        user_id="u-sec",
        organization_id="o-sec",
        event_type="guestlist.export",
        severity=pb.P2_MEDIUM,
        outcome=pb.OUTCOME_SUCCESS,
        source_service="payments",
    )
    ev.occurred_at.FromNanoseconds(time.time_ns())
    for name, value in fields.items():
        setattr(ev, name, value)
    return ev


def submit(channel: grpc.Channel, token: str | None, *events: pb.Event) -> pb.BatchAck:
    batch = pb.EventBatch(batch_id=uuid.uuid4().hex, events=list(events))
    metadata = bearer(token) if token else None
    ack: pb.BatchAck = pb_grpc.IngestServiceStub(channel).Submit(batch, timeout=15, metadata=metadata)
    return ack
