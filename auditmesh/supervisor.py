"""Starts and stops service processes on one machine, with pid and log files in a run directory.

This is the local actuator: ``auditmesh up`` uses it for the mesh, the tests use it for real
separate processes, and scaling adds or removes processor processes through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ServiceProcess", "Supervisor", "health_of", "wait_healthy"]


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    module: str
    port: int
    env: Mapping[str, str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def health_of(target: str, timeout: float = 1.0, credentials: grpc.ChannelCredentials | None = None) -> str:
    """SERVING, NOT_SERVING or DOWN for the gRPC health check of a process (over TLS with ``credentials``)."""
    try:
        channel_cm = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        with channel_cm as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    except grpc.RpcError:
        return "DOWN"


def wait_healthy(
    target: str, timeout: float, log_file: Path | None = None, credentials: grpc.ChannelCredentials | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while health_of(target, credentials=credentials) != "SERVING":
        if time.monotonic() > deadline:
            where = f"; see {log_file}" if log_file else ""
            raise TimeoutError(f"{target} not healthy after {timeout:.0f}s{where}")
        time.sleep(0.2)


class Supervisor:
    """Pid files under ``run_dir/pids``, logs under ``run_dir/logs``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        (run_dir / "pids").mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    def log_file(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"

    def stats_file(self, name: str) -> Path:
        return self.run_dir / "stats" / f"{name}.json"

    def stats(self, name: str) -> dict[str, Any] | None:
        """The last stats the process published, or None."""
        try:
            return dict(json.loads(self.stats_file(name).read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / "pids" / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self._pid_file(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def names(self) -> list[str]:
        return sorted(p.stem for p in (self.run_dir / "pids").glob("*.pid"))

    def start(self, proc: ServiceProcess) -> int:
        """Start the process unless it is running; return its pid."""
        running = self.pid(proc.name)
        if running is not None:
            return running
        self.stats_file(proc.name).unlink(missing_ok=True)  # counters of an earlier process are not this one's
        env = {
            **os.environ,
            "AUDITMESH_STATS_FILE": str(self.stats_file(proc.name)),
            # The scaler's local actuator starts processors with the supervisor that started it.
            "AUDITMESH_SUPERVISOR_DIR": str(self.run_dir),
            **proc.env,
        }
        with open(self.log_file(proc.name), "ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", proc.module],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file(proc.name).write_text(str(child.pid))
        return child.pid

    def signal(self, name: str, sig: signal.Signals) -> bool:
        pid = self.pid(name)
        if pid is None:
            return False
        os.kill(pid, sig)
        return True

    def stop(self, name: str, grace: float = 15.0) -> None:
        """SIGTERM, wait up to ``grace`` for a clean exit, then SIGKILL."""
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.pid(name) is not None:
                _reap(pid)
                time.sleep(0.1)
            if self.pid(name) is not None:
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self._pid_file(name).unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """SIGKILL with no warning (fault tests)."""
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.pid(name) is not None:
                _reap(pid)
                time.sleep(0.05)
        self._pid_file(name).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
