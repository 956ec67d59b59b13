"""The wedding calendar's forecast columns in the real Cassandra: added to an existing keyspace by
``auditmesh schema`` (idempotently), filled by ``auditmesh weddings import`` with per-line errors
for bad rows, and read back by the scaler."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
from cassandra.cluster import Cluster

from auditmesh.cli import main
from auditmesh.config import StoreConfig
from auditmesh.scaling.calendar import load_weddings
from auditmesh.schema import create_schema, drop_keyspace
from tests.conftest import TEST_KEYSPACE

CSV = """wedding_id,wedding_date,ceremony_time,timezone,guests,vendors
cal-1,2027-06-12,15:30,Europe/London,120,9
cal-2,2027-06-12,,America/New_York,,
cal-3,2027-13-01,15:00,UTC,10,1
cal-4,2027-06-13,25:00,UTC,10,1
cal-5,2027-06-13,11:00,Mars/Olympus,10,1
cal-6,2027-06-13,11:00,UTC,many,1
,2027-06-13,11:00,UTC,10,1
cal-7,2027-06-19,12:00,Europe/Paris,80,-2
cal-8,2027-06-19,12:00,Europe/Paris,80,5
"""


def test_import_reports_each_bad_line_stores_the_good_ones_and_is_idempotent(
    store_config: StoreConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad rows are named by line and field, good rows are stored with ceremony time, time zone,
    guests and vendors, and importing the same file again changes nothing."""
    monkeypatch.setenv("AUDITMESH_KEYSPACE", store_config.keyspace)
    path = tmp_path / "weddings.csv"
    path.write_text(CSV)
    assert main(["weddings", "import", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}: line 4: wedding_date '2027-13-01' is not a date (YYYY-MM-DD)",
        f"{path}: line 5: ceremony_time '25:00' is not a time (HH:MM)",
        f"{path}: line 6: timezone 'Mars/Olympus' is not an IANA time zone",
        f"{path}: line 7: guests 'many' is not a whole number",
        f"{path}: line 8: wedding_id is empty",
        f"{path}: line 9: vendors -2 is negative",
    ]
    assert main(["weddings", "import", str(path)]) == 1
    cluster = Cluster(list(store_config.hosts), port=store_config.port, protocol_version=4)
    try:
        stored = {w.wedding_id: w for w in load_weddings(cluster.connect(), store_config.keyspace)}
    finally:
        cluster.shutdown()
    ours = {k: v for k, v in stored.items() if re.fullmatch(r"cal-\d+", k)}  # not other tests' cal-<run>-<i>
    assert sorted(ours) == ["cal-1", "cal-2", "cal-8"]
    one = ours["cal-1"]
    assert (one.wedding_date, one.ceremony_time, one.timezone, one.guests, one.vendors) == (
        dt.date(2027, 6, 12),
        dt.time(15, 30),
        "Europe/London",
        120,
        9,
    )
    assert one.ceremony_at() == dt.datetime(2027, 6, 12, 14, 30, tzinfo=dt.UTC)  # BST
    two = ours["cal-2"]
    assert (two.ceremony_time, two.guests, two.vendors) == (None, None, None)


def test_schema_adds_the_forecast_columns_to_an_existing_calendar_idempotently(store_config: StoreConfig) -> None:
    """A keyspace whose wedding_calendar predates the forecast columns gets them from
    create_schema, its rows kept, and a second run is harmless."""
    cfg = dataclasses.replace(store_config, keyspace=f"{TEST_KEYSPACE}_legacy")
    drop_keyspace(cfg)
    cluster = Cluster(list(cfg.hosts), port=cfg.port, protocol_version=4)
    try:
        session = cluster.connect()
        session.execute(
            f"CREATE KEYSPACE {cfg.keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        session.execute(
            f"CREATE TABLE {cfg.keyspace}.wedding_calendar "
            "(wedding_id text PRIMARY KEY, wedding_date date, timezone text)"
        )
        session.execute(
            f"INSERT INTO {cfg.keyspace}.wedding_calendar (wedding_id, wedding_date, timezone) "
            "VALUES ('old-1', '2027-05-01', 'UTC')"
        )
        create_schema(cfg)
        create_schema(cfg)
        columns = {
            row.column_name
            for row in session.execute(
                "SELECT column_name FROM system_schema.columns "
                "WHERE keyspace_name = %s AND table_name = 'wedding_calendar'",
                (cfg.keyspace,),
            )
        }
        assert {"guests", "vendors", "ceremony_time"} <= columns
        (old,) = load_weddings(session, cfg.keyspace)
        assert (old.wedding_id, old.ceremony_time, old.guests) == ("old-1", None, None)
    finally:
        cluster.shutdown()
        drop_keyspace(cfg)
