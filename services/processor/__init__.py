"""processor: writes validated events to Cassandra and acknowledges upstream after the write."""
