"""Security of the mesh: TLS and mTLS, scoped tokens, rate limits per caller, redaction at
ingest and the tamper-evident digest chain. Everything here is off until configured
(:class:`~auditmesh.security.config.SecurityConfig`); ``AUDITMESH_SECURITY_DIR`` turns it on.

The SDK imports nothing from this package: it takes a token string and gRPC channel
credentials.
"""
