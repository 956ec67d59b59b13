"""Realistic synthetic security events for demos, tests and benchmarks.

Many weddings with a skew (a few large ones), vendors and planners as organizations, a mix of
event types and severities close to what the platform emits: mostly logins and reads, some
exports and permission changes, ~1% P0.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from auditmesh.priority import CalendarEntry
from auditpb.v1 import audit_pb2 as pb

__all__ = ["EVENT_TYPES", "Synthetic"]

# (event_type, resource_type, severity, weight)
EVENT_TYPES: list[tuple[str, str, int, int]] = [
    ("auth.login.succeeded", "session", pb.P3_LOW, 300),
    ("auth.login.failed", "session", pb.P2_MEDIUM, 60),
    ("auth.mfa.challenged", "session", pb.P3_LOW, 40),
    ("guestlist.viewed", "guestlist", pb.P3_LOW, 200),
    ("guestlist.updated", "guestlist", pb.P2_MEDIUM, 80),
    ("guestlist.export", "guestlist", pb.P1_HIGH, 20),
    ("payment.viewed", "payment", pb.P2_MEDIUM, 60),
    ("payment.refund.issued", "payment", pb.P1_HIGH, 10),
    ("vendor_contract.signed", "vendor_contract", pb.P2_MEDIUM, 15),
    ("timeline.updated", "timeline", pb.P3_LOW, 60),
    ("permission.granted", "role", pb.P1_HIGH, 15),
    ("permission.revoked", "role", pb.P1_HIGH, 5),
    ("data.export.bulk", "account", pb.P0_CRITICAL, 4),
    ("auth.account.locked", "session", pb.P0_CRITICAL, 6),
]
_TZS = ["Europe/London", "America/New_York", "America/Los_Angeles", "Europe/Paris", "Australia/Sydney"]


@dataclass
class Synthetic:
    """A seeded generator of ``AuditClient.log`` keyword arguments.

    Wedding and user ids are named after ``world`` (by default the seed), so generators with
    different seeds write disjoint weddings and users unless they are given one world.
    """

    weddings: int = 1000
    users_per_wedding: int = 8
    seed: int = 7
    world: str = ""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._world = self.world or str(self.seed)
        # Zipf-like skew: wedding k is chosen with weight 1/(k+1)^0.8.
        self._wedding_weights = [1 / (k + 1) ** 0.8 for k in range(self.weddings)]
        self._types = list(EVENT_TYPES)
        self._type_weights = [t[3] for t in EVENT_TYPES]

    def wedding_id(self, k: int) -> str:
        return f"wed-{self._world}-{k:05d}"

    def user_id(self, k: int, user: int) -> str:
        """User ``user`` (of ``users_per_wedding``) of wedding ``k``."""
        return f"user-{self._world}-{k:05d}-{user}"

    def calendar(self, today: dt.date, wedding_day_share: float = 0.1) -> list[CalendarEntry]:
        """Calendar entries: ``wedding_day_share`` of weddings happen today, the rest later."""
        out = []
        for k in range(self.weddings):
            offset = 0 if k % round(1 / wedding_day_share) == 0 else 1 + k % 180
            out.append(CalendarEntry(self.wedding_id(k), today + dt.timedelta(days=offset), _TZS[k % len(_TZS)]))
        return out

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        rng = self._rng
        weddings = rng.choices(range(self.weddings), self._wedding_weights, k=n)
        kinds = rng.choices(self._types, self._type_weights, k=n)
        for k, (event_type, resource_type, severity, _) in zip(weddings, kinds, strict=True):
            user = rng.randrange(self.users_per_wedding)
            no_wedding = event_type.startswith("auth.") and rng.random() < 0.3
            yield {
                "event_type": event_type,
                "user_id": self.user_id(k, user),
                "organization_id": f"org-{k % 97:03d}",
                "wedding_id": "" if no_wedding else self.wedding_id(k),
                "severity": severity,
                "outcome": pb.OUTCOME_FAILURE
                if event_type.endswith("failed")
                else (pb.OUTCOME_DENIED if rng.random() < 0.02 else pb.OUTCOME_SUCCESS),
                "resource_type": resource_type,
                "resource_id": f"{resource_type}-{rng.randrange(10_000)}",
                "source_ip": f"10.{k % 256}.{user}.{rng.randrange(1, 255)}",
            }
