"""Driving a detection mesh from tests: a live SubscribeAlerts subscriber, direct requests to a
chosen processor (to control which replica sees which events), and a real HTTP receiver for
webhooks."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Sequence

import grpc

from auditpb.v1 import alerts_pb2 as apb
from auditpb.v1 import alerts_pb2_grpc as apb_grpc
from auditpb.v1 import audit_pb2 as pb
from auditpb.v1 import audit_pb2_grpc as pb_grpc


class Subscriber:
    """A SubscribeAlerts stream read by a thread of its own; ``alerts`` holds every alert received."""

    def __init__(self, target: str, f: apb.AlertFilter | None = None) -> None:
        self.alerts: list[apb.Alert] = []
        self._channel = grpc.insecure_channel(target)
        self._call = apb_grpc.AlertServiceStub(self._channel).SubscribeAlerts(
            apb.SubscribeAlertsRequest(filter=f or apb.AlertFilter())
        )
        self._call.initial_metadata()  # the server sends it once this stream is on the feed
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for alert in self._call:
                self.alerts.append(alert)
        except grpc.RpcError:
            pass

    def latest(self, rule: str) -> dict[str, apb.Alert]:
        """The latest version of each alert of ``rule``, by alert id."""
        out: dict[str, apb.Alert] = {}
        for a in list(self.alerts):
            if a.rule == rule:
                out[a.alert_id] = a
        return out

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


def send_to(target: str, events: Sequence[pb.Event], lane: int = pb.LANE_NORMAL) -> None:
    """One request straight to one processor, answered only after its write."""
    with grpc.insecure_channel(target) as channel:
        answers = pb_grpc.ProcessorServiceStub(channel).Process(
            iter([pb.ProcessRequest(seq=1, lane=lane, events=list(events))])  # type: ignore[arg-type]
        )
        answer = next(iter(answers))
        assert answer.ok, answer.error


class Receiver:
    """A local HTTP server standing in for a paging tool. Alerts for users starting with
    ``down-`` always get 500; any other alert gets 500 on its first ``fail_first`` posts, then 200."""

    def __init__(self, port: int, secret: bytes, fail_first: int = 2) -> None:
        self.posts: list[tuple[dict[str, str], bytes, int]] = []
        self.secret = secret
        receiver = self
        tries: dict[str, int] = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                alert = json.loads(body)
                n = tries[alert["alertId"]] = tries.get(alert["alertId"], 0) + 1
                down = alert.get("userId", "").startswith("down-")
                status = 500 if down or n <= fail_first else 200
                receiver.posts.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def posts_of(self, alert_id: str) -> list[tuple[dict[str, str], bytes, int]]:
        return [p for p in list(self.posts) if json.loads(p[1])["alertId"] == alert_id]

    def signature_ok(self, headers: dict[str, str], body: bytes) -> bool:
        expected = hmac.new(self.secret, headers["X-Auditmesh-Timestamp"].encode() + b"." + body, hashlib.sha256)
        return hmac.compare_digest(headers["X-Auditmesh-Signature"], "sha256=" + expected.hexdigest())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
