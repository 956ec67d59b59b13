"""The SDK end to end on the Python running the tests: log, flush, then find every event
through Search on the real mesh, with its fields as logged, exactly once."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Mesh, RunPython, Search

from auditmesh import AuditClient
from auditpb.v1 import audit_pb2 as pb

SERVER_SIDE = ("cassandra", "redis", "uvloop", "opentelemetry", "grpc_health", "grpc_reflection", "grpc_status")


def test_importing_the_sdk_imports_nothing_server_side(run_python: RunPython) -> None:
    """``from auditmesh import AuditClient`` (and the logging handler) loads no module of the
    server extra, so the SDK works where only grpcio and protobuf are installed. (grpc itself
    imports grpc_health and grpc_reflection when they are installed: those are not counted.)"""
    code = (
        "import sys\n"
        "import grpc\n"
        "before = set(sys.modules)\n"
        "from auditmesh import AuditClient\n"
        "import auditmesh.logging_handler\n"
        f"print(sorted(m for m in set(sys.modules) - before if m.partition('.')[0] in {SERVER_SIDE!r}))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_logged_events_are_found_through_search_exactly_once(sdk_mesh: Mesh, search: Search, wedding: str) -> None:
    """1,200 events (two full batches and a partial one, one P0 among them) logged and flushed
    are all acknowledged, and Search returns each once with the fields it was logged with."""
    with AuditClient(sdk_mesh.ingest, source_service="sdk-e2e") as client:
        ids = {
            client.log(
                "guestlist.viewed",
                user_id=f"u-{i % 7}",
                organization_id="org-1",
                wedding_id=wedding,
                severity=pb.P0_CRITICAL if i == 600 else pb.P3_LOW,
                outcome=pb.OUTCOME_DENIED if i % 2 else pb.OUTCOME_SUCCESS,
                resource_type="guest_list",
                resource_id=f"gl-{i}",
                source_ip="10.0.0.7",
                attributes={"seq": str(i)},
            ): i
            for i in range(1200)
        }
        assert client.flush(timeout=60)
        stats = client.stats
    assert (stats.logged, stats.acked, stats.rejected, stats.dropped, stats.pending) == (1200, 1200, 0, 0, 0)

    found = search(wedding)
    assert sorted(ev.event_id for ev in found) == sorted(ids), "missing or repeated events"
    for ev in found:
        i = ids[ev.event_id]
        assert (ev.event_type, ev.user_id, ev.organization_id) == ("guestlist.viewed", f"u-{i % 7}", "org-1")
        assert ev.severity == (pb.P0_CRITICAL if i == 600 else pb.P3_LOW)
        assert ev.outcome == (pb.OUTCOME_DENIED if i % 2 else pb.OUTCOME_SUCCESS)
        assert (ev.resource_type, ev.resource_id, ev.source_ip) == ("guest_list", f"gl-{i}", "10.0.0.7")
        assert (ev.source_service, dict(ev.attributes)) == ("sdk-e2e", {"seq": str(i)})


def test_a_rejected_event_is_reported_with_its_field(sdk_mesh: Mesh, search: Search, wedding: str) -> None:
    """An event ingest refuses (no user_id) reaches ``on_rejected`` with the field, and its valid
    neighbours are stored."""
    rejected: list[pb.Rejection] = []
    with AuditClient(sdk_mesh.ingest, on_rejected=rejected.append) as client:
        good = client.log("auth.login.succeeded", user_id="u-1", wedding_id=wedding)
        bad = client.log("auth.login.succeeded", user_id="", wedding_id=wedding)
        assert client.flush(timeout=30)
        assert client.stats.rejected == 1
    assert [(r.event_id, r.field) for r in rejected] == [(bad, "user_id")]
    assert [ev.event_id for ev in search(wedding)] == [good]


def test_the_command_without_the_server_extra_says_what_to_install() -> None:
    """Where only the SDK is installed, the ``auditmesh`` command exits with status 2 and
    names the extra to install, instead of a traceback from an import deep inside."""
    if importlib.util.find_spec("cassandra") is not None:
        pytest.skip("the server extra is installed here; scripts/sdk_matrix.sh runs this without it")
    command = Path(sys.executable).parent / "auditmesh"
    out = subprocess.run([str(command), "status"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert 'pip install "auditmesh[server]"' in out.stderr
    assert "Traceback" not in out.stderr
