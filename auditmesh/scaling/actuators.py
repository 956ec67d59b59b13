"""Actuators: what turns the scaler's target into running processors.

- :class:`LocalActuator` starts and stops processor processes on this machine through the
  supervisor (:mod:`auditmesh.supervisor`) with the mesh's own process definitions
  (:class:`auditmesh.mesh.MeshLayout`). Scale-down stops the highest-numbered processor with
  SIGTERM, which drains it (deregisters, finishes and acks what it holds, exits).
- :class:`KedaActuator` does nothing itself: KEDA reads the target through the external scaler
  contract and sets the Deployment's replicas; the current count is the live membership.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Protocol

from auditmesh.mesh import MeshLayout
from auditmesh.supervisor import Supervisor

__all__ = ["Actuator", "KedaActuator", "LocalActuator"]

log = logging.getLogger("auditmesh.scaling")
_PROCESSOR = re.compile(r"processor-(\d+)")


class Actuator(Protocol):
    name: str

    def replicas(self) -> int:
        """Processors running now (those draining not counted)."""
        ...

    async def scale_to(self, target: int) -> None: ...

    async def close(self) -> None: ...


class LocalActuator:
    name = "local"

    def __init__(self, layout: MeshLayout, supervisor: Supervisor) -> None:
        self._layout = layout
        self._supervisor = supervisor
        self._draining: dict[int, asyncio.Task[None]] = {}

    def running(self) -> list[int]:
        """Indexes of the processor processes alive, not draining."""
        out = []
        for name in self._supervisor.names():
            match = _PROCESSOR.fullmatch(name)
            if match and int(match.group(1)) not in self._draining and self._supervisor.pid(name) is not None:
                out.append(int(match.group(1)))
        return sorted(out)

    def replicas(self) -> int:
        return len(self.running())

    async def scale_to(self, target: int) -> None:
        running = self.running()
        if target > len(running):
            free = (i for i in range(10_000) if i not in running and i not in self._draining)
            for _ in range(target - len(running)):
                index = next(free)
                proc = self._layout.processor(index)
                pid = await asyncio.to_thread(self._supervisor.start, proc)
                log.info("started %s (pid %d) on %s", proc.name, pid, proc.target)
        for index in sorted(running, reverse=True)[: max(len(running) - target, 0)]:
            self._draining[index] = asyncio.create_task(self._drain(index))

    async def _drain(self, index: int) -> None:
        name = self._layout.processor(index).name
        try:
            log.info("draining %s", name)
            await asyncio.to_thread(self._supervisor.stop, name, 60.0)
            log.info("stopped %s", name)
        finally:
            self._draining.pop(index, None)

    async def close(self) -> None:
        """Wait for drains under way; processors keep running (``auditmesh down`` stops them)."""
        await asyncio.gather(*self._draining.values(), return_exceptions=True)


class KedaActuator:
    """The target is what KEDA reads; the replica count the policy starts from is the last
    target (the Deployment converges to it), or the live membership before the first one."""

    name = "keda"

    def __init__(self, live: Callable[[], int]) -> None:
        self._live = live
        self.target: int | None = None

    def replicas(self) -> int:
        return self.target if self.target is not None else self._live()

    async def scale_to(self, target: int) -> None:
        self.target = target

    async def close(self) -> None:
        return None
