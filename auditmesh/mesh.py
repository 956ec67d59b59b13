"""The local mesh: which service processes run, on which ports, with which settings.

One definition serves ``auditmesh up``, the end-to-end and fault tests and the benchmarks,
so they all run the same processes the same way.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

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
    ingest_replicas: int = 1
    """Ingest processes (AUDITMESH_INGEST_REPLICAS); replica i listens on ingest_port + i * replica_port_step."""
    query_replicas: int = 1
    """Query processes (AUDITMESH_QUERY_REPLICAS); replica i listens on query_port + i * replica_port_step."""
    replica_port_step: int = 100
    """Ports between two replicas of a service (AUDITMESH_REPLICA_PORT_STEP)."""
    keyspace: str = "auditmesh"
    """AUDITMESH_KEYSPACE"""
    metrics_port_offset: int = -40
    """Each service's Prometheus endpoint listens on its own port plus this: ingest 50011,
    processor i 50021 + i, query 50031, monitor 50041. Ports 40 below a mesh's service ports are
    used by nothing else, so meshes on other service ports (the tests') never share one. 0 turns
    the endpoints off (AUDITMESH_METRICS_PORT_OFFSET)."""
    monitor: bool = True
    """Run the performance monitor (AUDITMESH_MONITOR; 0 leaves it out)."""
    monitor_port: int = 0
    """The monitor's port (health checks); 0 means the query port + 10 (AUDITMESH_MONITOR_PORT)."""
    scaler: bool = False
    """Run the scaler (AUDITMESH_SCALER; ``auditmesh up`` runs it unless 0). With it, processors
    register in Redis and ingest links to whoever is registered instead of a static list, and the
    scaler starts and stops processors from ``processors`` (the initial count) up to its maximum."""
    scaler_port: int = 0
    """The scaler's port; 0 means the query port + 15 (50086; its metrics 50046) (AUDITMESH_SCALER_PORT)."""
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
            ingest_replicas=e.integer("AUDITMESH_INGEST_REPLICAS", cls.ingest_replicas, minimum=1),
            query_replicas=e.integer("AUDITMESH_QUERY_REPLICAS", cls.query_replicas, minimum=1),
            replica_port_step=e.integer("AUDITMESH_REPLICA_PORT_STEP", cls.replica_port_step, minimum=1),
            keyspace=e.text("AUDITMESH_KEYSPACE", cls.keyspace),
            metrics_port_offset=e.integer("AUDITMESH_METRICS_PORT_OFFSET", cls.metrics_port_offset, minimum=-65535),
            monitor=e.text("AUDITMESH_MONITOR", "1") != "0",
            monitor_port=e.integer("AUDITMESH_MONITOR_PORT", cls.monitor_port),
            scaler=e.text("AUDITMESH_SCALER", "1") != "0",
            scaler_port=e.integer("AUDITMESH_SCALER_PORT", cls.scaler_port),
            extra_env=passed,
        )

    @property
    def ingest_target(self) -> str:
        return f"127.0.0.1:{self.ingest_port}"

    @property
    def query_target(self) -> str:
        return f"127.0.0.1:{self.query_port}"

    @property
    def ingest_targets(self) -> list[str]:
        """``host:port`` of every ingest replica (what an ``AuditClient`` fails over between)."""
        return [f"127.0.0.1:{self.ingest_port + i * self.replica_port_step}" for i in range(self.ingest_replicas)]

    @property
    def query_targets(self) -> list[str]:
        """``host:port`` of every query replica."""
        return [f"127.0.0.1:{self.query_port + i * self.replica_port_step}" for i in range(self.query_replicas)]

    def metrics_port(self, port: int) -> int:
        """The metrics port of the service on ``port``; 0 when metrics are off."""
        return port + self.metrics_port_offset if self.metrics_port_offset else 0

    def metrics_targets(self, *, monitor: bool = True) -> dict[str, str]:
        """``host:port`` of every service's metrics endpoint, by service name."""
        if not self.metrics_port_offset:
            return {}
        procs = [*self._core(), self.performance_monitor()] if monitor and self.monitor else self._core()
        return {proc.name: f"127.0.0.1:{self.metrics_port(proc.port)}" for proc in procs}

    def processor(self, index: int) -> ServiceProcess:
        port = self.processor_base_port + index
        return ServiceProcess(
            f"processor-{index}",
            "services.processor",
            port,
            {
                **self.extra_env,
                "AUDITMESH_KEYSPACE": self.keyspace,
                "AUDITMESH_PROCESSOR_PORT": str(port),
                "AUDITMESH_PROCESSOR_METRICS_PORT": str(self.metrics_port(port)),
                **self._scaling_env(),
            },
        )

    def ingest(self, replica: int = 0) -> ServiceProcess:
        """Ingest replica ``replica`` ("ingest", then "ingest-1", ...); each routes to every processor."""
        targets = ",".join(f"127.0.0.1:{self.processor_base_port + i}" for i in range(self.processors))
        # With the scaler, ingest follows membership; AUDITMESH_PROCESSORS given by the caller
        # (extra_env) stays a static override.
        routing = self._scaling_env() if self.scaler else {"AUDITMESH_PROCESSORS": targets}
        port = self.ingest_port + replica * self.replica_port_step
        return ServiceProcess(
            f"ingest-{replica}" if replica else "ingest",
            "services.ingest",
            port,
            {
                **self.extra_env,
                "AUDITMESH_KEYSPACE": self.keyspace,
                "AUDITMESH_INGEST_PORT": str(port),
                "AUDITMESH_INGEST_METRICS_PORT": str(self.metrics_port(port)),
                **routing,
            },
        )

    @property
    def membership_prefix(self) -> str:
        """Prefix of the Redis keys where this mesh's processors register."""
        return f"am:members:{self.ingest_port}"

    @property
    def scaler_target(self) -> str:
        return f"127.0.0.1:{self.scaler_port or self.query_port + 15}"

    def _scaling_env(self) -> dict[str, str]:
        if not self.scaler:
            return {}
        return {"AUDITMESH_MEMBERSHIP_PREFIX": self.membership_prefix, "AUDITMESH_SCALER_TARGET": self.scaler_target}

    def scaling(self) -> ServiceProcess:
        """The scaler, with what it needs to start processors like this layout's."""
        port = self.scaler_port or self.query_port + 15
        return ServiceProcess(
            "scaler",
            "services.scaler",
            port,
            {
                **self.extra_env,
                "AUDITMESH_SCALER": "1",
                "AUDITMESH_KEYSPACE": self.keyspace,
                "AUDITMESH_INGEST_PORT": str(self.ingest_port),
                "AUDITMESH_QUERY_PORT": str(self.query_port),
                "AUDITMESH_PROCESSOR_BASE_PORT": str(self.processor_base_port),
                "AUDITMESH_PROCESSOR_COUNT": str(self.processors),
                "AUDITMESH_METRICS_PORT_OFFSET": str(self.metrics_port_offset),
                "AUDITMESH_MEMBERSHIP_PREFIX": self.membership_prefix,
                "AUDITMESH_SCALER_PORT": str(port),
                "AUDITMESH_SCALER_METRICS_PORT": str(self.metrics_port(port)),
            },
        )

    def query(self, replica: int = 0) -> ServiceProcess:
        """Query replica ``replica`` ("query", then "query-1", ...)."""
        port = self.query_port + replica * self.replica_port_step
        return ServiceProcess(
            f"query-{replica}" if replica else "query",
            "services.query",
            port,
            {
                **self.extra_env,
                "AUDITMESH_KEYSPACE": self.keyspace,
                "AUDITMESH_QUERY_PORT": str(port),
                "AUDITMESH_QUERY_METRICS_PORT": str(self.metrics_port(port)),
            },
        )

    @property
    def alert_prefix(self) -> str:
        """Prefix of the Redis keys where this mesh's monitor stores its performance alerts."""
        return f"am:perf:{self.ingest_port}"

    def performance_monitor(self) -> ServiceProcess:
        port = self.monitor_port or self.query_port + 10
        targets = ",".join(f"{name}={target}" for name, target in self.metrics_targets(monitor=False).items())
        return ServiceProcess(
            "monitor",
            "services.monitor",
            port,
            {
                **self.extra_env,
                "AUDITMESH_KEYSPACE": self.keyspace,
                "AUDITMESH_MONITOR_PORT": str(port),
                "AUDITMESH_MONITOR_METRICS_PORT": str(self.metrics_port(port)),
                "AUDITMESH_MONITOR_TARGETS": targets,
                "AUDITMESH_MONITOR_ALERT_PREFIX": self.alert_prefix,
            },
        )

    def _core(self) -> list[ServiceProcess]:
        return [
            *(self.processor(i) for i in range(self.processors)),
            *(self.ingest(i) for i in range(self.ingest_replicas)),
            *(self.query(i) for i in range(self.query_replicas)),
        ]

    def services(self) -> list[ServiceProcess]:
        extra = [self.performance_monitor()] if self.monitor else []
        return [*self._core(), *extra, *([self.scaling()] if self.scaler else [])]

    def start(self, supervisor: Supervisor, timeout: float = 60.0) -> None:
        """Start every service that is not running and wait until all report SERVING."""
        for proc in self.services():
            supervisor.start(proc)
        credentials = self.operator_credentials()
        for proc in self.services():
            wait_healthy(proc.target, timeout, supervisor.log_file(proc.name), credentials)

    def stop(self, supervisor: Supervisor) -> None:
        """Stop the scaler first (so it starts nothing more), the monitor (so it sees no service
        go), then ingest (it drains into the processors), then query and the processors."""
        processors = [self.processor(i) for i in range(self.processors)]
        ingests = [self.ingest(i) for i in range(self.ingest_replicas)]
        queries = [self.query(i) for i in range(self.query_replicas)]
        order = [self.scaling(), self.performance_monitor(), *ingests, *queries, *processors]
        for proc in order:
            supervisor.stop(proc.name)
        # Processors the scaler started beyond the initial ones.
        for name in supervisor.names():
            if name.startswith("processor-"):
                supervisor.stop(name)

    def health(self) -> dict[str, str]:
        credentials = self.operator_credentials()
        return {proc.name: health_of(proc.target, credentials=credentials) for proc in self.services()}

    def operator_credentials(self) -> grpc.ChannelCredentials | None:
        """In secure mode (AUDITMESH_SECURITY_DIR), TLS with the operator's certificate; else None."""
        directory = self.extra_env.get("AUDITMESH_SECURITY_DIR")
        if not directory:
            return None
        from auditmesh.security.certs import channel_credentials  # the SDK-only install lacks cryptography

        return channel_credentials(Path(directory), "operator")
