"""Tokens and scopes against the real services of a secure mesh: who may write, who may read what."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from auditmesh.security.certs import create_material
from auditmesh.security.tokens import issue_token
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import alerts_pb2_grpc as apb_grpc
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc
from tests.conftest import assert_eventually
from tests.security.conftest import SecureMesh, bearer, make_event, submit


@pytest.fixture(scope="module")
def ingest(secure_mesh: SecureMesh) -> Iterator[grpc.Channel]:
    with secure_mesh.channel(secure_mesh.layout.ingest_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def query(secure_mesh: SecureMesh) -> Iterator[pb_grpc.QueryServiceStub]:
    with secure_mesh.channel(secure_mesh.layout.query_target) as channel:
        yield pb_grpc.QueryServiceStub(channel)


@pytest.fixture(scope="module")
def two_weddings(
    secure_mesh: SecureMesh, ingest: grpc.Channel, query: pb_grpc.QueryServiceStub
) -> dict[str, list[str]]:
    """Wedding "mine" with 12 events (3 of them by org o-vendor) and wedding "theirs" with 12,
    stored through ingest; event ids by wedding."""
    run = uuid.uuid4().hex[:8]
    writer = secure_mesh.token(f"writer-{run}", "ingest:write")
    ids: dict[str, list[str]] = {}
    for name in ("mine", "theirs"):
        wedding = f"acc-{run}-{name}"
        events = [
            make_event(wedding, organization_id="o-vendor" if i < 3 else "o-planner", user_id=f"u-{run}")
            for i in range(12)
        ]
        ack = submit(ingest, writer, *events)
        assert ack.status == pb.ACK_STATUS_OK and ack.accepted == 12, ack
        ids[wedding] = [ev.event_id for ev in events]
    admin = secure_mesh.token("admin-reader", "admin")
    for wedding in ids:

        def stored(wedding: str = wedding) -> None:
            (page,) = query.Search(pb.SearchRequest(wedding_id=wedding), timeout=10, metadata=bearer(admin))
            assert len(page.events) == 12

        assert_eventually(stored, timeout=20)
    return ids


def _code(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    code: grpc.StatusCode = call.code()
    return code


def _search(query: pb_grpc.QueryServiceStub, token: str, **fields: object) -> list[pb.SearchPage]:
    return list(query.Search(pb.SearchRequest(**fields), timeout=10, metadata=bearer(token)))  # type: ignore[arg-type]


def test_missing_expired_malformed_and_foreign_tokens_are_unauthenticated(
    secure_mesh: SecureMesh, ingest: grpc.Channel, query: pb_grpc.QueryServiceStub, tmp_path: Path
) -> None:
    """No token, an expired one, a malformed one and one signed by a key the mesh does not know
    are each refused with UNAUTHENTICATED, at ingest and at query."""
    create_material(tmp_path)
    (foreign_key,) = (tmp_path / "tokens").glob("*.key")
    (mine,) = (secure_mesh.dir / "tokens").glob("*.key")
    foreign_key.rename(foreign_key.with_name(mine.name))  # the mesh's key id, another key
    tokens: dict[str, str | None] = {
        "missing": None,
        "expired": issue_token(secure_mesh.dir, "late", ["admin"], now=time.time() - 7200, ttl_s=60),
        "malformed": "not.a.token",
        "wrongly signed": issue_token(tmp_path, "forger", ["admin"]),
    }
    for what, token in tokens.items():
        metadata = bearer(token) if token else None
        with pytest.raises(grpc.RpcError) as caught:
            submit(ingest, token, make_event("w-any"))
        assert _code(caught.value) == grpc.StatusCode.UNAUTHENTICATED, what
        with pytest.raises(grpc.RpcError) as caught:
            list(query.Search(pb.SearchRequest(wedding_id="w-any"), timeout=10, metadata=metadata))
        assert _code(caught.value) == grpc.StatusCode.UNAUTHENTICATED, what


def test_wrong_scope_is_permission_denied(
    secure_mesh: SecureMesh, ingest: grpc.Channel, query: pb_grpc.QueryServiceStub
) -> None:
    """A reading token cannot write, a writing token cannot read: PERMISSION_DENIED."""
    with pytest.raises(grpc.RpcError) as caught:
        submit(ingest, secure_mesh.token("reader", "query:read"), make_event("w-any"))
    assert _code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:
        _search(query, secure_mesh.token("writer", "ingest:write"), wedding_id="w-any")
    assert _code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:
        _search(query, secure_mesh.token("alerts", "alerts:read"), wedding_id="w-any")
    assert _code(caught.value) == grpc.StatusCode.PERMISSION_DENIED


def test_a_vendor_reads_only_its_wedding_through_search_and_get_event(
    secure_mesh: SecureMesh, query: pb_grpc.QueryServiceStub, two_weddings: dict[str, list[str]]
) -> None:
    """A token for one wedding finds that wedding's events; searching the other wedding is
    PERMISSION_DENIED, and GetEvent of the other wedding's event is NOT_FOUND exactly as an
    unknown id is."""
    mine, theirs = list(two_weddings)
    vendor = secure_mesh.token("vendor", "query:read", weddings=[mine])
    (page,) = _search(query, vendor, wedding_id=mine)
    assert {ev.event_id for ev in page.events} == set(two_weddings[mine])
    for fields in ({"wedding_id": theirs}, {"user_id": "u-sec"}, {"wedding_id": theirs, "organization_id": "o-vendor"}):
        with pytest.raises(grpc.RpcError) as caught:
            _search(query, vendor, **fields)
        assert _code(caught.value) == grpc.StatusCode.PERMISSION_DENIED, fields
    own = query.GetEvent(pb.GetEventRequest(event_id=two_weddings[mine][0]), timeout=10, metadata=bearer(vendor))
    assert own.wedding_id == mine
    with pytest.raises(grpc.RpcError) as hidden:
        query.GetEvent(pb.GetEventRequest(event_id=two_weddings[theirs][0]), timeout=10, metadata=bearer(vendor))
    with pytest.raises(grpc.RpcError) as missing:
        query.GetEvent(pb.GetEventRequest(event_id="no-such-event"), timeout=10, metadata=bearer(vendor))
    assert _code(hidden.value) == _code(missing.value) == grpc.StatusCode.NOT_FOUND


def test_page_tokens_never_widen_a_scope(
    secure_mesh: SecureMesh, query: pb_grpc.QueryServiceStub, two_weddings: dict[str, list[str]]
) -> None:
    """A page token of the vendor's own search does not open the other wedding, and one taken
    from an admin's search of the other wedding does not continue inside the vendor's."""
    mine, theirs = list(two_weddings)
    vendor = secure_mesh.token("vendor", "query:read", weddings=[mine])
    (first,) = _search(query, vendor, wedding_id=mine, page_size=5)
    assert first.next_page_token
    with pytest.raises(grpc.RpcError) as caught:
        _search(query, vendor, wedding_id=theirs, page_size=5, page_token=first.next_page_token)
    assert _code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    (admins,) = _search(query, secure_mesh.token("admin", "admin"), wedding_id=theirs, page_size=5)
    with pytest.raises(grpc.RpcError) as caught:
        _search(query, vendor, wedding_id=mine, page_size=5, page_token=admins.next_page_token)
    assert _code(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
    seen: set[str] = set()
    token = ""
    while True:
        (page,) = _search(query, vendor, wedding_id=mine, page_size=5, page_token=token)
        seen |= {ev.event_id for ev in page.events}
        token = page.next_page_token
        if not token:
            break
    assert seen == set(two_weddings[mine])


def test_an_organization_token_sees_only_its_organizations_events(
    secure_mesh: SecureMesh, query: pb_grpc.QueryServiceStub, two_weddings: dict[str, list[str]]
) -> None:
    """A token of one organization searching a wedding gets only that organization's events
    (the filter is applied server-side), and another organization's filter is refused."""
    mine, theirs = list(two_weddings)
    org = secure_mesh.token("org-vendor", "query:read", orgs=["o-vendor"])
    for wedding in (mine, theirs):
        (page,) = _search(query, org, wedding_id=wedding)
        assert len(page.events) == 3 and {ev.organization_id for ev in page.events} == {"o-vendor"}
    with pytest.raises(grpc.RpcError) as caught:
        _search(query, org, wedding_id=mine, organization_id="o-planner")
    assert _code(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    hidden = two_weddings[mine][3:4]
    with pytest.raises(grpc.RpcError) as missing:
        query.GetEvent(pb.GetEventRequest(event_id=hidden[0]), timeout=10, metadata=bearer(org))
    assert _code(missing.value) == grpc.StatusCode.NOT_FOUND


def test_a_source_restricted_token_cannot_write_as_another_source(
    secure_mesh: SecureMesh, ingest: grpc.Channel, query: pb_grpc.QueryServiceStub
) -> None:
    """An ``ingest:write`` token for "payments" gets its events as "guestlist" rejected (field
    source_service, not stored) while its own source's events in the same batch are stored."""
    wedding = f"src-{uuid.uuid4().hex[:8]}"
    token = secure_mesh.token("payments-svc", "ingest:write", sources=["payments"])
    honest, forged = make_event(wedding), make_event(wedding, source_service="guestlist")
    ack = submit(ingest, token, honest, forged)
    assert ack.accepted == 1
    assert [(r.index, r.field) for r in ack.rejected] == [(1, "source_service")]
    admin = secure_mesh.token("admin", "admin")

    def only_honest() -> None:
        (page,) = _search(query, admin, wedding_id=wedding)
        assert [ev.event_id for ev in page.events] == [honest.event_id]

    assert_eventually(only_honest, timeout=20)


def test_a_vendor_sees_only_its_weddings_alerts(secure_mesh: SecureMesh, ingest: grpc.Channel) -> None:
    """With alerts of two weddings stored, a token for one wedding lists and subscribes to that
    wedding's alerts only: another wedding's filter, or no filter, is PERMISSION_DENIED, and a
    token without ``alerts:read`` cannot call AlertService at all."""
    run = uuid.uuid4().hex[:8]
    mine, theirs = f"alerts-mine-{run}", f"alerts-theirs-{run}"
    writer = secure_mesh.token(f"writer-{run}", "ingest:write")
    p0 = {"severity": pb.P0_CRITICAL, "event_type": "payment.refund.issued"}
    ack = submit(ingest, writer, make_event(mine, **p0), make_event(theirs, **p0))
    assert ack.status == pb.ACK_STATUS_OK and ack.accepted == 2, ack
    auditor = secure_mesh.token("alert-auditor", "alerts:read")
    vendor = secure_mesh.token("alert-vendor", "alerts:read", weddings=[mine])
    with secure_mesh.channel(secure_mesh.layout.query_target) as channel:
        stub = apb_grpc.AlertServiceStub(channel)

        def listed(token: str, f: apb.AlertFilter) -> list[apb.Alert]:
            resp = stub.ListAlerts(apb.ListAlertsRequest(filter=f), timeout=10, metadata=bearer(token))
            return list(resp.alerts)

        def both_stored() -> None:
            weddings = {a.wedding_id for a in listed(auditor, apb.AlertFilter(rule="p0_event"))}
            assert {mine, theirs} <= weddings, weddings

        assert_eventually(both_stored, timeout=30)
        own = listed(vendor, apb.AlertFilter(wedding_id=mine))
        assert own and {a.wedding_id for a in own} == {mine}
        for f in (apb.AlertFilter(wedding_id=theirs), apb.AlertFilter(), apb.AlertFilter(organization_id="o-sec")):
            with pytest.raises(grpc.RpcError) as listing:
                listed(vendor, f)
            assert _code(listing.value) == grpc.StatusCode.PERMISSION_DENIED, f
            stream = stub.SubscribeAlerts(apb.SubscribeAlertsRequest(filter=f), timeout=10, metadata=bearer(vendor))
            with pytest.raises(grpc.RpcError) as subscribing:
                next(iter(stream))
            assert _code(subscribing.value) == grpc.StatusCode.PERMISSION_DENIED, f
        reader = secure_mesh.token("events-only", "query:read")
        with pytest.raises(grpc.RpcError) as scoped:
            listed(reader, apb.AlertFilter(wedding_id=mine))
        assert _code(scoped.value) == grpc.StatusCode.PERMISSION_DENIED
