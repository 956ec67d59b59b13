"""``auditmesh top`` in a real terminal (tmux) against a real mesh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditmesh.client import AuditClient
from auditmesh.mesh import MeshLayout
from auditpb.v1 import audit_pb2 as pb
from tests.conftest import TEST_SLOT, assert_eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tmux() -> Iterator[list[str]]:
    """tmux on a socket of this test's own (installed from Debian when missing); its server is
    ended afterwards."""
    if shutil.which("tmux") is None:
        subprocess.run("apt-get update -qq && apt-get install -y -qq tmux", shell=True, check=True)
    command = ["tmux", "-L", f"auditmesh-top-{TEST_SLOT}-{os.getpid()}", "-f", "/dev/null"]
    yield command
    subprocess.run([*command, "kill-server"], capture_output=True)


def _pane(tmux: list[str], colours: bool = False) -> str:
    out = subprocess.run(
        [*tmux, "capture-pane", "-p", *(["-e"] if colours else []), "-t", "top"], capture_output=True, text=True
    )
    return out.stdout


def _rate(screen: str, service: str, lane: str) -> int | None:
    match = re.search(rf"^{re.escape(service)}\s+{lane}\s+([\d,]+)\s", screen, re.MULTILINE)
    return int(match.group(1).replace(",", "")) if match else None


_SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _foregrounds(screen: str) -> dict[str, int | None]:
    """Each text line of a ``capture-pane -e`` screen and the foreground colour (SGR 30-37, None for
    the default) its text starts in. tmux emits an attribute only where it changes, so the colour in
    force carries over from the lines above."""
    colour: int | None = None
    out: dict[str, int | None] = {}
    for line in screen.splitlines():
        first: tuple[int | None] | None = None  # (colour,) once the line's text has started
        pieces = _SGR.split(line)  # text, codes, text, codes, ..., text
        for i, piece in enumerate(pieces):
            if i % 2:
                for code in (int(c) for c in (piece or "0").split(";") if c):
                    colour = None if code in (0, 39) else code if 30 <= code <= 37 else colour
            elif piece.strip() and first is None:
                first = (colour,)
        text = "".join(pieces[::2])
        if first is not None:
            out[text] = first[0]
    return out


class _Load:
    """A thread logging a steady trickle of normal events (every tenth P0) until stopped."""

    def __init__(self, target: str, rate: float = 300.0) -> None:
        self.client = AuditClient(target, source_service="top-test", linger_ms=10)
        self.rate = rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.wedding = f"top-{uuid.uuid4().hex[:8]}"

    def _run(self) -> None:
        started, n = time.monotonic(), 0
        while not self.stop.is_set():
            if n >= (time.monotonic() - started) * self.rate:
                time.sleep(0.005)
                continue
            severity = pb.P0_CRITICAL if n % 10 == 0 else pb.P2_MEDIUM
            self.client.log("guestlist.viewed", user_id="u-top", wedding_id=self.wedding, severity=severity)
            n += 1

    def end(self) -> None:
        self.stop.set()
        self.thread.join()
        assert self.client.flush(30)
        self.client.close(10)


def test_top_shows_every_service_and_a_live_rate_and_quits_on_q(mesh: MeshLayout, tmux: list[str]) -> None:
    """In a real terminal, top shows a row per service and lane, ingest's events/s rises while
    events flow and falls back to 0 when they stop, p99s are coloured against their budgets,
    and q ends it with status 0."""
    env = {
        "AUDITMESH_INGEST_PORT": str(mesh.ingest_port),
        "AUDITMESH_PROCESSOR_BASE_PORT": str(mesh.processor_base_port),
        "AUDITMESH_PROCESSOR_COUNT": str(mesh.processors),
        "AUDITMESH_QUERY_PORT": str(mesh.query_port),
        "AUDITMESH_METRICS_PORT_OFFSET": str(mesh.metrics_port_offset),
    }
    assignments = " ".join(f"{k}={v}" for k, v in env.items())
    shell = f"{assignments} {sys.executable} -m auditmesh.cli top; echo top-exited-$?; sleep 120"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "top", "-x", "140", "-y", "40", "-c", str(ROOT), shell], check=True
    )
    rows = [f"{name} " for name in ("ingest", "query", "monitor", *(f"processor-{i}" for i in range(mesh.processors)))]
    assert_eventually(lambda: all(row in _pane(tmux) for row in rows) and "EVENTS/S" in _pane(tmux), timeout=20)
    lanes = [("ingest", lane) for lane in ("critical", "wedding_day", "normal")]
    lanes += [(f"processor-{i}", lane) for i in range(mesh.processors) for lane in ("critical", "bulk")]
    lanes += [("query", "alerts")]  # the live alert feed: received a second (0 with no rules)

    def every_lane_has_a_rate() -> None:
        screen = _pane(tmux)
        assert [row for row in lanes if _rate(screen, *row) is None] == [], screen

    assert_eventually(every_lane_has_a_rate, timeout=20)
    assert_eventually(lambda: _rate(_pane(tmux), "ingest", "normal") == 0, timeout=20)

    load = _Load(mesh.ingest_target)
    load.thread.start()
    try:
        assert_eventually(lambda: (_rate(_pane(tmux), "ingest", "normal") or 0) >= 50, timeout=20)
        assert_eventually(lambda: (_rate(_pane(tmux), "ingest", "critical") or 0) >= 5, timeout=20)

        # A p99 with a budget is drawn green (within) or red (over). Which processor wrote in the last
        # interval is the router's choice, so any processor's bulk row will do.
        def a_bulk_p99_is_coloured() -> None:
            colours = _foregrounds(_pane(tmux, colours=True))
            bulk = {
                line.split()[0]: colour for line, colour in colours.items() if re.match(r"processor-\d+\s+bulk", line)
            }
            assert bulk and any(colour in (31, 32) for colour in bulk.values()), colours

        assert_eventually(a_bulk_p99_is_coloured, timeout=30)
    finally:
        load.end()
    assert_eventually(lambda: _rate(_pane(tmux), "ingest", "normal") == 0, timeout=20)

    subprocess.run([*tmux, "send-keys", "-t", "top", "q"], check=True)
    assert_eventually(lambda: "top-exited-0" in _pane(tmux), timeout=10)
