"""auditmesh: security audit pipeline for the wedding platform.

The public surface for backend services is :class:`AuditClient`; everything else here is the
shared library of the services (config, errors, validation, priority, store, cache, serving).
"""

from auditmesh.client import AuditClient, ClientStats

__all__ = ["AuditClient", "ClientStats"]
