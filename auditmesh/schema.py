"""The Cassandra schema, created idempotently once per deployment (``auditmesh schema``).

Why this shape:
- ``events_by_wedding``: one partition per (wedding, hour bucket), rows newest first by
  (occurred_at, event_id). The hour is the shard: a wedding would need 28 events/s for a whole
  hour to pass 100k rows in one partition, and reads stay in time order with no merging.
- ``events_by_user``: every event again, one partition per (user, hour bucket); events without
  a wedding live only here.
- ``events_by_id``: where each event is, for ``GetEvent``; partitioned by a function of the id
  alone (:mod:`auditmesh.event_ids`) so that the SDK's ids of one client share partitions and
  a batch's locator rows cost a few partition updates. It replaced a storage-attached index on
  ``event_id``, which is dropped when found; ``auditmesh reindex`` writes the locators of events
  stored before.
- ``partitions``: which hour buckets hold data for a wedding or user, so a search visits only
  non-empty partitions, newest first, and stops when its page is full.
- ``wedding_calendar``: wedding dates and time zones, for priority and forecasts; expected
  guests, vendors and the local ceremony time feed the scaler's forecast (added by ALTER for
  keyspaces created before them, so ``auditmesh schema`` stays idempotent).
- ``chains``, ``chain_digests``, ``chain_checkpoints``: the tamper-evident digest chains of the
  processors (:mod:`auditmesh.security.digests`), one partition per chain and day.
- ``alerts``, ``alert_dead_letters``: threat-detection alerts and undeliverable webhooks.
The event itself is stored once per row as serialized protobuf (``payload``); the columns beside
it are those that queries filter on. Time-window compaction and a TTL fit append-only audit data.
"""

from __future__ import annotations

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

from auditmesh.config import StoreConfig

__all__ = ["CALENDAR_FORECAST_COLUMNS", "create_schema", "drop_keyspace", "statements"]

CALENDAR_FORECAST_COLUMNS = ("guests int", "vendors int", "ceremony_time time")
"""Columns of ``wedding_calendar`` the scaler's forecast reads (the ceremony in the wedding's
own time zone); added to existing keyspaces by ALTER ... IF NOT EXISTS."""

_EVENT_COLUMNS = """
    occurred_at timestamp,
    event_id text,
    severity tinyint,
    outcome tinyint,
    event_type text,
    organization_id text,
    payload blob"""


def statements(cfg: StoreConfig) -> list[str]:
    ttl = cfg.retention_days * 86400
    ks = cfg.keyspace
    append_only = (
        "compaction = {'class': 'TimeWindowCompactionStrategy',"
        " 'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}"
        f" AND default_time_to_live = {ttl} AND gc_grace_seconds = 86400"
    )
    table_opts = f"WITH CLUSTERING ORDER BY (occurred_at DESC, event_id DESC) AND {append_only}"
    # One node: SimpleStrategy RF 1 as always. A cluster (AUDITMESH_REPLICATION_FACTOR=3):
    # NetworkTopologyStrategy, whose 'replication_factor' applies to every datacenter.
    strategy = "NetworkTopologyStrategy" if cfg.replication_factor > 1 else "SimpleStrategy"
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = "
        f"{{'class': '{strategy}', 'replication_factor': {cfg.replication_factor}}}",
        f"""CREATE TABLE IF NOT EXISTS {ks}.events_by_wedding (
    wedding_id text, bucket int,{_EVENT_COLUMNS},
    PRIMARY KEY ((wedding_id, bucket), occurred_at, event_id)) {table_opts}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.events_by_user (
    user_id text, bucket int,{_EVENT_COLUMNS},
    PRIMARY KEY ((user_id, bucket), occurred_at, event_id)) {table_opts}""",
        f"DROP INDEX IF EXISTS {ks}.events_by_user_event_id",
        f"""CREATE TABLE IF NOT EXISTS {ks}.events_by_id (
    id_group text, id_block bigint, event_id text, user_id text, bucket int, occurred_at timestamp,
    PRIMARY KEY ((id_group, id_block), event_id)) WITH {append_only}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.partitions (
    scope text, key text, bucket int, PRIMARY KEY ((scope, key), bucket))
    WITH CLUSTERING ORDER BY (bucket DESC) AND default_time_to_live = {ttl}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.wedding_calendar (
    wedding_id text PRIMARY KEY, wedding_date date, timezone text)""",
        *(f"ALTER TABLE {ks}.wedding_calendar ADD IF NOT EXISTS {column}" for column in CALENDAR_FORECAST_COLUMNS),
        # Tamper evidence (auditmesh.security.digests), apart from the events it covers.
        f"""CREATE TABLE IF NOT EXISTS {ks}.chains (
    chain_id text PRIMARY KEY, started_at timestamp, public_key blob) WITH default_time_to_live = {ttl}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_digests (
    chain_id text, day int, seq bigint, written_at timestamp, prev_hash blob, hash blob, root blob,
    events blob, leaves blob, PRIMARY KEY ((chain_id, day), seq)) WITH {append_only}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.chain_checkpoints (
    chain_id text, day int, seq bigint, digest_seq bigint, digest_hash blob, at timestamp, signature blob,
    PRIMARY KEY ((chain_id, day), seq)) WITH {append_only}""",
        *_alert_statements(ks, ttl),
    ]


def _alert_statements(ks: str, ttl: int) -> list[str]:
    """Threat-detection alerts (auditmesh.detection): each alert is stored under up to three
    scopes (``w:{wedding}``, ``o:{organization}``, ``all``) by UTC day, newest first; an update of
    a suppressed alert overwrites its rows (same created_at and id). Failed webhook deliveries
    are kept by day in ``alert_dead_letters``."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {ks}.alerts (
    scope text, day int, created_at timestamp, alert_id text, rule text, severity tinyint, payload blob,
    PRIMARY KEY ((scope, day), created_at, alert_id))
    WITH CLUSTERING ORDER BY (created_at DESC, alert_id DESC) AND default_time_to_live = {ttl}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.alert_dead_letters (
    day int, failed_at timestamp, alert_id text, url text, attempts int, error text, payload blob,
    PRIMARY KEY (day, failed_at, alert_id)) WITH default_time_to_live = {ttl}""",
    ]


def create_schema(cfg: StoreConfig) -> None:
    """Create the keyspace and tables when missing; harmless when they exist."""
    _execute(cfg, statements(cfg))


def drop_keyspace(cfg: StoreConfig) -> None:
    """Delete the keyspace and everything in it (tests and benchmarks start clean with it)."""
    _execute(cfg, [f"DROP KEYSPACE IF EXISTS {cfg.keyspace}"])


def _execute(cfg: StoreConfig, stmts: list[str]) -> None:
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=120)
    cluster = Cluster(
        list(cfg.hosts), port=cfg.port, protocol_version=4, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    try:
        session = cluster.connect()
        for stmt in stmts:
            session.execute(stmt, timeout=120)
    finally:
        cluster.shutdown()
