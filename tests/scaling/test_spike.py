"""The spike test: the real services, Cassandra and Redis, one processor under a steady low
load; the load steps up, the scaler starts processors and ingest routes to them; the load drops,
they are drained and stopped after the cool-down; every acknowledged event is stored exactly
once. Writes the run's timeline (docs/scaling-spike.json) and its chart (docs/scaling-spike.png)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from auditmesh.config import StoreConfig
from auditmesh.mesh import MeshLayout
from auditpb.v1 import scaler_pb2 as spb
from tests.scaling.conftest import scaler_status, scaling_mesh
from tests.scaling.load import StepLoad, stored_counts

DOCS = Path(__file__).resolve().parents[2] / "docs"
CAPACITY = 150
"""Events/s one processor is planned to carry in this test: small, so that a load this shared
two-core host carries easily still needs three processors."""
LOW, HIGH, AFTER = 60, 420, 30
SCALER_ENV = {
    "AUDITMESH_SCALER_MIN_REPLICAS": "1",
    "AUDITMESH_SCALER_MAX_REPLICAS": "3",
    "AUDITMESH_SCALER_EVENTS_PER_PROCESSOR": str(CAPACITY),
    # The test drives the scaler by load alone: a latency spike of a host shared with other test
    # runs must not scale the low phase (the latency rule has its own unit tests).
    "AUDITMESH_SCALER_PROCESSING_P99_MS": "100000",
    # Nor may the calendar: other tests put weddings of today into the shared test keyspace, and
    # the forecast would raise the floor (the forecast has its own tests).
    "AUDITMESH_SCALER_WEDDING_FACTOR": "0",
    "AUDITMESH_SCALER_SEASON_FACTOR": "1",
    "AUDITMESH_SCALER_WEEKEND_FACTOR": "1",
    "AUDITMESH_SCALER_UP_AFTER": "2",
    "AUDITMESH_SCALER_UP_COOLDOWN_S": "3",
    "AUDITMESH_SCALER_DOWN_AFTER": "3",
    "AUDITMESH_SCALER_DOWN_COOLDOWN_S": "10",
}


def sample(layout: MeshLayout, started: float, load: StepLoad) -> dict[str, Any]:
    status = scaler_status(layout)
    return {
        "t": round(time.monotonic() - started, 2),
        "load_ev_s": load.rate,
        "events_in_per_s": round(status.events_in_per_s, 1),
        "queue_depth": status.queue_depth,
        "processing_p99_ms": round(status.processing_p99_us / 1000, 2),
        "write_p99_ms": round(status.write_p99_us / 1000, 2),
        "replicas": status.current,
        "target": status.target,
        "written": {m.address: m.events_total for m in status.members if m.service == "processor"},
        "_decisions": list(status.decisions),
    }


def chart(timeline: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = timeline["samples"]
    t = [s["t"] for s in samples]
    fig, (top, mid, bottom) = plt.subplots(3, 1, sharex=True, figsize=(9, 7))
    top.plot(t, [s["load_ev_s"] for s in samples], label="offered load (ev/s)", color="grey", linestyle="--")
    top.plot(t, [s["events_in_per_s"] for s in samples], label="ingest events in (ev/s)")
    top.set_ylabel("events/s")
    top.legend(loc="upper right")
    mid.plot(t, [s["queue_depth"] for s in samples], label="events in flight (ingest)", color="tab:orange")
    mid.plot(t, [s["processing_p99_ms"] for s in samples], label="processing p99 (ms)", color="tab:red")
    mid.legend(loc="upper right")
    bottom.step(t, [s["replicas"] for s in samples], where="post", label="processors running")
    bottom.step(t, [s["target"] for s in samples], where="post", label="scaler target", linestyle=":")
    bottom.set_ylabel("processors")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper right")
    for decision in timeline["decisions"]:
        for ax in (top, mid, bottom):
            ax.axvline(
                decision["t"], color="green" if decision["target"] > decision["current"] else "purple", alpha=0.4
            )
    marks = timeline["marks"]
    for name in ("step_up", "step_down"):
        top.axvline(marks[name], color="black", linewidth=0.8)
    fig.suptitle(
        f"Spike: step to first write by a new processor {marks['first_new_write'] - marks['step_up']:.1f} s; "
        f"{timeline['events']['acked']:,} events acked, stored exactly once"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@pytest.mark.slow
def test_a_load_spike_scales_processors_out_and_back_in_without_losing_an_event(
    store_config: StoreConfig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A step from 60 to 420 ev/s (150 ev/s per processor planned) brings new processors that are
    written to within 30 s of the step; when the load drops they are drained after the cool-down;
    every acknowledged event is found exactly once through Search."""
    with scaling_mesh(tmp_path_factory, "spike", 27051, env=SCALER_ENV) as (layout, supervisor):
        load = StepLoad(layout.ingest_target, rate=LOW, weddings=6).start()
        started, started_wall = time.monotonic(), time.time()
        samples: list[dict[str, Any]] = []
        marks: dict[str, float] = {}
        # The scaler stamps its decisions with the wall clock, which a host may step while the test
        # runs (a step of ~20 s was seen once): decisions are compared with wall-clock marks.
        walls: dict[str, float] = {}
        first_processor = layout.processor(0).target

        def until(seconds: float, stop: Any = None) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                samples.append(sample(layout, started, load))
                if stop is not None and stop(samples[-1]):
                    return
                time.sleep(0.5)

        try:
            until(8)
            assert {s["replicas"] for s in samples} == {1}, "the low load alone must not scale"
            marks["step_up"] = time.monotonic() - started
            load.rate = HIGH
            until(45, stop=lambda s: any(n > 0 for a, n in s["written"].items() if a != first_processor))
            new_writes = [s for s in samples if any(n > 0 for a, n in s["written"].items() if a != first_processor)]
            assert new_writes, "no new processor was written to within 45 s of the step"
            marks["first_new_write"] = new_writes[0]["t"]
            until(15)  # the high load carried by the grown mesh
            peak = max(s["replicas"] for s in samples)
            marks["step_down"] = time.monotonic() - started
            walls["step_down"] = time.time()
            load.rate = AFTER
            until(90, stop=lambda s: s["replicas"] == 1 and s["t"] - marks["step_down"] > 5)
            until(3)
        finally:
            load.stop()
        counts = stored_counts(layout, load.wedding_ids)
        scaler_log = supervisor.log_file("scaler").read_text()
    decisions: list[spb.Decision] = samples[-1]["_decisions"]
    changes = [
        {
            "t": round(d.at_us / 1e6 - started_wall, 2),
            "at": d.at_us / 1e6,
            "rule": d.rule,
            "current": d.current,
            "target": d.target,
            "reason": d.reason,
            "inputs": dict(d.inputs),
        }
        for d in decisions
        if d.target != d.current
    ]
    for s in samples:
        del s["_decisions"]
    reaction = marks["first_new_write"] - marks["step_up"]
    timeline = {
        "test": "tests/scaling/test_spike.py",
        "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "config": SCALER_ENV,
        "loads_ev_s": {"low": LOW, "high": HIGH, "after": AFTER},
        "marks": {k: round(v, 2) for k, v in marks.items()},
        "step_to_first_new_write_s": round(reaction, 2),
        "peak_replicas": peak,
        "events": {"acked": len(load.logged), "found": len(counts), "duplicates": sum(n - 1 for n in counts.values())},
        "decisions": changes,
        "samples": samples,
    }
    assert set(counts) == set(load.logged), "an acknowledged event is missing"
    assert max(counts.values()) == 1, "an event is stored twice"
    assert peak >= 2, timeline["decisions"]
    assert reaction < 30, f"{reaction:.1f}s from the step to the first write by a new processor"
    assert samples[-1]["replicas"] == 1, "the processors were not drained after the load dropped"
    ups = [c for c in changes if c["target"] > c["current"]]
    downs = [c for c in changes if c["target"] < c["current"]]
    assert ups and ups[0]["rule"] == "reactive-up" and "ev/s >" in ups[0]["reason"]
    assert downs and all(c["rule"] == "reactive-down" for c in downs)
    assert downs[0]["at"] >= walls["step_down"], (downs[0], walls)
    assert "draining processor-" in scaler_log and "stopped processor-" in scaler_log
    (DOCS / "scaling-spike.json").write_text(json.dumps(timeline, indent=1) + "\n")
    chart(timeline, DOCS / "scaling-spike.png")
