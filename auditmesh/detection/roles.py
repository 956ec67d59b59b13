"""The relation "organization holds a role on wedding", from a JSON file reloaded when it changes."""

from __future__ import annotations

import json
import logging
import os

__all__ = ["RoleFile"]

log = logging.getLogger("auditmesh.detection")


class RoleFile:
    """``{"wedding id": ["organization id", ...]}``. A wedding missing from the file is unknown
    (``has_role`` is None), so rules on ``organization_role`` never fire for it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime: float | None = None
        self._roles: dict[str, frozenset[str]] = {}
        self.errors = 0

    def has_role(self, wedding_id: str, organization_id: str) -> bool | None:
        orgs = self._roles.get(wedding_id)
        return None if orgs is None else organization_id in orgs

    def refresh(self) -> bool:
        """Reload when the file changed; keeps the previous relation when the new one is bad."""
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
            if not isinstance(raw, dict) or not all(
                isinstance(v, list) and all(isinstance(o, str) for o in v) for v in raw.values()
            ):
                raise ValueError("expected an object of wedding id -> list of organization ids")
        except (OSError, ValueError) as exc:
            self.errors += 1
            log.error("roles file %s not loaded (keeping the previous one): %s", self.path, exc)
            return False
        self._roles = {str(w): frozenset(orgs) for w, orgs in raw.items()}
        log.info("roles file %s loaded: %d weddings", self.path, len(self._roles))
        return True
