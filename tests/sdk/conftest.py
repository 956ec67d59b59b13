"""Fixtures of the SDK's own tests. They need only the SDK (grpcio, protobuf) and pytest, so
that scripts/sdk_matrix.sh can run them on every supported Python in a venv holding the SDK
alone, against a mesh the project's venv runs: AUDITMESH_SDK_INGEST and AUDITMESH_SDK_QUERY
name it. Without those variables they use the test mesh of tests/conftest.py (``mesh``).

This directory is not a package and its modules import nothing from tests/ (only this file,
as ``conftest``): the matrix runs the venv's own ``pytest`` with ``--confcutdir tests/sdk``, so
that neither tests/conftest.py (which needs the server side) nor the repository's ``auditmesh``
(instead of the installed one) is imported; AUDITMESH_SDK_INSTALLED=1 makes that checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

import auditmesh
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc


@pytest.fixture(scope="session", autouse=True)
def installed_sdk() -> None:
    """Under the matrix, the SDK under test is the one pip installed into this venv."""
    if os.environ.get("AUDITMESH_SDK_INSTALLED") == "1":
        where = Path(auditmesh.__file__).resolve()
        assert where.is_relative_to(Path(sys.prefix).resolve()), f"auditmesh imported from {where}"


@dataclass(frozen=True)
class Mesh:
    ingest: str
    """host:port of ingest"""
    query: str
    """host:port of query"""


@pytest.fixture(scope="session")
def sdk_mesh(request: pytest.FixtureRequest) -> Mesh:
    """The running mesh the SDK talks to."""
    ingest = os.environ.get("AUDITMESH_SDK_INGEST")
    query = os.environ.get("AUDITMESH_SDK_QUERY")
    if ingest and query:
        return Mesh(ingest, query)
    mesh = request.getfixturevalue("mesh")  # tests/conftest.py: the services of this test run
    return Mesh(mesh.ingest_target, mesh.query_target)


@pytest.fixture(scope="session")
def query(sdk_mesh: Mesh) -> Iterator[pb_grpc.QueryServiceStub]:
    with grpc.insecure_channel(sdk_mesh.query) as channel:
        yield pb_grpc.QueryServiceStub(channel)


@pytest.fixture
def wedding() -> str:
    """A wedding id no other test (or run) uses, so that a Search by it sees this test's events only."""
    return f"sdk-{uuid.uuid4().hex[:12]}"


Search = Callable[[str], list[pb.Event]]


@pytest.fixture(scope="session")
def search(query: pb_grpc.QueryServiceStub) -> Search:
    """Every stored event of a wedding, following page tokens."""

    def run(wedding_id: str) -> list[pb.Event]:
        events: list[pb.Event] = []
        token = ""
        while True:
            req = pb.SearchRequest(wedding_id=wedding_id, page_size=1000, page_token=token)
            for page in query.Search(req, timeout=20):
                events.extend(page.events)
                token = page.next_page_token
            if not token:
                return events

    return run


Eventually = Callable[..., None]


@pytest.fixture(scope="session")
def eventually() -> Eventually:
    """tests/conftest.py's ``assert_eventually``, which this directory cannot import: retry
    ``check`` (an assertion or a truthy predicate) until it passes or ``timeout`` runs out."""

    def run(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
                if result is None or result:
                    return
                error: Exception = AssertionError(f"{check} stayed false for {timeout}s")
            except AssertionError as exc:
                error = exc
            if time.monotonic() > deadline:
                raise error
            time.sleep(interval)

    return run


RunPython = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def run_python(tmp_path_factory: pytest.TempPathFactory) -> RunPython:
    """Run Python code in a new interpreter that imports the same ``auditmesh`` as this one
    (started outside the repository, so that its working directory cannot shadow it)."""
    cwd = tmp_path_factory.mktemp("python")
    sdk_root = str(Path(auditmesh.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": sdk_root}

    def run(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )

    return run
