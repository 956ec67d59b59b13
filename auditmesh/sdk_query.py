"""Search and GetEvent over several query replicas: a call that fails because its replica is
gone goes on at the next one, from the last page it received (page tokens are signed with the
key every replica shares, so any replica continues any search)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc

from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc

__all__ = ["FAILOVER_CODES", "QueryReplicas", "search_pages"]

FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN})
"""Codes of a call whose replica went away (a refused connection, a reset stream), which the
next replica may answer; every other code is the answer."""


class QueryReplicas:
    """Channels to every query replica; calls start at the replica that last answered."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        """``credentials``: TLS with the mesh's CA; ``metadata``: e.g. the caller's bearer token."""
        self.targets = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
        if not self.targets:
            raise ValueError("no query target")
        self._metadata = tuple(metadata) if metadata else None
        self._channels = [
            grpc.insecure_channel(t) if credentials is None else grpc.secure_channel(t, credentials)
            for t in self.targets
        ]
        self._stubs = [pb_grpc.QueryServiceStub(c) for c in self._channels]
        self._current = 0
        self.failovers = 0

    def _order(self) -> list[int]:
        n = len(self._stubs)
        return [(self._current + i) % n for i in range(n)]

    def search(self, request: pb.SearchRequest, *, timeout: float = 10.0) -> Iterator[pb.SearchPage]:
        """Every page ``request`` asks for, going on at another replica when one fails mid-stream."""
        req = pb.SearchRequest()
        req.CopyFrom(request)
        wanted = req.max_pages or 1
        sent = 0
        tried = 0
        while True:
            index = self._current
            try:
                for page in self._stubs[index].Search(req, timeout=timeout, metadata=self._metadata):
                    sent += 1
                    tried = 0
                    yield page
                    if not page.next_page_token:
                        return
                    req.page_token = page.next_page_token
                    req.max_pages = max(1, wanted - sent)
                return
            except grpc.RpcError as exc:
                tried += 1
                if exc.code() not in FAILOVER_CODES or tried >= len(self._stubs):
                    raise
                self._current = (index + 1) % len(self._stubs)
                self.failovers += 1

    def get_event(self, request: pb.GetEventRequest, *, timeout: float = 10.0) -> pb.Event:
        last: grpc.RpcError | None = None
        for index in self._order():
            try:
                event: pb.Event = self._stubs[index].GetEvent(request, timeout=timeout, metadata=self._metadata)
                self._current = index
                return event
            except grpc.RpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise
                last = exc
                self.failovers += 1
        assert last is not None
        raise last

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> QueryReplicas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def search_pages(
    targets: str | Sequence[str],
    request: pb.SearchRequest,
    *,
    timeout: float = 10.0,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> list[pb.SearchPage]:
    """Every page of one Search, over whichever of ``targets`` answers."""
    with QueryReplicas(targets, credentials=credentials, metadata=metadata) as replicas:
        return list(replicas.search(request, timeout=timeout))
