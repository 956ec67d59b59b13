"""A request ingest forwards, encoded event by event, is the ProcessRequest of the same events."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from auditpb.v1 import audit_pb2 as pb
from services.ingest.forward import Forward

_EVENTS = st.lists(
    st.builds(
        pb.Event,
        event_id=st.text(max_size=40),
        wedding_id=st.text(max_size=20),
        severity=st.sampled_from([pb.P0_CRITICAL, pb.P3_LOW]),
        received_at_us=st.integers(0, 2**63 - 1),
        attributes=st.dictionaries(st.text(max_size=8), st.text(max_size=200), max_size=2),
    ),
    max_size=6,
)


@given(events=_EVENTS, seq=st.integers(0, 2**64 - 1), traceparent=st.text(max_size=60))
@example(events=[pb.Event(event_id="big", attributes={"blob": "x" * 20_000}), pb.Event()], seq=1, traceparent="")
def test_a_forward_parses_as_the_request_holding_its_events(events: list[pb.Event], seq: int, traceparent: str) -> None:
    """Events of any size (past the 16 KiB of the cached length prefixes too), in order, with the
    header fields set after the events were added."""
    forward = Forward(pb.LANE_WEDDING_DAY, events)
    forward.seq = seq
    forward.traceparent = traceparent
    expected = pb.ProcessRequest(seq=seq, lane=pb.LANE_WEDDING_DAY, events=events, traceparent=traceparent)
    assert pb.ProcessRequest.FromString(forward.serialize()) == expected
    assert forward.count == len(events)
    assert forward.size == len(expected.SerializeToString()) - len(
        pb.ProcessRequest(seq=seq, lane=pb.LANE_WEDDING_DAY, traceparent=traceparent).SerializeToString()
    )
    assert forward.received_at_us == (events[0].received_at_us if events else 0)


def test_an_event_changed_after_it_was_added_is_sent_as_it_was() -> None:
    ev = pb.Event(event_id="e1", trace_id="a")
    forward = Forward(pb.LANE_NORMAL, [ev])
    ev.trace_id = "b"
    assert forward.request().events[0].trace_id == "a"
