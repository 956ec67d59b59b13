"""TLS on every port of a secure mesh, mTLS to the processor, against the real services."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditmesh.client import AuditClient
from auditmesh.security.certs import channel_credentials, create_material
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from auditpb.v1 import scaler_pb2 as spb
from auditpb.v1 import scaler_pb2_grpc as spb_grpc
from tests.conftest import assert_eventually
from tests.security.conftest import SecureMesh, bearer


def _health(channel: grpc.Channel) -> str:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        _health(channel)
    code: grpc.StatusCode = caught.value.code()
    return code


@pytest.fixture(scope="module")
def foreign_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates of another CA, with the same names as the mesh's."""
    directory = tmp_path_factory.mktemp("foreign")
    create_material(directory)
    return directory


def test_plaintext_clients_cannot_talk_to_tls_ports(secure_mesh: SecureMesh) -> None:
    """A plaintext client gets no answer from ingest, query, the processor or the scaler of a
    secure mesh."""
    layout = secure_mesh.layout
    for target in (layout.ingest_target, layout.query_target, layout.processor(0).target, layout.scaler_target):
        with grpc.insecure_channel(target) as channel:
            assert _refused(channel) == grpc.StatusCode.UNAVAILABLE, target


@pytest.mark.parametrize("service", ["processor", "scaler"])
def test_internal_services_require_a_client_certificate_of_the_mesh_ca(
    secure_mesh: SecureMesh, foreign_dir: Path, service: str
) -> None:
    """TLS without a client certificate, or with one of another CA, cannot connect to a processor
    or to the scaler; the mesh's own certificate can."""
    layout = secure_mesh.layout
    target = layout.processor(0).target if service == "processor" else layout.scaler_target
    with grpc.secure_channel(target, channel_credentials(secure_mesh.dir)) as channel:
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
    foreign = grpc.ssl_channel_credentials(
        root_certificates=(secure_mesh.dir / "ca.pem").read_bytes(),
        private_key=(foreign_dir / "ingest.key").read_bytes(),
        certificate_chain=(foreign_dir / "ingest.pem").read_bytes(),
    )
    with grpc.secure_channel(target, foreign) as channel:
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(target, channel_credentials(secure_mesh.dir, "ingest")) as channel:
        assert _health(channel) == "SERVING"


def test_sdk_over_tls_with_a_token_writes_through_mtls_to_the_store(secure_mesh: SecureMesh) -> None:
    """The SDK over TLS with a token logs events that ingest forwards to the processor over mTLS
    and that query, over TLS with a token, finds."""
    wedding = f"tls-{uuid.uuid4().hex[:8]}"
    token = secure_mesh.token("sdk-tls", "ingest:write")
    with AuditClient(
        secure_mesh.layout.ingest_target,
        source_service="payments",
        token=token,
        credentials=channel_credentials(secure_mesh.dir),
    ) as client:
        for i in range(5):
            client.log("payment.refund.issued", user_id=f"u-{i}", wedding_id=wedding)
        assert client.flush(timeout=30)
        assert client.stats.acked == 5
    reader = secure_mesh.token("auditor", "query:read")
    with secure_mesh.channel(secure_mesh.layout.query_target) as channel:
        stub = pb_grpc.QueryServiceStub(channel)

        def found() -> None:
            (page,) = stub.Search(pb.SearchRequest(wedding_id=wedding), timeout=10, metadata=bearer(reader))
            assert len(page.events) == 5

        assert_eventually(found, timeout=20)


def test_load_reports_reach_the_scaler_over_mtls(secure_mesh: SecureMesh) -> None:
    """Ingest and the processor report their load to the scaler of a secure mesh with their own
    certificates: the scaler's status, read with the operator's, lists both as reporting."""
    with grpc.secure_channel(
        secure_mesh.layout.scaler_target, channel_credentials(secure_mesh.dir, "operator")
    ) as channel:
        stub = spb_grpc.ScalerServiceStub(channel)

        def both_report() -> None:
            status = stub.Status(spb.StatusRequest(), timeout=5)
            reporting = {m.service for m in status.members if 0 <= m.age_s < 5}  # -1: registered, no report
            assert {"ingest", "processor"} <= reporting, status.members

        assert_eventually(both_report, timeout=30)
