"""Detection on the real mesh: two processors as separate processes with the rule pack, the query
service's AlertService, real Cassandra and Redis, and a real HTTP receiver for the webhook."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis
from cassandra.cluster import Cluster

from auditmesh.client import AuditClient
from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditmesh.telemetry.scrape import fetch
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import alerts_pb2_grpc as apb_grpc
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import assert_eventually, own_mesh, slot_port, slot_redis_url
from tests.detection.conftest import PACK, event
from tests.detection.mesh_helpers import Receiver, Subscriber, send_to

BASE = 27051
HOOK_PORT = slot_port(27095)
SECRET = b"detect-secret"
ROLES = {"wed-d1": ["org-planner"]}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(HOOK_PORT, SECRET)
    yield r
    r.close()


@pytest.fixture(scope="module")
def detect_mesh(
    tmp_path_factory: pytest.TempPathFactory, store_config: StoreConfig, receiver: Receiver
) -> Iterator[MeshLayout]:
    roles = tmp_path_factory.mktemp("roles") / "roles.json"
    roles.write_text(json.dumps(ROLES))
    redis.Redis.from_url(slot_redis_url(14)).flushdb()
    env = {
        "AUDITMESH_DETECTION_RULES": str(PACK),
        "AUDITMESH_DETECTION_ROLES": str(roles),
        "AUDITMESH_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{HOOK_PORT}/hook",
        "AUDITMESH_ALERT_WEBHOOK_SECRET": SECRET.decode(),
        "AUDITMESH_ALERT_WEBHOOK_ATTEMPTS": "4",
        "AUDITMESH_ALERT_WEBHOOK_BACKOFF_S": "0.05",
    }
    with own_mesh(tmp_path_factory, "detect", BASE, processors=2, redis_db=14, service_env={"processor": env}) as (
        layout,
        _,
    ):
        yield layout


@pytest.fixture
def subscriber(detect_mesh: MeshLayout) -> Iterator[Subscriber]:
    s = Subscriber(detect_mesh.query_target)
    yield s
    s.close()


def failures(n: int, *, users: list[str], ip: str, step_ms: int = 500) -> list[pb.Event]:
    now = int(time.time() * 1000) - n * step_ms
    return [
        event(
            "auth.login.failed",
            at_ms=now + i * step_ms,
            user_id=users[i % len(users)],
            source_ip=ip,
            outcome=pb.OUTCOME_FAILURE,
        )
        for i in range(n)
    ]


def groups(sub: Subscriber, rule: str, run: str) -> set[str]:
    return {
        a.group for a in sub.latest(rule).values() if run in a.group or run in a.user_id or run in a.organization_id
    }


def test_every_pack_rule_fires_over_two_processors_and_no_near_miss_does(
    detect_mesh: MeshLayout, subscriber: Subscriber
) -> None:
    """Each rule's firing events, spread alternately over two processors, raise exactly that rule's
    alert for the firing group; near misses sent alongside raise none (privilege change on one
    replica, bulk access on the other)."""
    run = uuid.uuid4().hex[:6]
    now = int(time.time() * 1000)
    firing = [
        *failures(10, users=[f"bu-{run}"], ip=f"ip-bu-{run}"),
        *failures(30, users=[f"bi{k}-{run}" for k in range(5)], ip=f"ip-bi-{run}"),
        *failures(8, users=[f"cs{k}-{run}" for k in range(8)], ip=f"ip-cs-{run}"),
        *[
            event("guestlist.export", at_ms=now - 10_000 + k, user_id=f"mx-{run}", wedding_id=f"w{k}-{run}")
            for k in range(5)
        ],
        event("auth.account.locked", severity=pb.P0_CRITICAL, user_id=f"p0-{run}"),
        event("guestlist.viewed", wedding_id="wed-d1", organization_id=f"org-x-{run}", user_id=f"fo-{run}"),
    ]
    near = [
        *failures(9, users=[f"bu-miss-{run}"], ip=f"ip-bu-miss-{run}"),
        *failures(29, users=[f"bm{k}-{run}" for k in range(5)], ip=f"ip-bi-miss-{run}"),
        *failures(7, users=[f"cm{k}-{run}" for k in range(7)], ip=f"ip-cs-miss-{run}"),
        *[
            event("guestlist.export", at_ms=now - 10_000 + k, user_id=f"mx-miss-{run}", wedding_id=f"w{k}-{run}")
            for k in range(4)
        ],
        event("permission.revoked", severity=pb.P1_HIGH, user_id=f"p1-{run}"),
        event("guestlist.viewed", wedding_id="wed-d1", organization_id="org-planner", user_id=f"fo-miss-{run}"),
        event("guestlist.viewed", wedding_id=f"wed-unknown-{run}", organization_id=f"org-y-{run}"),
    ]
    everything = firing + near
    p0, p1 = detect_mesh.processor(0).target, detect_mesh.processor(1).target
    send_to(p0, everything[0::2])
    send_to(p1, everything[1::2])
    # Privilege change through one replica, the bulk access through the other; the near miss in reverse.
    grant = event(
        "permission.granted", at_ms=now - 120_000, user_id="admin", attributes={"target_user_id": f"pv-{run}"}
    )
    access = event(
        "guestlist.export", user_id=f"pv-{run}", resource_type="guestlist", attributes={"record_count": "900"}
    )
    miss_access = event(
        "guestlist.export",
        at_ms=now - 120_000,
        user_id=f"pm-{run}",
        resource_type="guestlist",
        attributes={"record_count": "900"},
    )
    miss_grant = event("permission.granted", user_id="admin", attributes={"target_user_id": f"pm-{run}"})
    send_to(p0, [grant, miss_access])
    send_to(p1, [access, miss_grant])

    expected = {
        "brute_force_user": {f"user_id=bu-{run}"},
        "brute_force_ip": {f"source_ip=ip-bi-{run}"},
        "credential_stuffing": {f"source_ip=ip-cs-{run}"},
        "mass_export": {f"user_id=mx-{run}"},
        "privilege_then_bulk_access": {f"subject=pv-{run}"},
        "foreign_org_access": {f"wedding_id=wed-d1, organization_id=org-x-{run}"},
    }

    def all_fired() -> None:
        for rule, want in expected.items():
            assert groups(subscriber, rule, run) == want, rule
        p0_alerts = [a for a in subscriber.latest("p0_event").values() if run in a.user_id]
        assert [a.user_id for a in p0_alerts] == [f"p0-{run}"]

    assert_eventually(all_fired, timeout=30)


def test_correlation_counts_events_from_both_replicas(detect_mesh: MeshLayout, subscriber: Subscriber) -> None:
    """Five failures through each processor (neither reaching the threshold alone) make one alert counting ten."""
    run = uuid.uuid4().hex[:6]
    evs = failures(10, users=[f"split-{run}"], ip=f"ip-split-{run}")
    send_to(detect_mesh.processor(0).target, evs[:5])
    send_to(detect_mesh.processor(1).target, evs[5:])
    assert_eventually(
        lambda: [a.count for a in subscriber.latest("brute_force_user").values() if run in a.group] == [10]
    )


def test_ten_thousand_attempt_brute_force_is_one_alert_with_its_count(
    detect_mesh: MeshLayout, subscriber: Subscriber
) -> None:
    """10,000 failed logins for one user, logged through the SDK and ingest, raise one alert whose count
    reaches 10,000, streamed and stored once."""
    run = uuid.uuid4().hex[:6]
    client = AuditClient(detect_mesh.ingest_target, source_service="detect-test")
    try:
        for _ in range(10_000):
            client.log("auth.login.failed", user_id=f"bf-{run}", source_ip=f"ip-bf-{run}", outcome=pb.OUTCOME_FAILURE)
        client.flush()
    finally:
        client.close()

    def one_alert() -> None:
        mine = [a for a in subscriber.latest("brute_force_user").values() if a.group == f"user_id=bf-{run}"]
        assert len(mine) == 1 and mine[0].count == 10_000, [(a.alert_id, a.count) for a in mine]

    assert_eventually(one_alert, timeout=60)

    def stored_once() -> None:
        with grpc.insecure_channel(detect_mesh.query_target) as channel:
            page = apb_grpc.AlertServiceStub(channel).ListAlerts(
                apb.ListAlertsRequest(filter=apb.AlertFilter(rule="brute_force_user"), page_size=1000)
            )
        mine = [a for a in page.alerts if a.group == f"user_id=bf-{run}"]
        assert [a.count for a in mine] == [10_000]

    assert_eventually(stored_once, timeout=30)


def test_list_alerts_pages_and_filters(detect_mesh: MeshLayout, subscriber: Subscriber) -> None:
    """ListAlerts by wedding returns every alert of it once across pages of two, newest first, and
    its filters (organization, minimum severity, rule) and the subscriber's wedding filter hold."""
    run = uuid.uuid4().hex[:6]
    wedding = f"wed-list-{run}"
    only_mine = Subscriber(detect_mesh.query_target, apb.AlertFilter(wedding_id=wedding))
    try:
        evs = [
            event("auth.account.locked", severity=pb.P0_CRITICAL, wedding_id=wedding, organization_id=f"o{k % 2}-{run}")
            for k in range(5)
        ]
        send_to(detect_mesh.processor(0).target, evs[:3])
        send_to(detect_mesh.processor(1).target, [*evs[3:], event("auth.account.locked", severity=pb.P0_CRITICAL)])
        assert_eventually(lambda: len(only_mine.alerts) == 5)
        assert {a.wedding_id for a in only_mine.alerts} == {wedding}

        def listed(f: apb.AlertFilter, page_size: int) -> list[list[apb.Alert]]:
            pages, token = [], ""
            with grpc.insecure_channel(detect_mesh.query_target) as channel:
                stub = apb_grpc.AlertServiceStub(channel)
                while True:
                    page = stub.ListAlerts(apb.ListAlertsRequest(filter=f, page_size=page_size, page_token=token))
                    pages.append(list(page.alerts))
                    token = page.next_page_token
                    if not token:
                        return pages

        def all_stored() -> None:
            pages = listed(apb.AlertFilter(wedding_id=wedding), 2)
            alerts = [a for p in pages for a in p]
            assert sorted(a.event_ids[0] for a in alerts) == sorted(e.event_id for e in evs)
            assert all(len(p) <= 2 for p in pages) and len(pages) >= 3
            created = [a.created_at.ToMilliseconds() for a in alerts]
            assert created == sorted(created, reverse=True)

        assert_eventually(all_stored, timeout=20)
        by_org = [a for p in listed(apb.AlertFilter(organization_id=f"o0-{run}"), 100) for a in p]
        assert len(by_org) == 3
        assert [a for p in listed(apb.AlertFilter(wedding_id=wedding, rule="brute_force_user"), 100) for a in p] == []
        p0 = listed(apb.AlertFilter(wedding_id=wedding, min_severity=pb.P0_CRITICAL), 100)
        assert sum(len(p) for p in p0) == 5
        with grpc.insecure_channel(detect_mesh.query_target) as channel, pytest.raises(grpc.RpcError) as bad:
            apb_grpc.AlertServiceStub(channel).ListAlerts(
                apb.ListAlertsRequest(filter=apb.AlertFilter(wedding_id=wedding), page_token="not-a-token")
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        only_mine.close()


def test_webhook_signed_retried_after_two_500s_and_dead_lettered_when_down(
    detect_mesh: MeshLayout, receiver: Receiver, store_config: StoreConfig
) -> None:
    """A new alert is POSTed with a valid HMAC-SHA256 signature, retried after two 500s and delivered
    on the third try; an alert the receiver keeps refusing is tried four times and dead-lettered."""
    run = uuid.uuid4().hex[:6]
    ok_event = event("auth.account.locked", severity=pb.P0_CRITICAL, user_id=f"hook-{run}")
    down_event = event("auth.account.locked", severity=pb.P0_CRITICAL, user_id=f"down-{run}")
    send_to(detect_mesh.processor(0).target, [ok_event, down_event])

    def alert_id_of(user: str) -> str:
        found = [json.loads(b)["alertId"] for _, b, _ in list(receiver.posts) if json.loads(b).get("userId") == user]
        assert found
        return found[0]

    assert_eventually(lambda: [s for _, _, s in receiver.posts_of(alert_id_of(f"hook-{run}"))] == [500, 500, 200])
    for headers, body, _ in receiver.posts_of(alert_id_of(f"hook-{run}")):
        assert receiver.signature_ok(headers, body)
        assert not receiver.signature_ok(headers, body + b" ")
    down_id = alert_id_of(f"down-{run}")
    assert_eventually(lambda: [s for _, _, s in receiver.posts_of(down_id)] == [500] * 4)

    cluster = Cluster(list(store_config.hosts), port=store_config.port)
    try:
        session = cluster.connect(store_config.keyspace)

        def dead_lettered() -> None:
            day = int(time.time() * 1000) // 86_400_000
            rows = [
                r
                for d in (day - 1, day)
                for r in session.execute(
                    "SELECT alert_id, attempts, error FROM alert_dead_letters WHERE day = %s", (d,)
                )
            ]
            mine = [r for r in rows if r.alert_id == down_id]
            assert len(mine) == 1 and mine[0].attempts == 4 and mine[0].error == "HTTP 500"
            assert all(r.alert_id != alert_id_of(f"hook-{run}") for r in rows)

        assert_eventually(dead_lettered, timeout=20)
    finally:
        cluster.shutdown()


def test_detection_status_is_exported(detect_mesh: MeshLayout) -> None:
    """Each processor exports the detection counters (queue depth, evaluated, Redis errors) on its metrics endpoint."""
    import urllib.request

    port = detect_mesh.metrics_port(detect_mesh.processor(0).port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        "auditmesh_detection_queue_events",
        "auditmesh_detection_redis_errors_total",
        "auditmesh_detection_rules",
    ):
        assert name in text
    assert "auditmesh_detection_rules 11" in text.replace(".0", "")


def test_alert_feed_status_is_exported(detect_mesh: MeshLayout, subscriber: Subscriber) -> None:
    """The query service exports its live feed: callers on it, its Redis subscription, alerts received."""
    import urllib.request

    run = uuid.uuid4().hex[:6]
    send_to(
        detect_mesh.processor(0).target, [event("auth.account.locked", severity=pb.P0_CRITICAL, user_id=f"feed-{run}")]
    )
    assert_eventually(lambda: any(run in a.user_id for a in subscriber.latest("p0_event").values()), timeout=10)
    port = detect_mesh.metrics_port(detect_mesh.query_port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("auditmesh_alert_feed", "auditmesh_alert_delivery_seconds_count"))
    }
    assert values["auditmesh_alert_feed_subscribers"] >= 1
    assert values["auditmesh_alert_feed_connected"] == 1
    assert values["auditmesh_alert_feed_received_total"] >= 1
    assert values["auditmesh_alert_feed_dropped_total"] == 0
    assert values["auditmesh_alert_delivery_seconds_count"] >= 1


def test_the_monitor_measures_alert_delivery(detect_mesh: MeshLayout, subscriber: Subscriber) -> None:
    """The performance monitor's alert_delivery check has a value (the p99 of the query service's
    delivery times in its interval) while alerts reach a subscriber, and it is the time a new
    alert took from ingest to the subscriber's stream: under the 100 ms threshold here, at rest."""
    run = uuid.uuid4().hex[:6]
    monitor = detect_mesh.metrics_targets()["monitor"]

    def measured() -> float | None:
        user = f"mon-{run}-{time.monotonic_ns()}"
        with AuditClient(detect_mesh.ingest_target, source_service="monitor-check") as client:
            client.log("auth.account.locked", user_id=user, severity=pb.P0_CRITICAL)
            assert client.flush(10)
        value = fetch(monitor, timeout=5).total("auditmesh_monitor_value", check="alert_delivery")
        return value if value is not None and value == value else None  # NaN: nothing measured

    assert_eventually(lambda: measured() is not None, timeout=20)
    value = measured() or measured()
    assert value is not None and 0 < value < 0.1, value


def test_cli_alerts_list_and_check(detect_mesh: MeshLayout) -> None:
    """`auditmesh alerts list` prints a stored alert of the mesh; `alerts check` accepts the pack and
    names the file, rule and field of a bad rule with exit status 1."""
    import os
    import subprocess
    import sys

    run = uuid.uuid4().hex[:6]
    send_to(
        detect_mesh.processor(0).target, [event("auth.account.locked", severity=pb.P0_CRITICAL, user_id=f"cli-{run}")]
    )
    env = {**os.environ, "AUDITMESH_QUERY_PORT": str(detect_mesh.query_port)}

    def listed() -> None:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "auditmesh.cli",
                "alerts",
                "list",
                "--rule",
                "p0_event",
                "--min-severity",
                "P0_CRITICAL",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert f"by cli-{run}" in out

    assert_eventually(listed, timeout=20)
    ok = subprocess.run(
        [sys.executable, "-m", "auditmesh.cli", "alerts", "check", str(PACK)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "5 correlations" in ok.stdout
