"""The SDK's one I/O loop per process: every :class:`~auditmesh.client.AuditClient` of a process
runs its batching and streams as tasks on one background event loop, in one daemon thread
(like OpenTelemetry's batch processors and Kafka's producers share one I/O thread).

gRPC's asyncio layer keeps one completion-queue poller per process and hands completions to
the loop each operation was started on; with one loop per client, a client that closed its
loop left the poller delivering to a closed loop, which printed ``RuntimeError: Event loop is
closed`` tracebacks and could lose the completions of the clients still open.

Lifetime: the loop is made on the first client's first use and then **stays up for the whole
process**; closing a client only ends that client's tasks. It is never stopped or closed when
the last client goes, because a later client would need a new loop and gRPC's poller would
still know the old one (the very failure above); an idle loop costs one sleeping thread. At
interpreter exit the clients are closed first (``atexit`` in :mod:`auditmesh.client`), then the
thread, a daemon, simply ends with the process.

Fork: a child does not have the parent's thread, so the loop it inherited can never run there.
The child keeps that loop referenced (never closed, so that no destructor touches the parent's
resources) and makes a loop and thread of its own on its first client use.

The loop uses uvloop when it is installed (the server extra), else asyncio's own loop, so the
SDK alone needs nothing beyond grpcio and protobuf. Code on this loop must never block: one
client's slow ``on_rejected`` callback delays every client of the process.
"""

from __future__ import annotations

import asyncio
import os
import threading

__all__ = ["get_loop", "in_loop_thread"]

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
# Loops a forked child inherited: kept referenced and never used or closed.
_inherited: list[object] = []


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # the SDK alone (no server extra): plain asyncio
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's SDK loop, running in its thread; made and started on the first call."""
    global _loop, _thread
    loop = _loop
    if loop is not None:
        return loop
    with _lock:
        if _loop is None:
            loop = _new_loop()
            ready = threading.Event()
            thread = threading.Thread(target=_run, args=(loop, ready), name="auditmesh-sdk", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def in_loop_thread() -> bool:
    """Whether the caller runs on the SDK loop's thread (where waiting for the loop deadlocks)."""
    return _thread is not None and threading.current_thread() is _thread


def _after_fork_in_child() -> None:
    global _lock, _loop, _thread
    if _loop is not None:
        _inherited.append((_loop, _thread))
    _lock = threading.Lock()  # another thread may have held it during the fork
    _loop = _thread = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
