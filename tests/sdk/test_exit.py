"""The tail at interpreter exit: a process that logs and ends without close() still delivers
what it logged, and one whose ingest is unreachable still ends, after ``exit_timeout``."""

from __future__ import annotations

import time

from conftest import Mesh, RunPython, Search


def test_events_logged_just_before_exit_are_delivered(
    sdk_mesh: Mesh, search: Search, run_python: RunPython, wedding: str
) -> None:
    """A script logs 700 events (a full batch and a partial one held by a 10 s linger) and
    ends without flush or close: all 700 are stored, once."""
    code = (
        "from auditmesh import AuditClient\n"
        f"client = AuditClient({sdk_mesh.ingest!r}, linger_ms=10_000)\n"
        "ids = [client.log('auth.login.succeeded', user_id='u-1', wedding_id="
        f"{wedding!r}, attributes={{'seq': str(i)}}) for i in range(700)]\n"
        "print('\\n'.join(ids))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    logged = out.stdout.split()
    assert len(logged) == 700
    assert sorted(ev.event_id for ev in search(wedding)) == sorted(logged)


def test_exit_waits_at_most_exit_timeout_when_ingest_is_unreachable(run_python: RunPython) -> None:
    """With nothing listening at the target, a script that logs 10 events ends about
    ``exit_timeout`` (1 s) after its last line, saying that the 10 events are lost, instead of
    waiting for acknowledgements that cannot come."""
    code = (
        "import logging\n"
        "logging.basicConfig()\n"
        "from auditmesh import AuditClient\n"
        "client = AuditClient('127.0.0.1:9', exit_timeout=1.0)\n"
        "for i in range(10):\n"
        "    client.log('auth.login.succeeded', user_id='u-1')\n"
    )
    started = time.monotonic()
    out = run_python(code, timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert "10 events unacknowledged" in out.stderr
    assert 1.0 <= took < 15, f"the process took {took:.1f}s to end with a 1 s exit_timeout"
