"""auditmesh budget and the waterfall, fed spans written as the services write them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditmesh.cli import main
from auditmesh.telemetry.budget import check, span_budget
from auditmesh.telemetry.spans import SpanRecord, read_jsonl, waterfall

T0 = 1_800_000_000_000_000


def span(name: str, span_id: str, parent: str, start: int, duration: int, **attributes: object) -> dict[str, object]:
    return {
        "trace_id": "ab" * 16,
        "span_id": span_id.rjust(16, "0"),
        "parent_id": parent.rjust(16, "0") if parent else "",
        "name": name,
        "service": "auditmesh-test",
        "start_us": T0 + start,
        "duration_us": duration,
        "attributes": attributes,
    }


def one_batch(write_us: int, lane: str = "critical") -> list[dict[str, object]]:
    """The spans of one critical batch through the mesh, with a store write of ``write_us``."""
    return [
        span("sdk.batch", "1", "", 0, 9_000, **{"auditmesh.lane": lane, "auditmesh.log_max_us": 40}),
        span("ingest.batch", "2", "1", 1_000, 7_000, **{"auditmesh.lane": lane}),
        span("ingest.handle", "3", "2", 1_000, 80),
        span("ingest.forward", "4", "2", 1_100, 400 + write_us, **{"auditmesh.lane": lane}),
        span("processor.request", "5", "4", 1_300, 200 + write_us, **{"auditmesh.lane": lane}),
        span("store.write", "6", "5", 1_350, write_us, **{"auditmesh.lane": lane}),
        span("cache.bump", "7", "5", 1_350 + write_us, 50),
    ]


def write(path: Path, spans: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    return path


def test_every_stage_is_measured_from_the_spans(tmp_path: Path) -> None:
    """Stages come from the right spans: handling, critical lane, transit, write, ack, caller."""
    spans = read_jsonl(write(tmp_path / "s.jsonl", one_batch(300)))
    results = {r.stage: r for r in check(spans) if not r.wedding_day}
    assert results["caller overhead"].samples_us == [40]
    assert results["ingest handling"].samples_us == [80]
    assert results["critical-lane handling"].samples_us == [700]
    assert results["transit"].samples_us == [200]
    assert results["storage write"].samples_us == [300]
    assert results["ack"].samples_us == [8_000 - 1_800]
    assert results["query"].samples_us == []


@pytest.mark.parametrize(("write_us", "status"), [(300, 1), (100, 0), (6_000, 1)])
def test_budget_exits_non_zero_on_a_violation(tmp_path: Path, write_us: int, status: int) -> None:
    """A batch within every budget exits 0; a critical lane over 500 us or a write over 5 ms
    exits 1."""
    path = write(tmp_path / "s.jsonl", one_batch(write_us))
    assert main(["budget", "--spans", str(path), "--since", "0"]) == status


def test_wedding_day_spans_are_held_to_stricter_budgets(tmp_path: Path) -> None:
    """A 3 ms write passes the 5 ms budget, but not the wedding-day one (half of it)."""
    spans = read_jsonl(write(tmp_path / "s.jsonl", one_batch(3_000, lane="wedding_day")))
    rows = {(r.stage, r.wedding_day): r for r in check(spans)}
    assert rows[("storage write", True)].budget_us == 2_500
    assert rows[("storage write", True)].violated


def test_nothing_to_check_is_its_own_exit_status(tmp_path: Path) -> None:
    """A window without spans of a budgeted stage is exit 2, not a pass."""
    path = write(tmp_path / "s.jsonl", [span("cache.bump", "7", "", 0, 50)])
    assert main(["budget", "--spans", str(path), "--since", "0"]) == 2


def test_a_waterfall_shows_every_span_nested_and_marks_breaches(tmp_path: Path) -> None:
    """Children are indented under their parents, and a write over budget is marked."""
    spans = [SpanRecord.from_dict(s) for s in one_batch(6_000)]
    text = waterfall(spans, span_budget)
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [
        "sdk.batch", "ingest.batch", "ingest.handle", "ingest.forward", "processor.request", "store.write",
        "cache.bump",
    ]  # fmt: skip
    assert next(line for line in lines if "store.write" in line).endswith("OVER BUDGET")
    assert "OVER BUDGET" not in next(line for line in lines if "cache.bump" in line)
    assert next(line for line in lines if "store.write" in line).startswith(" " * 8 + "store.write")
