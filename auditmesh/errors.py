"""Typed errors inside the mesh; gRPC status codes appear only at the service edges.

AuditError
+-- RetryableError      the same request may succeed later (store down, overloaded)
|   +-- StoreUnavailable
|   +-- Overloaded
+-- PermanentError      resending the same request cannot help
    +-- InvalidRequest  a field of the request is wrong (INVALID_ARGUMENT)
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "InvalidRequest",
    "Overloaded",
    "PermanentError",
    "RetryableError",
    "StoreUnavailable",
]


class AuditError(Exception):
    """Base of every auditmesh error."""


class RetryableError(AuditError):
    """The operation may succeed if repeated after ``retry_after_ms``."""

    def __init__(self, message: str, retry_after_ms: int = 200) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class StoreUnavailable(RetryableError):
    """Cassandra did not confirm a read or write."""


class Overloaded(RetryableError):
    """A bounded buffer is full."""


class PermanentError(AuditError):
    """The operation cannot succeed as it is."""


class InvalidRequest(PermanentError):
    """A request field is invalid; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
