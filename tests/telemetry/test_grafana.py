"""deploy/grafana's dashboard asks only for metrics the services really export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from auditmesh.mesh import MeshLayout
from tests.telemetry.conftest import scrape_mesh

DASHBOARDS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "grafana").glob("*.json"))
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
_KEYWORDS |= {"inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords, label names or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if not call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def test_metric_names_are_read_out_of_promql() -> None:
    """The PromQL reader finds the selected metrics and nothing else (functions, label lists,
    matchers, ranges, numbers, keywords)."""
    expr = (
        'histogram_quantile(0.99, sum by (le, lane) (rate(a_seconds_bucket{lane="x y", job=~"b.*"}[$__rate_interval])))'
        " / on(instance) group_left(lane) b_total offset 5m > bool 1e-3 or max without (op) (c:recorded)"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c:recorded"}


def test_every_dashboard_query_names_a_metric_the_services_export(mesh: MeshLayout) -> None:
    """Every PromQL expression of every dashboard in deploy/grafana names at least one metric,
    and every metric it names is exported by some service of a real mesh."""
    exported: set[str] = set()
    for scrape in scrape_mesh(mesh).values():
        exported |= scrape.names()
    assert DASHBOARDS, "no dashboard in deploy/grafana"
    checked = 0
    for path in DASHBOARDS:
        for expr in _exprs(json.loads(path.read_text())):
            names = metric_names(expr)
            assert names, f"{path.name}: no metric in {expr!r}"
            unknown = names - exported
            assert not unknown, f"{path.name}: {expr!r} names {sorted(unknown)}, which no service exports"
            checked += 1
    assert checked >= 30
