"""auditmesh: security audit pipeline for the wedding platform.

The public surface for backend services is :class:`AuditClient` (and
:class:`auditmesh.logging_handler.AuditHandler`); they need only grpcio and protobuf
(``pip install auditmesh``). Everything else here is the shared library of the services
(config, errors, validation, priority, store, cache, serving), which needs the server extra
(``pip install "auditmesh[server]"``). Importing this package imports nothing server-side.
"""

from auditmesh.client import AuditClient, ClientStats

__all__ = ["AuditClient", "ClientStats"]

# Top-level modules that only the server extra installs (see pyproject.toml).
_SERVER_MODULES = frozenset(
    {
        "cassandra",
        "cryptography",
        "grpc_health",
        "grpc_reflection",
        "grpc_status",
        "jwt",
        "opentelemetry",
        "prometheus_client",
        "redis",
        "sigma",
        "uvloop",
    }
)
"""Top-level modules of the ``server`` extra's packages (pysigma is ``sigma``, PyJWT ``jwt``)."""


def _cli_main() -> int:
    """The ``auditmesh`` command: it belongs to the server side, so without the server extra
    it says what to install instead of failing on an import deep inside."""
    import sys

    try:
        from auditmesh.cli import main
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _SERVER_MODULES:
            raise
        print(
            f"auditmesh: the command needs the server side (module {missing!r} is missing);"
            ' install it with: pip install "auditmesh[server]"',
            file=sys.stderr,
        )
        return 2
    return main()
