"""The rule pack in rules/: each rule fires on the events it is written for and stays quiet on
their near misses, through the evaluator and the correlation state in a real Redis."""

from __future__ import annotations

import time

from auditmesh.detection.rules import RuleSet
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import audit_pb2 as pb
from tests.detection.conftest import Roles, event, run

T0 = int(time.time() * 1000) - 3_600_000


def fired(alerts: list[apb.Alert], rule: str) -> list[apb.Alert]:
    """The latest version of each alert of ``rule``."""
    latest: dict[str, apb.Alert] = {}
    for a in alerts:
        if a.rule == rule:
            latest[a.alert_id] = a
    return list(latest.values())


def failures(n: int, *, user: str | None = None, users: int = 1, ip: str = "198.51.100.7", step_ms: int = 1000):
    return [
        event(
            "auth.login.failed",
            at_ms=T0 + i * step_ms,
            user_id=user or f"u-{i % users}",
            source_ip=ip,
            outcome=pb.OUTCOME_FAILURE,
        )
        for i in range(n)
    ]


def test_brute_force_user_fires_at_ten_failures_for_one_user(pack: RuleSet, state_db: str) -> None:
    """Ten failed logins for one user within five minutes raise one brute_force_user alert counting them."""
    alerts = fired(run(pack, [failures(10, user="u-victim")], state_db), "brute_force_user")
    assert len(alerts) == 1
    assert alerts[0].count == 10 and alerts[0].group == "user_id=u-victim"
    assert alerts[0].severity == pb.P1_HIGH and len(alerts[0].event_ids) == 10


def test_brute_force_user_counts_across_batches(pack: RuleSet, state_db: str) -> None:
    """Failures arriving in separate batches add up in the shared window."""
    evs = failures(10, user="u-victim")
    alerts = fired(run(pack, [evs[:5], evs[5:]], state_db), "brute_force_user")
    assert [a.count for a in alerts] == [10]


def test_brute_force_user_near_misses(pack: RuleSet, state_db: str) -> None:
    """Nine failures, ten spread over more than five minutes, or ten successes raise nothing."""
    nine = failures(9, user="u-a")
    spread = failures(10, user="u-b", step_ms=40_000)
    successes = [event("auth.login.succeeded", at_ms=T0 + i, user_id="u-c") for i in range(12)]
    assert fired(run(pack, [nine, spread, successes], state_db), "brute_force_user") == []


def test_brute_force_ip_fires_at_thirty_failures_from_one_address(pack: RuleSet, state_db: str) -> None:
    """Thirty failures from one address (five users, six each) raise brute_force_ip, not brute_force_user."""
    alerts = run(pack, [failures(30, users=5, ip="203.0.113.9")], state_db)
    assert [a.group for a in fired(alerts, "brute_force_ip")] == ["source_ip=203.0.113.9"]
    assert fired(alerts, "brute_force_user") == []
    assert fired(alerts, "credential_stuffing") == []


def test_brute_force_ip_near_miss(pack: RuleSet, state_db: str) -> None:
    """Twenty-nine failures from one address, or thirty split over two addresses, raise nothing."""
    alerts = run(pack, [failures(29, users=5), failures(15, users=5, ip="a"), failures(15, users=5, ip="b")], state_db)
    assert fired(alerts, "brute_force_ip") == []


def test_credential_stuffing_fires_at_eight_users_from_one_address(pack: RuleSet, state_db: str) -> None:
    """One failure for each of eight users from one address is credential stuffing (P0)."""
    alerts = fired(run(pack, [failures(8, users=8, ip="192.0.2.44")], state_db), "credential_stuffing")
    assert len(alerts) == 1 and alerts[0].severity == pb.P0_CRITICAL


def test_credential_stuffing_near_miss(pack: RuleSet, state_db: str) -> None:
    """Seven users failing three times each from one address is not credential stuffing."""
    assert fired(run(pack, [failures(21, users=7)], state_db), "credential_stuffing") == []


def exports(weddings: int, *, user: str = "u-vendor", times: int = 1, outcome: int = pb.OUTCOME_SUCCESS):
    return [
        event(
            "guestlist.export" if i % 2 else "contract.export",
            at_ms=T0 + i * 1000,
            user_id=user,
            wedding_id=f"wed-{i % weddings}",
            organization_id="org-vendor",
            outcome=outcome,
        )
        for i in range(weddings * times)
    ]


def test_mass_export_fires_at_five_weddings(pack: RuleSet, state_db: str) -> None:
    """One user exporting guest lists or contracts of five weddings within an hour is a mass export."""
    alerts = fired(run(pack, [exports(5)], state_db), "mass_export")
    assert [a.group for a in alerts] == ["user_id=u-vendor"]


def test_mass_export_near_misses(pack: RuleSet, state_db: str) -> None:
    """Four weddings, one wedding exported twenty times, or five failed exports raise nothing."""
    batches = [
        exports(4, user="u-a"),
        exports(1, user="u-b", times=20),
        exports(5, user="u-c", outcome=pb.OUTCOME_DENIED),
    ]
    assert fired(run(pack, batches, state_db), "mass_export") == []


def grant(target: str, at_ms: int) -> pb.Event:
    return event("permission.granted", at_ms=at_ms, user_id="u-admin", attributes={"target_user_id": target})


def bulk(user: str, at_ms: int, records: int = 800) -> pb.Event:
    return event(
        "guestlist.viewed",
        at_ms=at_ms,
        user_id=user,
        resource_type="guestlist",
        attributes={"record_count": str(records)},
    )


def test_privilege_then_bulk_access_fires(pack: RuleSet, state_db: str) -> None:
    """A grant to a user followed two minutes later by that user's bulk read raises the alert."""
    alerts = fired(
        run(pack, [[grant("u-new", T0)], [bulk("u-new", T0 + 120_000)]], state_db), "privilege_then_bulk_access"
    )
    assert [a.group for a in alerts] == ["subject=u-new"]


def test_privilege_then_bulk_access_near_misses(pack: RuleSet, state_db: str) -> None:
    """Bulk read before the grant, twenty minutes after it, a small read, or another user's read raise nothing."""
    batches = [
        [bulk("u-1", T0), grant("u-1", T0 + 60_000)],
        [grant("u-2", T0), bulk("u-2", T0 + 20 * 60_000)],
        [grant("u-3", T0), bulk("u-3", T0 + 60_000, records=20)],
        [grant("u-4", T0), bulk("u-5", T0 + 60_000)],
    ]
    assert fired(run(pack, batches, state_db), "privilege_then_bulk_access") == []


def test_foreign_org_access_fires_once_per_wedding_and_org(pack: RuleSet, state_db: str) -> None:
    """An organization with no role on a wedding touching its data raises one alert that counts every access."""
    roles = Roles({"wed-1": {"org-planner"}})
    evs = [
        event("guestlist.viewed", wedding_id="wed-1", organization_id="org-stranger", user_id="u-x") for _ in range(3)
    ]
    alerts = fired(run(pack, [evs[:1], evs[1:]], state_db, roles), "foreign_org_access")
    assert len(alerts) == 1 and alerts[0].count == 3


def test_foreign_org_access_near_misses(pack: RuleSet, state_db: str) -> None:
    """The wedding's own organization, a wedding the relation does not know, or no wedding raise nothing."""
    roles = Roles({"wed-1": {"org-planner"}})
    evs = [
        event("guestlist.viewed", wedding_id="wed-1", organization_id="org-planner"),
        event("guestlist.viewed", wedding_id="wed-unknown", organization_id="org-stranger"),
        event("auth.login.succeeded", organization_id="org-stranger"),
    ]
    assert fired(run(pack, [evs], state_db, roles), "foreign_org_access") == []


def test_p0_event_alerts_once_per_event(pack: RuleSet, state_db: str) -> None:
    """Every P0 event raises an alert of its own; a P1 event does not."""
    evs = [event("auth.account.locked", severity=pb.P0_CRITICAL) for _ in range(2)]
    evs.append(event("permission.revoked", severity=pb.P1_HIGH))
    alerts = fired(run(pack, [evs], state_db), "p0_event")
    assert sorted(a.event_ids[0] for a in alerts) == sorted(e.event_id for e in evs[:2])


def test_brute_force_of_ten_thousand_attempts_is_one_alert(pack: RuleSet, state_db: str) -> None:
    """Suppression: 10,000 failures for one user in batches of 500 are one alert whose count reaches 10,000."""
    evs = failures(10_000, user="u-target", step_ms=10)
    alerts = fired(run(pack, [evs[i : i + 500] for i in range(0, 10_000, 500)], state_db), "brute_force_user")
    assert len(alerts) == 1 and alerts[0].count == 10_000


def test_a_resent_batch_does_not_count_twice(pack: RuleSet, state_db: str) -> None:
    """At-least-once delivery: a batch evaluated again (same event ids) leaves the open alert's count as it was."""
    evs = failures(30, user="u-resent")
    alerts = fired(run(pack, [evs[:10], evs[10:], evs[10:], evs[:10]], state_db), "brute_force_user")
    assert [a.count for a in alerts] == [30]
