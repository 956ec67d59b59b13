"""The local mesh: which service processes run, on which ports, with which settings.

One definition serves ``auditmesh up``, the end-to-end and fault tests and the benchmarks,
so they all run the same processes the same way.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from auditmesh.config import Env
from auditmesh.supervisor import ServiceProcess, Supervisor, health_of, wait_healthy

__all__ = ["INFRA_SCRIPT", "JAEGER_SCRIPT", "MeshLayout", "infra"]

INFRA_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "local" / "infra.sh"
JAEGER_SCRIPT = INFRA_SCRIPT.with_name("jaeger.sh")


def infra(command: str, env: Mapping[str, str] | None = None) -> None:
    """Run ``deploy/local/infra.sh <command>`` (up, down, status, stop-cassandra, ...)."""
    subprocess.run([str(INFRA_SCRIPT), command], check=True, env=None if env is None else dict(env))


@dataclass(frozen=True)
class MeshLayout:
    ingest_port: int = 50051
    """AUDITMESH_INGEST_PORT"""
    processor_base_port: int = 50061
    """First processor port; processor i listens on base + i (AUDITMESH_PROCESSOR_BASE_PORT)."""
    processors: int = 2
    """Processor processes (AUDITMESH_PROCESSOR_COUNT)."""
    query_port: int = 50071
    """AUDITMESH_QUERY_PORT"""
    keyspace: str = "auditmesh"
    """AUDITMESH_KEYSPACE"""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Settings passed to every service (store, limits, cache)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MeshLayout:
        e = Env(env)
        passed = {k: v for k, v in env.items() if k.startswith(("AUDITMESH_", "OTEL_"))}
        return cls(
            ingest_port=e.integer("AUDITMESH_INGEST_PORT", cls.ingest_port, minimum=1),
            processor_base_port=e.integer("AUDITMESH_PROCESSOR_BASE_PORT", cls.processor_base_port, minimum=1),
            processors=e.integer("AUDITMESH_PROCESSOR_COUNT", cls.processors, minimum=1),
            query_port=e.integer("AUDITMESH_QUERY_PORT", cls.query_port, minimum=1),
            keyspace=e.text("AUDITMESH_KEYSPACE", cls.keyspace),
            extra_env=passed,
        )

    @property
    def ingest_target(self) -> str:
        return f"127.0.0.1:{self.ingest_port}"

    @property
    def query_target(self) -> str:
        return f"127.0.0.1:{self.query_port}"

    def processor(self, index: int) -> ServiceProcess:
        port = self.processor_base_port + index
        return ServiceProcess(
            f"processor-{index}",
            "services.processor",
            port,
            {**self.extra_env, "AUDITMESH_KEYSPACE": self.keyspace, "AUDITMESH_PROCESSOR_PORT": str(port)},
        )

    def ingest(self) -> ServiceProcess:
        targets = ",".join(f"127.0.0.1:{self.processor_base_port + i}" for i in range(self.processors))
        return ServiceProcess(
            "ingest",
            "services.ingest",
            self.ingest_port,
            {
                **self.extra_env,
                "AUDITMESH_KEYSPACE": self.keyspace,
                "AUDITMESH_INGEST_PORT": str(self.ingest_port),
                "AUDITMESH_PROCESSORS": targets,
            },
        )

    def query(self) -> ServiceProcess:
        return ServiceProcess(
            "query",
            "services.query",
            self.query_port,
            {**self.extra_env, "AUDITMESH_KEYSPACE": self.keyspace, "AUDITMESH_QUERY_PORT": str(self.query_port)},
        )

    def services(self) -> list[ServiceProcess]:
        return [*(self.processor(i) for i in range(self.processors)), self.ingest(), self.query()]

    def start(self, supervisor: Supervisor, timeout: float = 60.0) -> None:
        """Start every service that is not running and wait until all report SERVING."""
        for proc in self.services():
            supervisor.start(proc)
        for proc in self.services():
            wait_healthy(proc.target, timeout, supervisor.log_file(proc.name))

    def stop(self, supervisor: Supervisor) -> None:
        """Stop ingest first (it drains into the processors), then processors and query."""
        order = [self.ingest(), self.query(), *(self.processor(i) for i in range(self.processors))]
        for proc in order:
            supervisor.stop(proc.name)

    def health(self) -> dict[str, str]:
        return {proc.name: health_of(proc.target) for proc in self.services()}
