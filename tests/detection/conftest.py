"""Helpers of the detection tests: events, the repository's rule pack, and a clean Redis database
of this run's slot for correlation state."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from auditmesh.detection.alerts import alert_of_firing, alert_of_hit
from auditmesh.detection.evaluator import evaluate
from auditmesh.detection.fields import RoleDirectory
from auditmesh.detection.rules import RuleSet, load_rules
from auditmesh.detection.state import CorrelationState
from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import slot_redis_url

PACK = Path(__file__).resolve().parents[2] / "rules"
STATE_URL = slot_redis_url(13)
_ids = itertools.count()


def event(event_type: str, *, at_ms: int | None = None, **fields: object) -> pb.Event:
    """An event as ingest passes it on; ``attributes`` as a dict, other fields by name."""
    ms = int(time.time() * 1000) if at_ms is None else at_ms
    attributes = fields.pop("attributes", {})
    ev = pb.Event(
        event_id=f"ev-{next(_ids)}",
        event_type=event_type,
        severity=fields.pop("severity", pb.P2_MEDIUM),  # type: ignore[arg-type]
        outcome=fields.pop("outcome", pb.OUTCOME_SUCCESS),  # type: ignore[arg-type]
        received_at_us=ms * 1000,
        attributes=attributes,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )
    ev.occurred_at.FromMilliseconds(ms)
    return ev


@pytest.fixture(scope="session")
def pack() -> RuleSet:
    return load_rules(PACK)


@pytest.fixture
def state_db(infrastructure: None) -> Iterator[str]:
    r = redis.Redis.from_url(STATE_URL)
    r.flushdb()
    yield STATE_URL
    r.flushdb()
    r.close()


class Roles:
    def __init__(self, relation: dict[str, set[str]]) -> None:
        self.relation = relation

    def has_role(self, wedding_id: str, organization_id: str) -> bool | None:
        orgs = self.relation.get(wedding_id)
        return None if orgs is None else organization_id in orgs


def run(rules: RuleSet, batches: list[list[pb.Event]], url: str, roles: RoleDirectory | None = None) -> list[apb.Alert]:
    """Evaluate batch after batch as a processor does (evaluator, then shared state in Redis);
    every alert raised or updated, in order."""

    async def go() -> list[apb.Alert]:
        client = aioredis.Redis.from_url(url)
        state = CorrelationState(client)
        out: list[apb.Alert] = []
        try:
            for batch in batches:
                now = int(time.time() * 1000)
                result = evaluate(rules, batch, roles)
                out += [alert_of_hit(h, now) for h in result.hits]
                out += [alert_of_firing(f, now) for f in await state.apply(list(result.updates.values()), now)]
        finally:
            await client.aclose()
        return out

    return asyncio.run(go())
