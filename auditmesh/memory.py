"""Giving freed memory back to the operating system after large calls end.

CPython frees a finished call's buffers into glibc's heaps, which keep them: a process that
once held 8 MiB batches for many callers would keep that RSS for good. ``malloc_trim`` returns
the free pages. It costs a few milliseconds on a large heap, so it runs at most once a second,
shortly after calls end, not per call.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util

__all__ = ["trim_soon"]

_DELAY_S = 1.0


def _load_trim() -> ctypes._NamedFuncPointer | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_trim()
_scheduled: set[asyncio.AbstractEventLoop] = set()


def _trim(loop: asyncio.AbstractEventLoop) -> None:
    _scheduled.discard(loop)
    if _malloc_trim is not None:
        _malloc_trim(0)


def trim_soon() -> None:
    """Return free heap memory to the OS about a second from now (once for many calls)."""
    loop = asyncio.get_running_loop()
    if _malloc_trim is None or loop in _scheduled:
        return
    _scheduled.add(loop)
    loop.call_later(_DELAY_S, _trim, loop)
