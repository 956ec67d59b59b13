"""query: filtered, paginated, streaming search over the audit trail, with a Redis read cache."""
