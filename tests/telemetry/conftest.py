"""Helpers of the telemetry tests: scraping every metrics endpoint of a mesh."""

from __future__ import annotations

from auditmesh.mesh import MeshLayout
from auditmesh.telemetry.scrape import Scrape, fetch


def scrape_mesh(layout: MeshLayout) -> dict[str, Scrape]:
    """One scrape of every service's metrics endpoint, by service name."""
    return {name: fetch(target, timeout=5) for name, target in layout.metrics_targets().items()}
